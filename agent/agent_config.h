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
#include "agent/health_check_config.h"
#include "common/link_client_config.h"
#include "common/yaml_config.h"

namespace rdv {

struct ServiceConfig {
  enum class Kind { kHttp, kTcp, kTls, kSmtp, kUdp };

  // http, tls (SNI), smtp (recipient domain): a host name or "*.suffix", lowercase.
  // tcp, udp: a service name (see IsValidServiceName).
  std::string name;
  Kind kind = Kind::kHttp;
  HostPort target;  // port is never 0
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
    }
    return "?";
  }
};

using AgentCredentialConfig = LinkCredentialConfig;

struct ReconnectConfig {
  absl::Duration initial = absl::Milliseconds(100);
  absl::Duration max = absl::Milliseconds(10000);  // >= initial
};

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
  std::string log_level = "info";       // trace|debug|info|warn|error (spdlog::level::from_str)
  std::vector<ServiceConfig> services;  // at least one; (kind, name) unique

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
