#include "agent/agent_config.h"

#include <unistd.h>

#include <climits>
#include <map>
#include <optional>
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

absl::StatusOr<ServiceConfig> ParseService(const YamlValue& item) {
  absl::StatusOr<YamlMap> map = item.AsMap();
  if (!map.ok()) return map.status();
  if (absl::Status s = map->CheckKeys({"name", "kind", "target", "alias", "port", "proxy_protocol",
                                       "balance", "health_check", "rewrite_html"});
      !s.ok()) {
    return s;
  }
  ServiceConfig service;

  absl::StatusOr<YamlValue> kind_value = map->Require("kind");
  if (!kind_value.ok()) return kind_value.status();
  absl::StatusOr<std::string> kind = kind_value->AsString();
  static constexpr std::pair<std::string_view, ServiceConfig::Kind> kKinds[] = {
      {"http", ServiceConfig::Kind::kHttp},
      {"tcp", ServiceConfig::Kind::kTcp},
      {"tls", ServiceConfig::Kind::kTls},
      {"smtp", ServiceConfig::Kind::kSmtp},
      {"udp", ServiceConfig::Kind::kUdp}};
  auto known = std::find_if(std::begin(kKinds), std::end(kKinds),
                            [&](const auto& entry) { return kind.ok() && *kind == entry.first; });
  if (known == std::end(kKinds)) {
    return kind_value->Error(
        absl::StrCat("expected one of http|tcp|tls|smtp|udp, ", kind_value->Got()));
  }
  service.kind = known->second;

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

  absl::StatusOr<YamlValue> target_value = map->Require("target");
  if (!target_value.ok()) return target_value.status();
  absl::StatusOr<HostPort> target =
      target_value->AsHostPort(/*allow_port_zero=*/false, /*require_ip_literal=*/false);
  if (!target.ok()) return target.status();
  service.target = *std::move(target);

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
  absl::StatusOr<std::vector<YamlValue>> items =
      root.RequireNonEmptyList("services", "at least one service is required");
  if (!items.ok()) return items.status();
  std::map<std::pair<ServiceConfig::Kind, std::string>, std::string> name_owner;
  std::map<std::string, std::string> alias_owner;
  std::map<std::pair<ServiceConfig::Kind, uint16_t>, std::string> port_owner;
  for (const YamlValue& item : *items) {
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

absl::StatusOr<AgentConfig> ParseAgentDocument(const YamlDocument& document) {
  absl::StatusOr<YamlMap> root = document.Root();
  if (!root.ok()) return root.status();
  if (absl::Status s = root->CheckKeys({"agent_id", "relays", "server_name", "relay_ca_file",
                                        "relay_fingerprint", "credential", "links", "reconnect",
                                        "connect_timeout_ms", "log_level", "services"});
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
  if (absl::Status s = root->ReadEnum("log_level", {"trace", "debug", "info", "warn", "error"},
                                      &config.log_level);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ParseServices(*root, &config); !s.ok()) return s;
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
