// The relay's configuration file (docs/configuration.md is the user-facing reference).
//
// Loading validates everything that can be checked without binding sockets: unknown keys,
// types, ranges, grants, networks, duplicate names, and that secret/cert/key files are
// readable. Every error names file:line and the dotted key, so `rdv-relay --check-config`
// can print it as is and exit 1.
#ifndef RDV_RELAY_RELAY_CONFIG_H_
#define RDV_RELAY_RELAY_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "common/link_client_config.h"
#include "common/yaml_config.h"

namespace rdv {

struct AgentListenerConfig {
  std::vector<HostPort> listen = {{"0.0.0.0", 7000}, {"::", 7000}};
  // Both empty: a self-signed certificate is generated (or reused) in state_dir.
  std::string cert_file;
  std::string key_file;
  absl::Duration handshake_timeout = absl::Milliseconds(10000);
};

struct HttpEntrypointConfig {
  std::vector<HostPort> listen = {{"0.0.0.0", 8080}, {"::", 8080}};
  // Lowercase; "" = no aliases. An alias routes as "<label>.<zone>".
  std::string zone;
  uint32_t max_head_bytes = 65536;
  absl::Duration head_timeout = absl::Milliseconds(10000);
  absl::Duration idle_timeout = absl::Milliseconds(60000);
};

struct TcpPortMapping {
  std::string service;
  uint16_t port = 0;
};

struct TcpEntrypointConfig {
  // IP literals (no port) that TCP service ports bind on.
  std::vector<std::string> bind = {"0.0.0.0", "::"};
  // Fixed service -> port mappings; services and ports are each unique.
  std::vector<TcpPortMapping> ports;

  // The fixed port for `service`, or 0 when it has none.
  uint16_t FixedPortFor(std::string_view service) const;
};

// Routes TLS connections by the SNI of their ClientHello to `tls` services, passing the TLS
// session through untouched.
struct TlsEntrypointConfig {
  std::vector<HostPort> listen = {{"0.0.0.0", 8443}, {"::", 8443}};
  absl::Duration hello_timeout = absl::Milliseconds(10000);  // for the whole ClientHello
};

// Speaks the server side of SMTP up to the first RCPT TO and routes by the recipient's domain
// to `smtp` services.
struct SmtpEntrypointConfig {
  std::vector<HostPort> listen = {{"0.0.0.0", 2525}, {"::", 2525}};
  std::string hostname;  // in the greeting and EHLO reply; default: relay_id
  // STARTTLS is offered only when both are set.
  std::string cert_file;
  std::string key_file;
  uint64_t max_message_bytes = 52428800;  // advertised as SIZE
  uint32_t max_commands = 100;            // before routing
  absl::Duration command_timeout = absl::Milliseconds(300000);
};

struct ProxyUser {
  std::string name;
  std::string password;
};

// The relay as the client's configured proxy: HTTP CONNECT and absolute-form requests, and
// SOCKS5, to virtual addresses.
struct ProxyEntrypointConfig {
  std::vector<HostPort> listen = {{"127.0.0.1", 1080}};
  // Empty: no authentication. Otherwise SOCKS5 username/password (RFC 1929) and HTTP
  // Proxy-Authorization Basic are required.
  std::vector<ProxyUser> users;
  absl::Duration head_timeout = absl::Milliseconds(10000);
};

struct UdpPortMapping {
  std::string service;
  uint16_t port = 0;
};

struct UdpEntrypointConfig {
  std::vector<std::string> bind = {"0.0.0.0", "::"};
  std::vector<UdpPortMapping> ports;
  absl::Duration session_idle_timeout = absl::Milliseconds(60000);

  uint16_t FixedPortFor(std::string_view service) const;
};

struct AdminConfig {
  // Empty = no admin listener.
  std::vector<HostPort> listen = {{"127.0.0.1", 9100}};
};

struct LinkConfig {
  uint32_t stream_window = 1048576;
  uint32_t link_window = 16777216;
  absl::Duration ping_interval = absl::Milliseconds(10000);
  // Always greater than ping_interval, so a healthy idle link is never timed out.
  absl::Duration idle_timeout = absl::Milliseconds(30000);
  uint32_t max_streams_per_link = 10000;
};

struct CredentialConfig {
  std::string name;
  // Resolved: from `secret`, or the contents of `secret_file` without trailing newlines.
  std::string secret;
  std::vector<Grant> grants;
  // Empty = connections from any source are accepted.
  NetworkList networks;
  uint32_t max_links = 64;

  // Whether an agent connecting from `source` may use this credential.
  bool AllowsSource(const sockaddr* source) const {
    return networks.empty() || networks.Contains(source);
  }
  // Whether a grant covers `name` of `kind`: a host name (http, tls, smtp), a service name on
  // relay `port` (tcp, udp; 0 = not chosen yet) or a tunnel name (pair, private, connect).
  bool Grants(GrantKind kind, std::string_view name, uint16_t port = 0) const;
};

// Cascaded relays (docs/protocol.md "Cascaded relays"): the relay this one dials as if it were
// an agent, to register its tunnel services there and forward tunnels it cannot route.
struct UpstreamConfig {
  HostPort relay;  // the upstream's agent listener; port never 0
  LinkCredentialConfig credential;
  RelayTrustConfig trust;  // exactly one of relay_ca_file and relay_fingerprint

  // The TLS server name to present: trust.server_name if set, else the relay's host.
  std::string ServerName() const {
    return trust.server_name.empty() ? relay.host : trust.server_name;
  }
};

struct RelayConfig {
  std::string relay_id;  // default: the host name
  std::string state_dir = "./rdv-state";
  uint32_t workers = 0;            // 0 = one per core
  std::string log_level = "info";  // trace|debug|info|warn|error (spdlog::level::from_str)
  AgentListenerConfig agent_listener;
  std::optional<HttpEntrypointConfig> http;  // absent: no HTTP entrypoint
  TcpEntrypointConfig tcp;
  std::optional<TlsEntrypointConfig> tls;      // absent: no TLS entrypoint
  std::optional<SmtpEntrypointConfig> smtp;    // absent: no SMTP entrypoint
  std::optional<ProxyEntrypointConfig> proxy;  // absent: no proxy entrypoint
  UdpEntrypointConfig udp;
  AdminConfig admin;
  LinkConfig link;
  // Load balancers in front of the relay: a client connection from these networks must start
  // with a PROXY protocol header (v1 or v2), whose source becomes the client's address. Empty:
  // PROXY headers are not accepted.
  NetworkList proxy_protocol_from;
  std::vector<CredentialConfig> credentials;  // at least one, unique names
  std::optional<UpstreamConfig> upstream;     // absent: no cascade
  // Debugging aid: every byte the relay bridges between two tunnel streams (both directions)
  // is appended to this file. "" = off.
  std::string tunnel_tap_file;
  // Offer a data path (docs/protocol.md "Tunnel data path") for tunnels bridged between two
  // agents linked here directly that both take it.
  bool tunnel_data_path = true;
  // How long the first SIGTERM/SIGINT lets client sessions in progress finish (listeners closed,
  // GoAway on every agent link) before the relay closes them; 0 = stop at once. A second signal
  // always stops at once.
  absl::Duration shutdown_grace = absl::Milliseconds(10000);

  const CredentialConfig* FindCredential(std::string_view name) const;
};

// The credential named `name` in `credentials`, or nullptr.
const CredentialConfig* FindCredential(const std::vector<CredentialConfig>& credentials,
                                       std::string_view name);
// Whether `a` and `b` are the same credential on the same terms: name, secret, grants, source
// networks and max_links.
bool SameCredential(const CredentialConfig& a, const CredentialConfig& b);

// Reads and validates `path`. Errors are InvalidArgumentError "path:line: key: problem".
absl::StatusOr<RelayConfig> LoadRelayConfig(const std::string& path);

// The top-level sections of the YAML file `path` as canonical text, by key: what a reload
// compares to tell which sections changed. Errors: unreadable file, not YAML.
absl::StatusOr<std::map<std::string, std::string>> LoadConfigSections(const std::string& path);

// Same for YAML already in memory; `file_name_for_errors` only prefixes messages. Relative
// secret_file/cert_file/key_file paths are resolved against the working directory.
absl::StatusOr<RelayConfig> ParseRelayConfig(std::string_view yaml_text,
                                             std::string_view file_name_for_errors);

}  // namespace rdv

#endif  // RDV_RELAY_RELAY_CONFIG_H_
