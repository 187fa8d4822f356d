// Process-wide named counters and gauges, rendered as Prometheus text.
//
// Every refusal, drop and error path owns a counter here (STYLE 13). Counters are registered
// once (usually into a static or a member) and then bumped lock-free from any thread.
#ifndef RDV_COMMON_METRICS_H_
#define RDV_COMMON_METRICS_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>

#include "absl/synchronization/mutex.h"

namespace rdv {

class Counter {
 public:
  void Inc(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Add(int64_t n) { value_.fetch_add(n, std::memory_order_relaxed); }
  void Inc() { Add(1); }
  void Dec() { Add(-1); }
  void Set(int64_t n) { value_.store(n, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

class Metrics {
 public:
  static Metrics& Global();

  // `name` is a metric family ("rdv_http_errors_total"); `labels` is the inner label text
  // ("code=\"404\"") or empty. The same (name, labels) always returns the same object, whose
  // address stays valid for the life of the process.
  Counter& GetCounter(std::string_view name, std::string_view help, std::string_view labels = "");
  Gauge& GetGauge(std::string_view name, std::string_view help, std::string_view labels = "");

  std::string RenderPrometheus() const;

 private:
  struct Family {
    std::string help;
    bool is_gauge = false;
    std::map<std::string, Counter*> counters;  // by labels
    std::map<std::string, Gauge*> gauges;
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Family, std::less<>> families_ ABSL_GUARDED_BY(mu_);
  std::deque<Counter> counter_storage_ ABSL_GUARDED_BY(mu_);
  std::deque<Gauge> gauge_storage_ ABSL_GUARDED_BY(mu_);
};

// Shorthands for the common case of a counter named at its use site.
inline Counter& CounterOf(std::string_view name, std::string_view help,
                          std::string_view labels = "") {
  return Metrics::Global().GetCounter(name, help, labels);
}
inline Gauge& GaugeOf(std::string_view name, std::string_view help, std::string_view labels = "") {
  return Metrics::Global().GetGauge(name, help, labels);
}

}  // namespace rdv

#endif  // RDV_COMMON_METRICS_H_
