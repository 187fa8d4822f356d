#include "agent/health_check.h"

#include <cassert>
#include <cstring>

#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/tcp_connection.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

Counter& Checks(bool passed) {
  return CounterOf("rdv_agent_health_checks_total", "Health checks of service targets",
                   passed ? "result=\"pass\"" : "result=\"fail\"");
}

constexpr size_t kMaxStatusLine = 1024;

}  // namespace

bool HealthState::Record(bool passed) {
  if (passed == healthy_) {
    streak_ = 0;
    return false;
  }
  ++streak_;
  if (streak_ < (healthy_ ? unhealthy_threshold_ : healthy_threshold_)) return false;
  healthy_ = passed;
  streak_ = 0;
  return true;
}

// One check's connection. Its handle is closed by AbortProbe (the checker's, or on Stop) and
// the struct freed in the close callback; callbacks that arrive after the abort (connect or
// write cancelled) see `owner == nullptr` and do nothing.
struct HealthChecker::Probe {
  HealthChecker* owner;
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_write_t write;
  std::string response;
};

HealthChecker::HealthChecker(uv_loop_t* loop, HealthCheckConfig config, HostPort target,
                             std::string host_header, OnChange on_change)
    : loop_(loop),
      config_(std::move(config)),
      target_(std::move(target)),
      request_(StrCat("GET ", config_.path, " HTTP/1.1\r\nHost: ", host_header,
                      "\r\nUser-Agent: rdv-agent-health-check\r\nAccept: */*\r\n"
                      "Connection: close\r\n\r\n")),
      on_change_(std::move(on_change)),
      state_(config_.healthy_threshold, config_.unhealthy_threshold),
      interval_timer_(new uv_timer_t),
      timeout_timer_(new uv_timer_t),
      alive_(std::make_shared<HealthChecker*>(this)) {
  uv_timer_init(loop_, interval_timer_);
  uv_timer_init(loop_, timeout_timer_);
  interval_timer_->data = this;
  timeout_timer_->data = this;
}

HealthChecker::~HealthChecker() {
  // An impossible state: the owner destroys a checker whose handles are still open.
  if (!stopped_) spdlog::critical("HealthChecker destroyed without Stop()");
  assert(stopped_);
}

void HealthChecker::Start() {
  auto interval = static_cast<uint64_t>(absl::ToInt64Milliseconds(config_.interval));
  uv_timer_start(
      interval_timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<HealthChecker*>(t->data)->RunCheck();
      },
      0, interval);
}

void HealthChecker::Stop() {
  if (stopped_) return;
  stopped_ = true;
  ++generation_;
  alive_.reset();
  AbortProbe();
  for (uv_timer_t* timer : {interval_timer_, timeout_timer_}) {
    timer->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
}

void HealthChecker::RunCheck() {
  if (stopped_ || in_flight_) return;  // timeout < interval, so a check never overlaps the next
  in_flight_ = true;
  uint64_t generation = ++generation_;
  uv_timer_start(
      timeout_timer_,
      [](uv_timer_t* t) {
        auto* self = static_cast<HealthChecker*>(t->data);
        if (self) self->Complete(self->generation_, absl::DeadlineExceededError("timed out"));
      },
      static_cast<uint64_t>(absl::ToInt64Milliseconds(config_.timeout)), 0);

  // A DNS name is resolved for every check, so a moved target is followed.
  std::weak_ptr<HealthChecker*> checker = alive_;
  ResolveAsync(loop_, target_.host, target_.port, SOCK_STREAM,
               [checker, generation](absl::StatusOr<sockaddr_storage> address) {
                 std::shared_ptr<HealthChecker*> self = checker.lock();
                 if (self == nullptr || (*self)->generation_ != generation) return;
                 if (!address.ok()) {
                   (*self)->Complete(generation, address.status());
                   return;
                 }
                 (*self)->Connect(*address);
               });
}

void HealthChecker::Connect(const sockaddr_storage& address) {
  auto* probe = new Probe{this, {}, {}, {}, {}};
  probe_ = probe;
  uv_tcp_init(loop_, &probe->tcp);
  probe->tcp.data = probe;
  probe->connect.data = probe;
  int rc = uv_tcp_connect(&probe->connect, &probe->tcp, reinterpret_cast<const sockaddr*>(&address),
                          [](uv_connect_t* req, int status) {
                            auto* probe = static_cast<Probe*>(req->data);
                            if (probe->owner) probe->owner->OnConnected(status);
                          });
  if (rc != 0) OnConnected(rc);
}

void HealthChecker::OnConnected(int status) {
  std::string where = StrCat("connect ", FormatHostPort(target_));
  if (status != 0) {
    Complete(generation_, absl::UnavailableError(StrCat(where, ": ", UvError(status))));
    return;
  }
  if (config_.kind == HealthCheckConfig::Kind::kTcp) {
    Complete(generation_, absl::OkStatus());
    return;
  }
  Probe* probe = probe_;
  uv_buf_t buf =
      uv_buf_init(const_cast<char*>(request_.data()), static_cast<unsigned int>(request_.size()));
  probe->write.data = probe;
  uv_write(&probe->write, reinterpret_cast<uv_stream_t*>(&probe->tcp), &buf, 1,
           [](uv_write_t* req, int status) {
             auto* probe = static_cast<Probe*>(req->data);
             if (probe->owner && status != 0) {
               probe->owner->Complete(probe->owner->generation_,
                                      absl::UnavailableError(StrCat("send: ", UvError(status))));
             }
           });
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&probe->tcp),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        static thread_local char storage[4096];
        *buf = uv_buf_init(storage, sizeof(storage));
      },
      [](uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
        auto* probe = static_cast<Probe*>(stream->data);
        if (probe->owner) probe->owner->OnRead(nread, buf);
      });
}

void HealthChecker::OnRead(ssize_t nread, const uv_buf_t* buf) {
  if (nread < 0) {
    Complete(generation_,
             absl::UnavailableError(nread == UV_EOF
                                        ? "closed before answering"
                                        : StrCat("read: ", UvError(static_cast<int>(nread)))));
    return;
  }
  std::string& response = probe_->response;
  response.append(buf->base, static_cast<size_t>(nread));
  size_t end = response.find("\r\n");
  if (end == std::string::npos) {
    if (response.size() > kMaxStatusLine) {
      Complete(generation_, absl::InvalidArgumentError("no HTTP status line"));
    }
    return;
  }
  // "HTTP/1.1 200 OK"
  std::string_view line(response.data(), end);
  int code = 0;
  if (line.size() >= 12 && line.substr(0, 5) == "HTTP/" && line[8] == ' ') {
    for (char c : line.substr(9, 3)) code = c >= '0' && c <= '9' ? code * 10 + (c - '0') : -1000;
  }
  if (code < 100) {
    Complete(generation_, absl::InvalidArgumentError("no HTTP status line"));
    return;
  }
  bool passed = config_.expect_status != 0 ? code == static_cast<int>(config_.expect_status)
                                           : code >= 200 && code < 400;
  Complete(generation_, passed ? absl::OkStatus()
                               : absl::FailedPreconditionError(
                                     StrCat("GET ", config_.path, " answered ", code)));
}

void HealthChecker::AbortProbe() {
  if (probe_ == nullptr) return;
  Probe* probe = probe_;
  probe_ = nullptr;
  probe->owner = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&probe->tcp),
           [](uv_handle_t* h) { delete static_cast<Probe*>(h->data); });
}

void HealthChecker::Complete(uint64_t generation, const absl::Status& status) {
  if (stopped_ || !in_flight_ || generation != generation_) return;
  in_flight_ = false;
  ++generation_;  // late callbacks of this check are ignored
  uv_timer_stop(timeout_timer_);
  AbortProbe();
  ++checks_;
  bool passed = status.ok();
  Checks(passed).Inc();
  detail_ = passed ? "ok" : std::string(status.message());
  if (!passed) spdlog::debug("health check of {} failed: {}", FormatHostPort(target_), detail_);
  if (state_.Record(passed)) on_change_(state_.healthy(), detail_);
}

}  // namespace rdv
