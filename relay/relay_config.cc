#include "relay/relay_config.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/str_cat.h"

namespace rdv {

namespace {

std::string DefaultRelayId() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "relay";
  return name;
}

// Reads a section's `listen` list over the defaults already in `*listen`. The defaults are never
// empty, so an empty list was written, and is an error unless `allow_empty`.
absl::Status ReadListen(const YamlMap& map, bool allow_empty, std::vector<HostPort>* listen) {
  if (absl::Status s = map.ReadHostPortList("listen", /*allow_port_zero=*/true,
                                            /*require_ip_literal=*/true, listen);
      !s.ok()) {
    return s;
  }
  if (!allow_empty && listen->empty()) {
    return map.Find("listen")->Error("at least one address is required");
  }
  return absl::OkStatus();
}

// A list of CIDR blocks under `key`, if present.
absl::Status ReadNetworks(const YamlMap& map, std::string_view key, NetworkList* networks) {
  std::optional<YamlValue> list = map.Find(key);
  if (!list) return absl::OkStatus();
  absl::StatusOr<std::vector<YamlValue>> items = list->AsList();
  if (!items.ok()) return items.status();
  for (const YamlValue& item : *items) {
    absl::StatusOr<std::string> text = item.AsString();
    if (!text.ok()) return text.status();
    if (absl::Status s = networks->Add(*text); !s.ok()) return item.Error(std::string(s.message()));
  }
  return absl::OkStatus();
}

absl::Status ParseAgentListener(const YamlMap& map, AgentListenerConfig* config) {
  if (absl::Status s = map.CheckKeys({"listen", "cert_file", "key_file", "handshake_timeout_ms"});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadListen(map, /*allow_empty=*/false, &config->listen); !s.ok()) return s;
  if (absl::Status s = map.ReadReadablePath("cert_file", &config->cert_file); !s.ok()) return s;
  if (absl::Status s = map.ReadReadablePath("key_file", &config->key_file); !s.ok()) return s;
  if (config->cert_file.empty() != config->key_file.empty()) {
    std::string_view set_key = config->cert_file.empty() ? "key_file" : "cert_file";
    return map.Find(set_key)->Error("cert_file and key_file must be set together (or neither)");
  }
  return map.ReadTimeoutMs("handshake_timeout_ms", &config->handshake_timeout);
}

absl::Status ParseHttp(const YamlMap& map, HttpEntrypointConfig* config) {
  if (absl::Status s =
          map.CheckKeys({"listen", "zone", "max_head_bytes", "head_timeout_ms", "idle_timeout_ms"});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadListen(map, /*allow_empty=*/false, &config->listen); !s.ok()) return s;
  if (absl::Status s = map.ReadString("zone", &config->zone); !s.ok()) return s;
  if (!config->zone.empty()) {
    std::string zone = absl::AsciiStrToLower(config->zone);
    if (zone.back() == '.') zone.pop_back();
    if (!IsValidHostName(zone)) {
      std::optional<YamlValue> where = map.Find("zone");
      return where->Error(
          absl::StrCat("expected a DNS name, e.g. relay.example.com, ", where->Got()));
    }
    config->zone = std::move(zone);
  }
  if (absl::Status s =
          map.ReadUint<uint32_t>("max_head_bytes", 1024, 81920,
                                 &config->max_head_bytes);  // http-parser caps heads at 80 KiB
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map.ReadTimeoutMs("head_timeout_ms", &config->head_timeout); !s.ok()) {
    return s;
  }
  return map.ReadTimeoutMs("idle_timeout_ms", &config->idle_timeout);
}

// `bind`: IP literals (no port) that service ports bind on.
absl::Status ReadBind(const YamlMap& map, std::vector<std::string>* bind_list) {
  std::optional<YamlValue> bind = map.Find("bind");
  if (!bind) return absl::OkStatus();
  absl::StatusOr<std::vector<YamlValue>> items = bind->AsList();
  if (!items.ok()) return items.status();
  bind_list->clear();
  for (const YamlValue& item : *items) {
    absl::StatusOr<std::string> address = item.AsString();
    if (!address.ok()) return address.status();
    if (!IsIpLiteral(*address)) {
      return item.Error(
          absl::StrCat("expected an IP address without port, e.g. 0.0.0.0 or ::, ", item.Got()));
    }
    bind_list->push_back(*std::move(address));
  }
  if (bind_list->empty()) return bind->Error("at least one address is required");
  return absl::OkStatus();
}

// `ports`: a list of {service, port}, services and ports each unique. `Mapping` is
// TcpPortMapping or UdpPortMapping.
template <typename Mapping>
absl::Status ReadPortMappings(const YamlMap& map, std::vector<Mapping>* mappings) {
  std::optional<YamlValue> ports = map.Find("ports");
  if (!ports) return absl::OkStatus();
  absl::StatusOr<std::vector<YamlValue>> items = ports->AsList();
  if (!items.ok()) return items.status();
  std::map<std::string, std::string> service_owner;  // service -> path of its entry
  std::map<uint16_t, std::string> port_owner;
  for (const YamlValue& item : *items) {
    absl::StatusOr<YamlMap> entry = item.AsMap();
    if (!entry.ok()) return entry.status();
    if (absl::Status s = entry->CheckKeys({"service", "port"}); !s.ok()) return s;
    absl::StatusOr<YamlValue> service_value = entry->Require("service");
    if (!service_value.ok()) return service_value.status();
    absl::StatusOr<std::string> service = service_value->AsString();
    if (!service.ok()) return service.status();
    if (!IsValidServiceName(*service)) {
      return service_value->Error(
          absl::StrCat("expected a service name (a letter, then letters, digits, '.', '_', '-'; "
                       "at most 63), ",
                       service_value->Got()));
    }
    absl::StatusOr<YamlValue> port_value = entry->Require("port");
    if (!port_value.ok()) return port_value.status();
    absl::StatusOr<uint64_t> port = port_value->AsUint(1, 65535);
    if (!port.ok()) return port.status();
    if (auto [it, inserted] = service_owner.emplace(*service, item.path()); !inserted) {
      return service_value->Error(
          absl::StrCat("service '", *service, "' is already mapped by ", it->second));
    }
    if (auto [it, inserted] = port_owner.emplace(static_cast<uint16_t>(*port), item.path());
        !inserted) {
      return port_value->Error(absl::StrCat("port ", *port, " is already used by ", it->second));
    }
    mappings->push_back({*std::move(service), static_cast<uint16_t>(*port)});
  }
  return absl::OkStatus();
}

absl::Status ParseTcp(const YamlMap& map, TcpEntrypointConfig* config) {
  if (absl::Status s = map.CheckKeys({"bind", "ports"}); !s.ok()) return s;
  if (absl::Status s = ReadBind(map, &config->bind); !s.ok()) return s;
  return ReadPortMappings(map, &config->ports);
}

absl::Status ParseUdp(const YamlMap& map, UdpEntrypointConfig* config) {
  if (absl::Status s = map.CheckKeys({"bind", "ports", "session_idle_timeout_ms"}); !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadBind(map, &config->bind); !s.ok()) return s;
  if (absl::Status s = ReadPortMappings(map, &config->ports); !s.ok()) return s;
  return map.ReadTimeoutMs("session_idle_timeout_ms", &config->session_idle_timeout);
}

absl::Status ParseTls(const YamlMap& map, TlsEntrypointConfig* config) {
  if (absl::Status s = map.CheckKeys({"listen", "hello_timeout_ms"}); !s.ok()) return s;
  if (absl::Status s = ReadListen(map, /*allow_empty=*/false, &config->listen); !s.ok()) return s;
  return map.ReadTimeoutMs("hello_timeout_ms", &config->hello_timeout);
}

absl::Status ParseSmtp(const YamlMap& map, SmtpEntrypointConfig* config) {
  if (absl::Status s = map.CheckKeys({"listen", "hostname", "cert_file", "key_file",
                                      "max_message_bytes", "max_commands", "command_timeout_ms"});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadListen(map, /*allow_empty=*/false, &config->listen); !s.ok()) return s;
  if (absl::Status s = map.ReadString("hostname", &config->hostname); !s.ok()) return s;
  if (!config->hostname.empty() && !IsValidHostName(absl::AsciiStrToLower(config->hostname))) {
    std::optional<YamlValue> where = map.Find("hostname");
    return where->Error(absl::StrCat("expected a DNS name, e.g. mx.example.com, ", where->Got()));
  }
  if (absl::Status s = map.ReadReadablePath("cert_file", &config->cert_file); !s.ok()) return s;
  if (absl::Status s = map.ReadReadablePath("key_file", &config->key_file); !s.ok()) return s;
  if (config->cert_file.empty() != config->key_file.empty()) {
    std::string_view set_key = config->cert_file.empty() ? "key_file" : "cert_file";
    return map.Find(set_key)->Error("cert_file and key_file must be set together (or neither)");
  }
  if (absl::Status s = map.ReadUint<uint64_t>("max_message_bytes", 1024, uint64_t{1} << 40,
                                              &config->max_message_bytes);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map.ReadUint<uint32_t>("max_commands", 5, 10000, &config->max_commands);
      !s.ok()) {
    return s;
  }
  return map.ReadTimeoutMs("command_timeout_ms", &config->command_timeout);
}

absl::Status ParseProxy(const YamlMap& map, ProxyEntrypointConfig* config) {
  if (absl::Status s = map.CheckKeys({"listen", "users", "head_timeout_ms"}); !s.ok()) return s;
  if (absl::Status s = ReadListen(map, /*allow_empty=*/false, &config->listen); !s.ok()) return s;
  if (absl::Status s = map.ReadTimeoutMs("head_timeout_ms", &config->head_timeout); !s.ok()) {
    return s;
  }
  std::optional<YamlValue> users = map.Find("users");
  if (!users) return absl::OkStatus();
  absl::StatusOr<std::vector<YamlValue>> items = users->AsList();
  if (!items.ok()) return items.status();
  std::map<std::string, std::string> name_owner;
  for (const YamlValue& item : *items) {
    absl::StatusOr<YamlMap> entry = item.AsMap();
    if (!entry.ok()) return entry.status();
    if (absl::Status s = entry->CheckKeys({"name", "password", "password_file"}); !s.ok()) return s;
    absl::StatusOr<YamlValue> name_value = entry->Require("name");
    if (!name_value.ok()) return name_value.status();
    absl::StatusOr<std::string> name = name_value->AsString();
    if (!name.ok()) return name.status();
    // RFC 1929 carries each in one length byte.
    if (name->empty() || name->size() > 255 || name->find(':') != std::string::npos) {
      return name_value->Error(
          absl::StrCat("expected 1 to 255 characters without ':', ", name_value->Got()));
    }
    absl::StatusOr<std::string> password = entry->ReadSecret("password", "password_file", 1);
    if (!password.ok()) return password.status();
    if (password->empty() || password->size() > 255) {
      return item.Error("the password must have 1 to 255 characters");
    }
    if (auto [it, inserted] = name_owner.emplace(*name, item.path()); !inserted) {
      return name_value->Error(
          absl::StrCat("duplicate user '", *name, "' (also ", it->second, ")"));
    }
    config->users.push_back({*std::move(name), *std::move(password)});
  }
  return absl::OkStatus();
}

absl::Status ParseAdmin(const YamlMap& map, AdminConfig* config) {
  if (absl::Status s = map.CheckKeys({"listen"}); !s.ok()) return s;
  return ReadListen(map, /*allow_empty=*/true, &config->listen);
}

absl::Status ParseLink(const YamlMap& map, LinkConfig* config) {
  if (absl::Status s = map.CheckKeys({"stream_window", "link_window", "ping_interval_ms",
                                      "idle_timeout_ms", "max_streams_per_link"});
      !s.ok()) {
    return s;
  }
  // Windows travel as u32 credit; 1 GiB keeps every sum of increments far from overflow.
  constexpr uint32_t kMaxWindow = 1u << 30;
  if (absl::Status s =
          map.ReadUint<uint32_t>("stream_window", 65536, kMaxWindow, &config->stream_window);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          map.ReadUint<uint32_t>("link_window", 65536, kMaxWindow, &config->link_window);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map.ReadTimeoutMs("ping_interval_ms", &config->ping_interval); !s.ok()) {
    return s;
  }
  if (absl::Status s = map.ReadTimeoutMs("idle_timeout_ms", &config->idle_timeout); !s.ok()) {
    return s;
  }
  if (config->idle_timeout <= config->ping_interval) {
    std::optional<YamlValue> where = map.Find("idle_timeout_ms");
    if (!where) where = map.Find("ping_interval_ms");
    return where->Error(absl::StrCat("link.idle_timeout_ms (",
                                     absl::ToInt64Milliseconds(config->idle_timeout),
                                     ") must be greater than link.ping_interval_ms (",
                                     absl::ToInt64Milliseconds(config->ping_interval), ")"));
  }
  return map.ReadUint<uint32_t>("max_streams_per_link", 1, 1000000, &config->max_streams_per_link);
}

absl::Status ParseUpstream(const YamlMap& map, UpstreamConfig* config) {
  if (absl::Status s = map.CheckKeys(
          {"relay", "credential", "relay_fingerprint", "relay_ca_file", "server_name"});
      !s.ok()) {
    return s;
  }
  absl::StatusOr<YamlValue> relay = map.Require("relay");
  if (!relay.ok()) return relay.status();
  absl::StatusOr<HostPort> address =
      relay->AsHostPort(/*allow_port_zero=*/false, /*require_ip_literal=*/false);
  if (!address.ok()) return address.status();
  config->relay = *std::move(address);
  if (absl::Status s = ReadLinkCredential(map, "credential", &config->credential); !s.ok()) {
    return s;
  }
  return ReadRelayTrust(map, &config->trust);
}

absl::StatusOr<CredentialConfig> ParseCredential(const YamlValue& item) {
  absl::StatusOr<YamlMap> map = item.AsMap();
  if (!map.ok()) return map.status();
  if (absl::Status s =
          map->CheckKeys({"name", "secret", "secret_file", "grants", "networks", "max_links"});
      !s.ok()) {
    return s;
  }
  CredentialConfig credential;
  LinkCredentialConfig identity;
  if (absl::Status s = ReadCredentialNameAndSecret(*map, &identity); !s.ok()) return s;
  credential.name = std::move(identity.name);
  credential.secret = std::move(identity.secret);

  if (std::optional<YamlValue> grants = map->Find("grants")) {
    absl::StatusOr<std::vector<YamlValue>> items = grants->AsList();
    if (!items.ok()) return items.status();
    for (const YamlValue& grant_value : *items) {
      absl::StatusOr<std::string> text = grant_value.AsString();
      if (!text.ok()) return text.status();
      absl::StatusOr<Grant> grant = ParseGrant(*text);
      if (!grant.ok()) return grant_value.Error(std::string(grant.status().message()));
      credential.grants.push_back(*std::move(grant));
    }
  }
  if (absl::Status s = ReadNetworks(*map, "networks", &credential.networks); !s.ok()) return s;
  if (absl::Status s = map->ReadUint<uint32_t>("max_links", 1, 100000, &credential.max_links);
      !s.ok()) {
    return s;
  }
  return credential;
}

// The YAML item for `section`.listen[index], or the section (or root) when the list was not
// written and the address is a default.
YamlValue LocateListenItem(const YamlMap& root, std::string_view section, size_t index) {
  std::optional<YamlValue> section_value = root.Find(section);
  if (!section_value) return root.value();
  absl::StatusOr<YamlMap> map = section_value->AsMap();
  if (!map.ok()) return *section_value;
  std::optional<YamlValue> listen = map->Find("listen");
  if (!listen) return *section_value;
  absl::StatusOr<std::vector<YamlValue>> items = listen->AsList();
  if (!items.ok() || index >= items->size()) return *listen;
  return (*items)[index];
}

// Two listeners on the same fixed address would fail at bind time; say so at load instead.
absl::Status CheckListenersDistinct(const YamlMap& root, const RelayConfig& config) {
  std::map<std::pair<std::string, uint16_t>, std::string> owner;
  auto claim = [&](std::string_view section, const std::vector<HostPort>& listen) {
    for (size_t i = 0; i < listen.size(); ++i) {
      if (listen[i].port == 0) continue;
      std::string path = absl::StrCat(AbslView(section), ".listen[", i, "]");
      auto [it, inserted] = owner.emplace(std::make_pair(listen[i].host, listen[i].port), path);
      if (!inserted) {
        YamlValue where = LocateListenItem(root, section, i);
        return absl::InvalidArgumentError(absl::StrCat(where.Location(), ": ", path, ": address ",
                                                       FormatHostPort(listen[i]),
                                                       " is also used by ", it->second));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status s = claim("agent_listener", config.agent_listener.listen); !s.ok()) return s;
  if (config.http) {
    if (absl::Status s = claim("http", config.http->listen); !s.ok()) return s;
  }
  if (config.tls) {
    if (absl::Status s = claim("tls", config.tls->listen); !s.ok()) return s;
  }
  if (config.smtp) {
    if (absl::Status s = claim("smtp", config.smtp->listen); !s.ok()) return s;
  }
  if (config.proxy) {
    if (absl::Status s = claim("proxy", config.proxy->listen); !s.ok()) return s;
  }
  return claim("admin", config.admin.listen);
}

absl::StatusOr<RelayConfig> ParseRelayDocument(const YamlDocument& document) {
  absl::StatusOr<YamlMap> root = document.Root();
  if (!root.ok()) return root.status();
  if (absl::Status s = root->CheckKeys(
          {"relay_id", "state_dir", "workers", "log_level", "agent_listener", "http", "tcp", "tls",
           "smtp", "proxy", "udp", "admin", "link", "proxy_protocol_from", "credentials",
           "tunnel_tap_file", "tunnel_data_path", "upstream", "shutdown_grace_ms"});
      !s.ok()) {
    return s;
  }
  RelayConfig config;
  if (absl::Status s = root->ReadString("relay_id", &config.relay_id); !s.ok()) return s;
  if (config.relay_id.empty()) {
    config.relay_id = DefaultRelayId();
  } else if (!IsPrintableToken(config.relay_id)) {
    std::optional<YamlValue> where = root->Find("relay_id");
    return where->Error(
        absl::StrCat("expected printable characters without spaces, ", where->Got()));
  }
  if (absl::Status s = root->ReadString("state_dir", &config.state_dir); !s.ok()) return s;
  if (config.state_dir.empty()) return root->Find("state_dir")->Error("must not be empty");
  if (absl::Status s = root->ReadString("tunnel_tap_file", &config.tunnel_tap_file); !s.ok()) {
    return s;
  }
  if (absl::Status s = root->ReadBool("tunnel_data_path", &config.tunnel_data_path); !s.ok()) {
    return s;
  }
  if (absl::Status s =
          root->ReadDurationMs("shutdown_grace_ms", 0, 3600 * 1000, &config.shutdown_grace);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = root->ReadUint<uint32_t>("workers", 0, 1024, &config.workers); !s.ok()) {
    return s;
  }
  if (absl::Status s = root->ReadEnum("log_level", {"trace", "debug", "info", "warn", "error"},
                                      &config.log_level);
      !s.ok()) {
    return s;
  }

  // A section written with nothing under it ("http:") is the section with all defaults.
  // `parse` is one of the Parse<Section>(const YamlMap&, <Section>Config*) functions above.
  auto parse_section = [&](std::string_view key, auto parse, auto* section) -> absl::Status {
    std::optional<YamlValue> value = root->Find(key);
    if (!value) return absl::OkStatus();
    absl::StatusOr<YamlMap> map = value->AsMap();
    if (!map.ok()) return map.status();
    return parse(*map, section);
  };
  if (absl::Status s = parse_section("agent_listener", ParseAgentListener, &config.agent_listener);
      !s.ok()) {
    return s;
  }
  // Unlike other sections, http is opt-in: present (even empty) enables the entrypoint.
  if (root->HasKey("http")) {
    if (absl::Status s = parse_section("http", ParseHttp, &config.http.emplace()); !s.ok()) {
      return s;
    }
  }
  if (root->HasKey("tls")) {
    if (absl::Status s = parse_section("tls", ParseTls, &config.tls.emplace()); !s.ok()) return s;
  }
  if (root->HasKey("smtp")) {
    if (absl::Status s = parse_section("smtp", ParseSmtp, &config.smtp.emplace()); !s.ok()) {
      return s;
    }
    if (config.smtp->hostname.empty()) config.smtp->hostname = config.relay_id;
  }
  if (root->HasKey("proxy")) {
    if (absl::Status s = parse_section("proxy", ParseProxy, &config.proxy.emplace()); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = parse_section("tcp", ParseTcp, &config.tcp); !s.ok()) return s;
  if (absl::Status s = parse_section("udp", ParseUdp, &config.udp); !s.ok()) return s;
  if (absl::Status s = parse_section("admin", ParseAdmin, &config.admin); !s.ok()) return s;
  if (absl::Status s = parse_section("link", ParseLink, &config.link); !s.ok()) return s;
  // `upstream:` with no value is no upstream, like any key without a value.
  if (root->Find("upstream")) {
    if (absl::Status s = parse_section("upstream", ParseUpstream, &config.upstream.emplace());
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = CheckListenersDistinct(*root, config); !s.ok()) return s;
  if (absl::Status s = ReadNetworks(*root, "proxy_protocol_from", &config.proxy_protocol_from);
      !s.ok()) {
    return s;
  }

  absl::StatusOr<std::vector<YamlValue>> items =
      root->RequireNonEmptyList("credentials", "at least one credential is required");
  if (!items.ok()) return items.status();
  std::map<std::string, std::string> name_owner;
  for (const YamlValue& item : *items) {
    absl::StatusOr<CredentialConfig> credential = ParseCredential(item);
    if (!credential.ok()) return credential.status();
    if (auto [it, inserted] = name_owner.emplace(credential->name, item.path()); !inserted) {
      absl::StatusOr<YamlMap> map = item.AsMap();
      return map->Find("name")->Error(absl::StrCat("duplicate credential name '", credential->name,
                                                   "' (also ", it->second, ")"));
    }
    config.credentials.push_back(*std::move(credential));
  }
  return config;
}

}  // namespace

uint16_t TcpEntrypointConfig::FixedPortFor(std::string_view service) const {
  for (const TcpPortMapping& mapping : ports) {
    if (mapping.service == service) return mapping.port;
  }
  return 0;
}

uint16_t UdpEntrypointConfig::FixedPortFor(std::string_view service) const {
  for (const UdpPortMapping& mapping : ports) {
    if (mapping.service == service) return mapping.port;
  }
  return 0;
}

const CredentialConfig* RelayConfig::FindCredential(std::string_view name) const {
  return rdv::FindCredential(credentials, name);
}

const CredentialConfig* FindCredential(const std::vector<CredentialConfig>& credentials,
                                       std::string_view name) {
  for (const CredentialConfig& credential : credentials) {
    if (credential.name == name) return &credential;
  }
  return nullptr;
}

bool CredentialConfig::Grants(GrantKind kind, std::string_view name, uint16_t port) const {
  return std::any_of(grants.begin(), grants.end(), [&](const Grant& grant) {
    switch (kind) {
      case GrantKind::kHttp:
      case GrantKind::kTls:
      case GrantKind::kSmtp:
        return grant.AllowsHostName(kind, name);
      case GrantKind::kTcp:
      case GrantKind::kUdp:
        return grant.AllowsPort(kind, name, port);
      case GrantKind::kPair:
      case GrantKind::kPrivate:
      case GrantKind::kConnect:
        return grant.AllowsTunnelName(kind, name);
    }
    return false;
  });
}

bool SameCredential(const CredentialConfig& a, const CredentialConfig& b) {
  auto same_grant = [](const Grant& x, const Grant& y) {
    return x.kind() == y.kind() && x.pattern() == y.pattern();
  };
  return a.name == b.name && a.secret == b.secret && a.max_links == b.max_links &&
         std::equal(a.grants.begin(), a.grants.end(), b.grants.begin(), b.grants.end(),
                    same_grant) &&
         a.networks.ToStrings() == b.networks.ToStrings();
}

absl::StatusOr<std::map<std::string, std::string>> LoadConfigSections(const std::string& path) {
  std::map<std::string, std::string> sections;
  try {
    YAML::Node root = YAML::LoadFile(path);
    if (!root.IsMap()) return sections;
    for (const auto& item : root) {
      sections[item.first.as<std::string>()] = YAML::Dump(item.second);
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat(path, ": ", e.what()));
  }
  return sections;
}

absl::StatusOr<RelayConfig> LoadRelayConfig(const std::string& path) {
  return ParseConfigDocument(YamlDocument::LoadFile(path), ParseRelayDocument);
}

absl::StatusOr<RelayConfig> ParseRelayConfig(std::string_view yaml_text,
                                             std::string_view file_name_for_errors) {
  return ParseConfigDocument(YamlDocument::Parse(yaml_text, file_name_for_errors),
                             ParseRelayDocument);
}

}  // namespace rdv
