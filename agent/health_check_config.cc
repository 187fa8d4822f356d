#include "agent/health_check_config.h"

#include "absl/strings/str_cat.h"

namespace rdv {

absl::StatusOr<HealthCheckConfig> ParseHealthCheckConfig(const YamlValue& value) {
  HealthCheckConfig config;
  absl::StatusOr<YamlMap> map = value.AsMap();
  if (!map.ok()) return map.status();
  if (absl::Status s = map->CheckKeys({"kind", "interval_ms", "timeout_ms", "path", "expect_status",
                                       "host", "healthy_threshold", "unhealthy_threshold"});
      !s.ok()) {
    return s;
  }
  std::string kind = "tcp";
  if (absl::Status s = map->ReadEnum("kind", {"tcp", "http"}, &kind); !s.ok()) return s;
  config.kind = kind == "http" ? HealthCheckConfig::Kind::kHttp : HealthCheckConfig::Kind::kTcp;
  if (absl::Status s = map->ReadTimeoutMs("interval_ms", &config.interval); !s.ok()) return s;
  if (absl::Status s = map->ReadTimeoutMs("timeout_ms", &config.timeout); !s.ok()) return s;
  if (config.timeout >= config.interval) {
    std::optional<YamlValue> where = map->Find("timeout_ms");
    return (where ? *where : value)
        .Error(absl::StrCat("timeout_ms (", absl::ToInt64Milliseconds(config.timeout),
                            ") must be below interval_ms (",
                            absl::ToInt64Milliseconds(config.interval), ")"));
  }
  bool http = config.kind == HealthCheckConfig::Kind::kHttp;
  for (std::string_view http_only : {"path", "expect_status", "host"}) {
    if (!http && map->Find(http_only)) {
      return map->Find(http_only)->Error("only valid with kind: http");
    }
  }
  if (absl::Status s = map->ReadString("path", &config.path); !s.ok()) return s;
  if (config.path.empty() || config.path.front() != '/' ||
      config.path.find_first_of(" \r\n\t") != std::string::npos) {
    return map->Find("path")->Error(absl::StrCat(
        "expected a request path starting with '/', without spaces, ", map->Find("path")->Got()));
  }
  if (absl::Status s = map->ReadUint<uint32_t>("expect_status", 100, 599, &config.expect_status);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = map->ReadString("host", &config.host); !s.ok()) return s;
  if (config.host.find_first_of(" \r\n\t") != std::string::npos) {
    return map->Find("host")->Error("expected a host name without spaces");
  }
  if (absl::Status s =
          map->ReadUint<uint32_t>("healthy_threshold", 1, 100, &config.healthy_threshold);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          map->ReadUint<uint32_t>("unhealthy_threshold", 1, 100, &config.unhealthy_threshold);
      !s.ok()) {
    return s;
  }
  return config;
}

}  // namespace rdv
