#include "relay/service_health.h"

#include "absl/strings/ascii.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {

void ApplyServiceHealth(Directory& directory, const StreamCarrier& carrier,
                        const link::ServiceHealth& report, std::string_view link_description) {
  link::ServiceKind kind = report.kind();
  bool by_host = kind == link::HTTP || kind == link::TLS || kind == link::SMTP;
  std::string name = by_host ? NormalizeHost(report.name()) : report.name();
  std::string kind_name = absl::AsciiStrToLower(link::ServiceKind_Name(kind));
  absl::StatusOr<bool> changed = directory.SetHealth(carrier, kind, name, report.healthy());
  if (!changed.ok()) {
    CounterOf("rdv_service_health_ignored_total",
              "Health reports for a service the link does not serve")
        .Inc();
    spdlog::debug("{}: health report for {} {} ignored: {}", link_description, kind_name, name,
                  changed.status().message());
    return;
  }
  if (!*changed) return;
  CounterOf("rdv_service_health_changes_total", "Agents whose service health changed",
            StrCat("state=\"", report.healthy() ? "healthy" : "unhealthy", "\""))
      .Inc();
  if (report.healthy()) {
    spdlog::info("{}: {} {} is healthy again, taking new streams", link_description, kind_name,
                 name);
  } else {
    spdlog::warn("{}: {} {} is unhealthy ({}), no new streams", link_description, kind_name, name,
                 report.detail().empty() ? "no detail" : report.detail());
  }
}

}  // namespace rdv
