// The agent's configuration file (docs/configuration.md is the user-facing reference).
//
// Loading validates everything that can be checked without the network: unknown keys, types,
// ranges, service names per kind, duplicates, the relay trust setting, and that the CA and
// secret files are readable. Every error names file:line and the dotted key.
#ifndef RDV_AGENT_AGENT_CONFIG_H_
#define RDV_AGENT_AGENT_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/allow_list.h"
#include "agent/health_check_config.h"
#include "common/link_client_config.h"
#include "common/yaml_config.h"

namespace rdv {

// Shortest pairing secret (and private-service shared secret): the tunnel's key derives from it.
inline constexpr size_t kMinTunnelSecretLength = 16;

struct ServiceConfig {
  enum class Kind { kHttp, kTcp, kTls, kSmtp, kUdp, kPair, kPrivate };

  // http, tls (SNI), smtp (recipient domain): a host name or "*.suffix", lowercase.
  // tcp, udp, pair, private: a service name (see IsValidServiceName).
  std::string name;
  Kind kind = Kind::kHttp;
  // Port never 0, except for pair and private services, where the target is optional (port 0 =
  // none: only SOCKS5 connect ends, naming their destination, can use the service).
  HostPort target;
  // http only: the label routed as "<alias>.<relay zone>". Defaults to the name with '*'
  // dropped, '.' turned into '-', and leading/trailing '-' trimmed ("*.orang.com" ->
  // "orang-com"). Always a valid DNS label; empty for tcp.
  std::string alias;
  // tcp and udp only: the relay port to request; 0 = the relay's fixed mapping or an allocated
  // port.
  uint16_t port = 0;
  // "off", "v1" or "v2": the PROXY protocol header the agent sends the target first, carrying
  // the original client's address.
  std::string proxy_protocol = "off";

  // How the relay spreads streams when several agents serve this name under one credential:
  // "round_robin", "least_streams" or "client_ip_hash".
  std::string balance = "round_robin";
  // Health checks of the target, reported to the relay; nullopt = off (always healthy).
  std::optional<HealthCheckConfig> health_check;

  // http only: ask the relay to rewrite links in text/html bodies of /TUNNEL:<name>/ responses.
  bool rewrite_html = false;

  // pair and private (end-to-end tunnels, docs/protocol.md "Tunnels"):
  // pair: the pairing secret; private: the shared secret in PSK mode ("" in certificate mode).
  std::string secret;
  // private, certificate mode: this end's certificate and key (PEM files).
  std::string certificate_file;
  std::string key_file;
  // Destinations a SOCKS5 connect end may name; empty = none.
  AllowList allow;

  bool is_tunnel() const { return kind == Kind::kPair || kind == Kind::kPrivate; }
  bool has_target() const { return target.port != 0; }
  // TunnelSetup.security: "psk" or "certificate".
  std::string_view security() const { return certificate_file.empty() ? "psk" : "certificate"; }

  bool named_by_host() const {
    return kind == Kind::kHttp || kind == Kind::kTls || kind == Kind::kSmtp;
  }
  std::string_view kind_name() const {
    switch (kind) {
      case Kind::kHttp:
        return "http";
      case Kind::kTcp:
        return "tcp";
      case Kind::kTls:
        return "tls";
      case Kind::kSmtp:
        return "smtp";
      case Kind::kUdp:
        return "udp";
      case Kind::kPair:
        return "pair";
      case Kind::kPrivate:
        return "private";
    }
    return "?";
  }
};

// One `connect:` entry: a local listener whose connections travel through an end-to-end tunnel
// to the agent serving a pair or private service.
struct ConnectConfig {
  struct User {
    std::string username;
    std::string password;
  };

  HostPort listen;                                        // an IP literal; port 0 = any (logged)
  ServiceConfig::Kind kind = ServiceConfig::Kind::kPair;  // kPair or kPrivate
  std::string name;
  // pair: the pairing secret; private: the shared secret (PSK mode), "" in certificate mode.
  std::string secret;
  // private, certificate mode: exactly one, to verify the serving end's certificate.
  std::string peer_fingerprint;  // 64 lowercase hex digits
  std::string peer_ca_file;
  bool socks5 = false;      // a SOCKS5 server (else a plain port to the service's target)
  std::vector<User> users;  // socks5 only; empty = no authentication

  std::string_view kind_name() const {
    return kind == ServiceConfig::Kind::kPair ? "pair" : "private";
  }
  std::string_view security() const { return secret.empty() ? "certificate" : "psk"; }
};

using AgentCredentialConfig = LinkCredentialConfig;

struct AgentConfig {
  std::string agent_id;          // default: "<hostname>-<pid>"
  std::vector<HostPort> relays;  // at least one; ports are never 0
  std::string server_name;       // "" = the host part of each relay address
  // Exactly one of the two is set.
  std::string relay_ca_file;
  std::string relay_fingerprint;  // 64 lowercase hex digits (SHA-256 of the relay cert DER)
  AgentCredentialConfig credential;
  uint32_t links = 2;  // 1..1024
  ReconnectConfig reconnect;
  absl::Duration connect_timeout = absl::Milliseconds(5000);
  // How long the first SIGTERM/SIGINT lets open streams finish (after GoAway on every link) before
  // the agent closes them; 0 = close at once. A second signal always stops at once.
  absl::Duration shutdown_grace = absl::Milliseconds(10000);
  std::string log_level = "info";       // trace|debug|info|warn|error (spdlog::level::from_str)
  std::vector<ServiceConfig> services;  // (kind, name) unique
  std::vector<ConnectConfig> connects;  // `connect:`; listen addresses unique
  // At least one service or one connect entry.
  // `admin.listen`: the local admin HTTP server (GET /metrics, GET /status); nullopt = none.
  // The host is an IP literal; port 0 binds any free port.
  std::optional<HostPort> admin_listen;
  // Whether tunnels take a relay's data path offers (Hello feature "tunnel-data";
  // docs/protocol.md "Tunnel data path"): the tunnel's bytes then bypass the links' TLS.
  bool tunnel_data_path = true;

  // The TLS server name to present to `relay`: server_name if set, else the relay's host.
  std::string ServerNameFor(const HostPort& relay) const {
    return server_name.empty() ? relay.host : server_name;
  }
};

// The alias an http service gets when none is configured (see ServiceConfig::alias); may be
// empty or too long for a label, which the loader reports.
std::string DefaultAlias(std::string_view service_name);

// Reads and validates `path`. Errors are InvalidArgumentError "path:line: key: problem".
absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path);

// Same for YAML already in memory; `file_name_for_errors` only prefixes messages. Relative
// secret_file/relay_ca_file paths are resolved against the working directory.
absl::StatusOr<AgentConfig> ParseAgentConfig(std::string_view yaml_text,
                                             std::string_view file_name_for_errors);

}  // namespace rdv

#endif  // RDV_AGENT_AGENT_CONFIG_H_
