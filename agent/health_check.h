// Health checks of a service's target (docs/configuration.md, `health_check`).
//
// Every interval: 1. resolve the target  2. connect (tcp), or connect, send GET and read the
// status line (http), all within the timeout  3. count the pass or failure  4. after
// `unhealthy_threshold` failures in a row a healthy target turns unhealthy, after
// `healthy_threshold` passes in a row an unhealthy one turns healthy; each turn is reported to
// the owner, which tells the relay (ServiceHealth) on every link.
//
// A target starts healthy: a service is not held back before its first check, and an agent
// whose checks are off never reports anything.
#ifndef RDV_AGENT_HEALTH_CHECK_H_
#define RDV_AGENT_HEALTH_CHECK_H_

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "agent/health_check_config.h"
#include "common/yaml_config.h"

namespace rdv {

// The threshold logic alone (no I/O).
class HealthState {
 public:
  HealthState(uint32_t healthy_threshold, uint32_t unhealthy_threshold)
      : healthy_threshold_(healthy_threshold), unhealthy_threshold_(unhealthy_threshold) {}
  // Records one check; true when the state turned.
  bool Record(bool passed);
  bool healthy() const { return healthy_; }

 private:
  const uint32_t healthy_threshold_;
  const uint32_t unhealthy_threshold_;
  bool healthy_ = true;
  uint32_t streak_ = 0;  // consecutive results that disagree with the current state
};

class HealthChecker {
 public:
  // Called on the loop when the state turns, with the last check's outcome ("ok" or the error).
  using OnChange = std::function<void(bool healthy, const std::string& detail)>;

  // `host_header` is the Host an http check sends.
  HealthChecker(uv_loop_t* loop, HealthCheckConfig config, HostPort target, std::string host_header,
                OnChange on_change);
  // Stop() must have run (the handles are closed there).
  ~HealthChecker();

  // The first check runs at once, then one per interval.
  void Start();
  // Cancels the check in flight and closes every handle; the loop then runs dry.
  void Stop();

  bool healthy() const { return state_.healthy(); }
  // Outcome of the last check: "ok", the failure, or "not checked yet".
  const std::string& detail() const { return detail_; }
  uint64_t checks() const { return checks_; }

 private:
  struct Probe;
  void RunCheck();
  void Connect(const sockaddr_storage& address);
  void Complete(uint64_t generation, const absl::Status& status);
  void AbortProbe();
  void OnConnected(int status);
  void OnRead(ssize_t nread, const uv_buf_t* buf);

  uv_loop_t* const loop_;
  const HealthCheckConfig config_;
  const HostPort target_;
  const std::string request_;  // http: the whole GET
  const OnChange on_change_;
  HealthState state_;
  std::string detail_ = "not checked yet";
  uv_timer_t* interval_timer_;
  uv_timer_t* timeout_timer_;
  Probe* probe_ = nullptr;  // the connection of the check in flight
  bool in_flight_ = false;
  bool stopped_ = false;
  uint64_t generation_ = 0;  // stale resolve callbacks compare against this
  uint64_t checks_ = 0;
  std::shared_ptr<HealthChecker*> alive_;  // resolve callbacks hold a weak_ptr to this token
};

}  // namespace rdv

#endif  // RDV_AGENT_HEALTH_CHECK_H_
