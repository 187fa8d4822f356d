#include "common/metrics.h"

#include "common/str_cat.h"

namespace rdv {

Metrics& Metrics::Global() {
  static Metrics* metrics = new Metrics();
  return *metrics;
}

Counter& Metrics::GetCounter(std::string_view name, std::string_view help,
                             std::string_view labels) {
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) it = families_.emplace(std::string(name), Family{}).first;
  Family& family = it->second;
  if (family.help.empty()) family.help = std::string(help);
  auto [slot, inserted] = family.counters.try_emplace(std::string(labels), nullptr);
  if (inserted) slot->second = &counter_storage_.emplace_back();
  return *slot->second;
}

Gauge& Metrics::GetGauge(std::string_view name, std::string_view help, std::string_view labels) {
  absl::MutexLock lock(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) it = families_.emplace(std::string(name), Family{}).first;
  Family& family = it->second;
  family.is_gauge = true;
  if (family.help.empty()) family.help = std::string(help);
  auto [slot, inserted] = family.gauges.try_emplace(std::string(labels), nullptr);
  if (inserted) slot->second = &gauge_storage_.emplace_back();
  return *slot->second;
}

std::string Metrics::RenderPrometheus() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    StrAppend(out, "# HELP ", name, " ", family.help, "\n# TYPE ", name,
              family.is_gauge ? " gauge\n" : " counter\n");
    auto series = [&family_name = name](const std::string& labels) {
      return labels.empty() ? family_name : StrCat(family_name, "{", labels, "}");
    };
    for (const auto& [labels, counter] : family.counters) {
      StrAppend(out, series(labels), " ", counter->value(), "\n");
    }
    for (const auto& [labels, gauge] : family.gauges) {
      StrAppend(out, series(labels), " ", gauge->value(), "\n");
    }
  }
  return out;
}

}  // namespace rdv
