#include "agent/agent_config.h"

#include <unistd.h>

#include <climits>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "common/str_cat.h"

namespace rdv {

namespace {

constexpr size_t kMaxLabelLength = 63;

std::string DefaultAgentId() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
    return absl::StrCat("agent-", getpid());
  }
  return absl::StrCat(name, "-", getpid());
}

bool IsValidLabel(std::string_view label) {
  return label.size() <= kMaxLabelLength && label.find('.') == std::string_view::npos &&
         IsValidHostName(label);
}

absl::Status ParseRelays(const YamlMap& root, AgentConfig* config) {
  absl::StatusOr<std::vector<YamlValue>> items =
      root.RequireNonEmptyList("relays", "at least one relay address is required");
  if (!items.ok()) return items.status();
  for (const YamlValue& item : *items) {
    absl::StatusOr<HostPort> relay =
        item.AsHostPort(/*allow_port_zero=*/false, /*require_ip_literal=*/false);
    if (!relay.ok()) return relay.status();
    for (const HostPort& earlier : config->relays) {
      if (earlier == *relay) {
        return item.Error(absl::StrCat("relay ", FormatHostPort(*relay), " is listed twice"));
      }
    }
    config->relays.push_back(*std::move(relay));
  }
  return absl::OkStatus();
}

// `allow:` of a pair or private service: a list of {network, ports}.
absl::Status ParseAllowList(const YamlValue& value, AllowList* allow) {
  absl::StatusOr<std::vector<YamlValue>> items = value.AsList();
  if (!items.ok()) return items.status();
  for (const YamlValue& item : *items) {
    absl::StatusOr<YamlMap> rule = item.AsMap();
    if (!rule.ok()) return rule.status();
    if (absl::Status s = rule->CheckKeys({"network", "ports"}); !s.ok()) return s;
    absl::StatusOr<YamlValue> network_value = rule->Require("network");
    if (!network_value.ok()) return network_value.status();
    absl::StatusOr<std::string> network = network_value->AsString();
    if (!network.ok()) return network.status();
    std::vector<PortRange> ports;
    if (std::optional<YamlValue> ports_value = rule->Find("ports")) {
      absl::StatusOr<std::string> text = ports_value->AsString();
      if (!text.ok()) return text.status();
      absl::StatusOr<std::vector<PortRange>> parsed = ParsePortList(*text);
      if (!parsed.ok()) return ports_value->Error(std::string(parsed.status().message()));
      ports = *std::move(parsed);
    }
    if (absl::Status s = allow->Add(*network, std::move(ports)); !s.ok()) {
      return network_value->Error(std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

// The security of a pair or private service: the secret (pair; private PSK mode) or the
// certificate and key (private certificate mode).
absl::Status ParseTunnelSecurity(const YamlMap& map, ServiceConfig* service) {
  if (absl::Status s = map.ReadReadablePath("certificate_file", &service->certificate_file);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map.ReadReadablePath("key_file", &service->key_file); !s.ok()) return s;
  bool certificate = !service->certificate_file.empty() || !service->key_file.empty();
  bool secret_given = map.Find("secret") || map.Find("secret_file");
  if (service->kind == ServiceConfig::Kind::kPair && certificate) {
    return map.Find(service->certificate_file.empty() ? "key_file" : "certificate_file")
        ->Error(
            "a pair is secured by its pairing secret; certificate_file and key_file are "
            "only valid for private services");
  }
  if (certificate) {
    if (secret_given) {
      return map.Find(map.Find("secret") ? "secret" : "secret_file")
          ->Error(
              "set either a secret (PSK mode) or certificate_file and key_file (certificate "
              "mode), not both");
    }
    if (service->certificate_file.empty() || service->key_file.empty()) {
      return map.Error("certificate mode needs both certificate_file and key_file");
    }
    return absl::OkStatus();
  }
  if (service->kind == ServiceConfig::Kind::kPrivate && !secret_given) {
    return map.Error(
        "a private service needs secret or secret_file (PSK mode), or certificate_file and "
        "key_file (certificate mode)");
  }
  absl::StatusOr<std::string> secret =
      map.ReadSecret("secret", "secret_file", kMinTunnelSecretLength);
  if (!secret.ok()) return secret.status();
  service->secret = *std::move(secret);
  return absl::OkStatus();
}

absl::StatusOr<ServiceConfig> ParseService(const YamlValue& item) {
  absl::StatusOr<YamlMap> map = item.AsMap();
  if (!map.ok()) return map.status();
  if (absl::Status s = map->CheckKeys({"name", "kind", "target", "alias", "port", "proxy_protocol",
                                       "balance", "health_check", "rewrite_html", "secret",
                                       "secret_file", "certificate_file", "key_file", "allow"});
      !s.ok()) {
    return s;
  }
  ServiceConfig service;

  absl::StatusOr<YamlValue> kind_value = map->Require("kind");
  if (!kind_value.ok()) return kind_value.status();
  absl::StatusOr<std::string> kind = kind_value->AsString();
  static constexpr std::pair<std::string_view, ServiceConfig::Kind> kKinds[] = {
      {"http", ServiceConfig::Kind::kHttp},      {"tcp", ServiceConfig::Kind::kTcp},
      {"tls", ServiceConfig::Kind::kTls},        {"smtp", ServiceConfig::Kind::kSmtp},
      {"udp", ServiceConfig::Kind::kUdp},        {"pair", ServiceConfig::Kind::kPair},
      {"private", ServiceConfig::Kind::kPrivate}};
  auto known = std::find_if(std::begin(kKinds), std::end(kKinds),
                            [&](const auto& entry) { return kind.ok() && *kind == entry.first; });
  if (known == std::end(kKinds)) {
    return kind_value->Error(
        absl::StrCat("expected one of http|tcp|tls|smtp|udp|pair|private, ", kind_value->Got()));
  }
  service.kind = known->second;
  if (service.is_tunnel()) {
    for (std::string_view key :
         {"alias", "port", "proxy_protocol", "health_check", "rewrite_html"}) {
      if (map->HasKey(key)) {
        std::optional<YamlValue> where = map->Find(key);
        return (where ? *where : map->value())
            .Error(absl::StrCat(AbslView(key), " is not valid for ", AbslView(service.kind_name()),
                                " services"));
      }
    }
  } else {
    for (std::string_view key :
         {"secret", "secret_file", "certificate_file", "key_file", "allow"}) {
      if (std::optional<YamlValue> where = map->Find(key)) {
        return where->Error(
            absl::StrCat(AbslView(key), " is only valid for pair and private services"));
      }
    }
  }

  absl::StatusOr<YamlValue> name_value = map->Require("name");
  if (!name_value.ok()) return name_value.status();
  absl::StatusOr<std::string> name = name_value->AsString();
  if (!name.ok()) return name.status();
  if (service.named_by_host()) {
    std::string lower = absl::AsciiStrToLower(*name);
    if (!IsValidHostPattern(lower)) {
      return name_value->Error(
          absl::StrCat("expected a host name or *.suffix for an ", AbslView(service.kind_name()),
                       " service, e.g. www.example.com or *.example.com, ", name_value->Got()));
    }
    service.name = std::move(lower);
  } else {
    if (!IsValidServiceName(*name)) {
      return name_value->Error(
          absl::StrCat("expected a ", AbslView(service.kind_name()),
                       " service name (a letter, then letters, digits, '.', '_', "
                       "'-'; at most 63), ",
                       name_value->Got()));
    }
    service.name = *std::move(name);
  }

  if (!service.is_tunnel() || map->Find("target")) {
    absl::StatusOr<YamlValue> target_value = map->Require("target");
    if (!target_value.ok()) return target_value.status();
    absl::StatusOr<HostPort> target =
        target_value->AsHostPort(/*allow_port_zero=*/false, /*require_ip_literal=*/false);
    if (!target.ok()) return target.status();
    service.target = *std::move(target);
  }
  if (service.is_tunnel()) {
    if (absl::Status s = ParseTunnelSecurity(*map, &service); !s.ok()) return s;
    if (std::optional<YamlValue> allow = map->Find("allow")) {
      if (absl::Status s = ParseAllowList(*allow, &service.allow); !s.ok()) return s;
    }
  }

  if (absl::Status s =
          map->ReadEnum("proxy_protocol", {"off", "v1", "v2"}, &service.proxy_protocol);
      !s.ok()) {
    return s;
  }
  if (service.kind == ServiceConfig::Kind::kUdp && service.proxy_protocol != "off") {
    // A PROXY header opens a byte stream; a udp flow has none to put it in.
    return map->Find("proxy_protocol")->Error("proxy_protocol is not valid for udp services");
  }

  if (absl::Status s = map->ReadEnum("balance", {"round_robin", "least_streams", "client_ip_hash"},
                                     &service.balance);
      !s.ok()) {
    return s;
  }

  if (absl::Status s = map->ReadBool("rewrite_html", &service.rewrite_html); !s.ok()) return s;
  if (std::optional<YamlValue> rewrite = map->Find("rewrite_html");
      rewrite && service.kind != ServiceConfig::Kind::kHttp) {
    return rewrite->Error("rewrite_html is only valid for http services");
  }
  if (std::optional<YamlValue> health = map->Find("health_check");
      health || map->HasKey("health_check")) {
    absl::StatusOr<HealthCheckConfig> check =
        health ? ParseHealthCheckConfig(*health) : HealthCheckConfig{};
    if (!check.ok()) return check.status();
    service.health_check = *std::move(check);
  }

  std::optional<YamlValue> alias_value = map->Find("alias");
  std::optional<YamlValue> port_value = map->Find("port");
  if (service.named_by_host()) {
    if (port_value) return port_value->Error("port is only valid for tcp and udp services");
    if (alias_value && service.kind != ServiceConfig::Kind::kHttp) {
      return alias_value->Error("alias is only valid for http services");
    }
  }
  if (service.kind == ServiceConfig::Kind::kHttp) {
    std::string alias;
    if (alias_value) {
      absl::StatusOr<std::string> text = alias_value->AsString();
      if (!text.ok()) return text.status();
      alias = absl::AsciiStrToLower(*text);
    }
    if (!alias.empty()) {
      if (!IsValidLabel(alias)) {
        return alias_value->Error(
            absl::StrCat("expected a single DNS label (letters, digits, '-'; at most 63), ",
                         alias_value->Got()));
      }
    } else {
      alias = DefaultAlias(service.name);
      if (!IsValidLabel(alias)) {
        const YamlValue& where = alias_value ? *alias_value : item;
        return where.Error(absl::StrCat("the alias derived from the name ('", alias,
                                        "') is not a valid DNS label; set alias explicitly"));
      }
    }
    service.alias = std::move(alias);
  } else if (!service.named_by_host()) {
    if (alias_value) return alias_value->Error("alias is only valid for http services");
    if (port_value) {
      absl::StatusOr<uint64_t> port = port_value->AsUint(0, 65535);
      if (!port.ok()) return port.status();
      service.port = static_cast<uint16_t>(*port);
    }
  }
  return service;
}

absl::Status ParseServices(const YamlMap& root, AgentConfig* config) {
  std::vector<YamlValue> items;
  if (std::optional<YamlValue> services = root.Find("services")) {
    absl::StatusOr<std::vector<YamlValue>> list = services->AsList();
    if (!list.ok()) return list.status();
    items = *std::move(list);
  }
  if (items.empty() && config->connects.empty()) {
    std::optional<YamlValue> services = root.Find("services");
    return (services ? *services : root.value())
        .Error("at least one service (or a connect entry) is required");
  }
  std::map<std::pair<ServiceConfig::Kind, std::string>, std::string> name_owner;
  std::map<std::string, std::string> alias_owner;
  std::map<std::pair<ServiceConfig::Kind, uint16_t>, std::string> port_owner;
  for (const YamlValue& item : items) {
    absl::StatusOr<ServiceConfig> service = ParseService(item);
    if (!service.ok()) return service.status();
    // The map lookups below succeed: ParseService read these keys from this very item.
    absl::StatusOr<YamlMap> map = item.AsMap();
    if (auto [it, inserted] =
            name_owner.emplace(std::make_pair(service->kind, service->name), item.path());
        !inserted) {
      return map->Find("name")->Error(absl::StrCat("duplicate ", AbslView(service->kind_name()),
                                                   " service '", service->name, "' (also ",
                                                   it->second, ")"));
    }
    if (!service->alias.empty()) {
      if (auto [it, inserted] = alias_owner.emplace(service->alias, item.path()); !inserted) {
        std::optional<YamlValue> where = map->Find("alias");
        return (where ? *where : item)
            .Error(absl::StrCat("alias '", service->alias, "' is already used by ", it->second,
                                "; set a different alias"));
      }
    }
    if (service->port != 0) {
      if (auto [it, inserted] =
              port_owner.emplace(std::make_pair(service->kind, service->port), item.path());
          !inserted) {
        return map->Find("port")->Error(
            absl::StrCat("port ", service->port, " is already requested by ", it->second));
      }
    }
    config->services.push_back(*std::move(service));
  }
  return absl::OkStatus();
}

absl::Status ParseConnectUsers(const YamlValue& value, ConnectConfig* connect) {
  absl::StatusOr<std::vector<YamlValue>> items = value.AsList();
  if (!items.ok()) return items.status();
  for (const YamlValue& item : *items) {
    absl::StatusOr<YamlMap> map = item.AsMap();
    if (!map.ok()) return map.status();
    if (absl::Status s = map->CheckKeys({"username", "password"}); !s.ok()) return s;
    ConnectConfig::User user;
    for (auto [key, field] :
         {std::pair{"username", &user.username}, {"password", &user.password}}) {
      absl::StatusOr<YamlValue> field_value = map->Require(key);
      if (!field_value.ok()) return field_value.status();
      absl::StatusOr<std::string> text = field_value->AsString();
      if (!text.ok()) return text.status();
      // RFC 1929 carries each in 1..255 bytes.
      if (text->empty() || text->size() > 255) {
        return field_value->Error(absl::StrCat("expected 1 to 255 bytes, got ", text->size()));
      }
      *field = *std::move(text);
    }
    connect->users.push_back(std::move(user));
  }
  return absl::OkStatus();
}

absl::StatusOr<ConnectConfig> ParseConnect(const YamlValue& item) {
  absl::StatusOr<YamlMap> map = item.AsMap();
  if (!map.ok()) return map.status();
  if (absl::Status s = map->CheckKeys({"listen", "pair", "private", "secret", "secret_file",
                                       "peer_fingerprint", "peer_ca_file", "socks5", "users"});
      !s.ok()) {
    return s;
  }
  ConnectConfig connect;
  absl::StatusOr<YamlValue> listen_value = map->Require("listen");
  if (!listen_value.ok()) return listen_value.status();
  absl::StatusOr<HostPort> listen =
      listen_value->AsHostPort(/*allow_port_zero=*/true, /*require_ip_literal=*/true);
  if (!listen.ok()) return listen.status();
  connect.listen = *std::move(listen);

  std::optional<YamlValue> pair = map->Find("pair");
  std::optional<YamlValue> private_name = map->Find("private");
  if (pair && private_name) {
    return private_name->Error("set either pair or private, not both");
  }
  if (!pair && !private_name) {
    return map->Error(
        "one of pair (a pair's name) or private (a private service's name) is required");
  }
  connect.kind = pair ? ServiceConfig::Kind::kPair : ServiceConfig::Kind::kPrivate;
  const YamlValue& name_value = pair ? *pair : *private_name;
  absl::StatusOr<std::string> name = name_value.AsString();
  if (!name.ok()) return name.status();
  if (!IsValidServiceName(*name)) {
    return name_value.Error(
        absl::StrCat("expected a ", AbslView(connect.kind_name()),
                     " service name (a letter, then letters, digits, '.', '_', '-'; at most 63), ",
                     name_value.Got()));
  }
  connect.name = *std::move(name);

  std::string fingerprint;
  if (absl::Status s = map->ReadString("peer_fingerprint", &fingerprint); !s.ok()) return s;
  if (!fingerprint.empty()) {
    absl::StatusOr<std::string> normalized = NormalizeFingerprint(fingerprint);
    if (!normalized.ok()) {
      return map->Find("peer_fingerprint")->Error(std::string(normalized.status().message()));
    }
    connect.peer_fingerprint = *std::move(normalized);
  }
  if (absl::Status s = map->ReadReadablePath("peer_ca_file", &connect.peer_ca_file); !s.ok()) {
    return s;
  }
  bool certificate = !connect.peer_fingerprint.empty() || !connect.peer_ca_file.empty();
  bool secret_given = map->Find("secret") || map->Find("secret_file");
  if (certificate) {
    std::string_view key = connect.peer_fingerprint.empty() ? "peer_ca_file" : "peer_fingerprint";
    if (connect.kind == ServiceConfig::Kind::kPair) {
      return map->Find(key)->Error(
          "a pair is secured by its pairing secret; peer_fingerprint and peer_ca_file are only "
          "valid for private connect entries");
    }
    if (!connect.peer_fingerprint.empty() && !connect.peer_ca_file.empty()) {
      return map->Find("peer_ca_file")
          ->Error("set either peer_fingerprint or peer_ca_file, not both");
    }
    if (secret_given) {
      return map->Find(key)->Error(
          "set either a secret (PSK mode) or peer_fingerprint/peer_ca_file (certificate mode), not "
          "both");
    }
  } else {
    if (connect.kind == ServiceConfig::Kind::kPrivate && !secret_given) {
      return map->Error(
          "a private connect entry needs secret or secret_file (PSK mode), or peer_fingerprint "
          "or peer_ca_file (certificate mode)");
    }
    absl::StatusOr<std::string> secret =
        map->ReadSecret("secret", "secret_file", kMinTunnelSecretLength);
    if (!secret.ok()) return secret.status();
    connect.secret = *std::move(secret);
  }

  if (absl::Status s = map->ReadBool("socks5", &connect.socks5); !s.ok()) return s;
  if (std::optional<YamlValue> users = map->Find("users")) {
    if (!connect.socks5) {
      return users->Error(
          "users are only valid with socks5: true (a plain port has no "
          "authentication)");
    }
    if (absl::Status s = ParseConnectUsers(*users, &connect); !s.ok()) return s;
  }
  return connect;
}

absl::Status ParseConnects(const YamlMap& root, AgentConfig* config) {
  std::optional<YamlValue> connects = root.Find("connect");
  if (!connects) return absl::OkStatus();
  absl::StatusOr<std::vector<YamlValue>> items = connects->AsList();
  if (!items.ok()) return items.status();
  std::map<HostPort, std::string, bool (*)(const HostPort&, const HostPort&)> listen_owner(
      [](const HostPort& a, const HostPort& b) {
        return std::tie(a.host, a.port) < std::tie(b.host, b.port);
      });
  for (const YamlValue& item : *items) {
    absl::StatusOr<ConnectConfig> connect = ParseConnect(item);
    if (!connect.ok()) return connect.status();
    if (connect->listen.port != 0) {
      if (auto [it, inserted] = listen_owner.emplace(connect->listen, item.path()); !inserted) {
        return item.AsMap()->Find("listen")->Error(
            absl::StrCat("listen address ", FormatHostPort(connect->listen), " is already used by ",
                         it->second));
      }
    }
    config->connects.push_back(*std::move(connect));
  }
  return absl::OkStatus();
}

absl::Status ParseAdmin(const YamlMap& root, AgentConfig* config) {
  std::optional<YamlValue> admin = root.Find("admin");
  if (!admin) return absl::OkStatus();
  absl::StatusOr<YamlMap> map = admin->AsMap();
  if (!map.ok()) return map.status();
  if (absl::Status s = map->CheckKeys({"listen"}); !s.ok()) return s;
  absl::StatusOr<YamlValue> listen = map->Require("listen");
  if (!listen.ok()) return listen.status();
  absl::StatusOr<HostPort> address =
      listen->AsHostPort(/*allow_port_zero=*/true, /*require_ip_literal=*/true);
  if (!address.ok()) return address.status();
  config->admin_listen = *std::move(address);
  return absl::OkStatus();
}

absl::StatusOr<AgentConfig> ParseAgentDocument(const YamlDocument& document) {
  absl::StatusOr<YamlMap> root = document.Root();
  if (!root.ok()) return root.status();
  if (absl::Status s = root->CheckKeys({"agent_id", "relays", "server_name", "relay_ca_file",
                                        "relay_fingerprint", "credential", "links", "reconnect",
                                        "connect_timeout_ms", "shutdown_grace_ms", "log_level",
                                        "services", "connect", "admin", "tunnel_data_path"});
      !s.ok()) {
    return s;
  }
  AgentConfig config;
  if (absl::Status s = root->ReadString("agent_id", &config.agent_id); !s.ok()) return s;
  if (config.agent_id.empty()) {
    config.agent_id = DefaultAgentId();
  } else if (!IsPrintableToken(config.agent_id)) {
    std::optional<YamlValue> where = root->Find("agent_id");
    return where->Error(
        absl::StrCat("expected printable characters without spaces, ", where->Got()));
  }
  if (absl::Status s = ParseRelays(*root, &config); !s.ok()) return s;
  RelayTrustConfig trust;
  if (absl::Status s = ReadRelayTrust(*root, &trust); !s.ok()) return s;
  config.server_name = std::move(trust.server_name);
  config.relay_ca_file = std::move(trust.relay_ca_file);
  config.relay_fingerprint = std::move(trust.relay_fingerprint);
  if (absl::Status s = ReadLinkCredential(*root, "credential", &config.credential); !s.ok()) {
    return s;
  }
  if (absl::Status s = root->ReadUint<uint32_t>("links", 1, 1024, &config.links); !s.ok()) {
    return s;
  }
  if (std::optional<YamlValue> reconnect = root->Find("reconnect")) {
    absl::StatusOr<YamlMap> map = reconnect->AsMap();
    if (!map.ok()) return map.status();
    if (absl::Status s = map->CheckKeys({"initial_ms", "max_ms"}); !s.ok()) return s;
    if (absl::Status s = map->ReadTimeoutMs("initial_ms", &config.reconnect.initial); !s.ok()) {
      return s;
    }
    if (absl::Status s = map->ReadTimeoutMs("max_ms", &config.reconnect.max); !s.ok()) {
      return s;
    }
    if (config.reconnect.max < config.reconnect.initial) {
      std::optional<YamlValue> where = map->Find("max_ms");
      return (where ? *where : *map->Find("initial_ms"))
          .Error(absl::StrCat("reconnect.max_ms (", absl::ToInt64Milliseconds(config.reconnect.max),
                              ") must be at least reconnect.initial_ms (",
                              absl::ToInt64Milliseconds(config.reconnect.initial), ")"));
    }
  }
  if (absl::Status s = root->ReadTimeoutMs("connect_timeout_ms", &config.connect_timeout);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          root->ReadDurationMs("shutdown_grace_ms", 0, 3600 * 1000, &config.shutdown_grace);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = root->ReadEnum("log_level", {"trace", "debug", "info", "warn", "error"},
                                      &config.log_level);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = root->ReadBool("tunnel_data_path", &config.tunnel_data_path); !s.ok()) {
    return s;
  }
  if (absl::Status s = ParseConnects(*root, &config); !s.ok()) return s;
  if (absl::Status s = ParseServices(*root, &config); !s.ok()) return s;
  if (absl::Status s = ParseAdmin(*root, &config); !s.ok()) return s;
  return config;
}

}  // namespace

std::string DefaultAlias(std::string_view service_name) {
  std::string alias;
  for (char c : service_name) {
    if (c == '*') continue;
    alias.push_back(c == '.' ? '-' : absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  size_t first = alias.find_first_not_of('-');
  if (first == std::string::npos) return std::string();
  size_t last = alias.find_last_not_of('-');
  return alias.substr(first, last - first + 1);
}

absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path) {
  return ParseConfigDocument(YamlDocument::LoadFile(path), ParseAgentDocument);
}

absl::StatusOr<AgentConfig> ParseAgentConfig(std::string_view yaml_text,
                                             std::string_view file_name_for_errors) {
  return ParseConfigDocument(YamlDocument::Parse(yaml_text, file_name_for_errors),
                             ParseAgentDocument);
}

}  // namespace rdv
