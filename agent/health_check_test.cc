#include "agent/health_check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

TEST(HealthStateTest, ThresholdsCountConsecutiveResults) {
  HealthState state(/*healthy_threshold=*/2, /*unhealthy_threshold=*/3);
  EXPECT_TRUE(state.healthy());  // a target starts healthy
  EXPECT_FALSE(state.Record(false));
  EXPECT_FALSE(state.Record(false));
  EXPECT_FALSE(state.Record(true));  // a pass breaks the failure streak
  EXPECT_FALSE(state.Record(false));
  EXPECT_FALSE(state.Record(false));
  EXPECT_TRUE(state.Record(false));
  EXPECT_FALSE(state.healthy());
  EXPECT_FALSE(state.Record(false));  // staying unhealthy is no news
  EXPECT_FALSE(state.Record(true));
  EXPECT_FALSE(state.Record(false));
  EXPECT_FALSE(state.Record(true));
  EXPECT_TRUE(state.Record(true));
  EXPECT_TRUE(state.healthy());
}

// A listening socket on 127.0.0.1:0. Connects succeed through the backlog without accept();
// with `answer` set, a thread accepts and answers every request with it.
class Listener {
 public:
  explicit Listener(std::string answer = "") : answer_(std::move(answer)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(fd_, 64), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (!answer_.empty()) {
      timeval tv{0, 50 * 1000};
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      thread_ = std::thread([this] { Serve(); });
    }
  }
  ~Listener() { Close(); }
  void Close() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  HostPort target() const { return HostPort{"127.0.0.1", port_}; }
  const std::vector<std::string>& requests() const { return requests_; }

 private:
  void Serve() {
    while (!stop_) {
      int conn = ::accept(fd_, nullptr, nullptr);
      if (conn < 0) continue;
      std::string request;
      char buf[1024];
      while (request.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = ::read(conn, buf, sizeof(buf));
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      if (requests_.size() < 100) requests_.push_back(request);
      (void)!::write(conn, answer_.data(), answer_.size());
      ::close(conn);
    }
  }

  std::string answer_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::string> requests_;  // read by the test after Close()
};

// A port nothing listens on (bound once, then closed).
HostPort ClosedPort() {
  Listener listener;
  HostPort target = listener.target();
  listener.Close();
  return target;
}

class HealthCheckerTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }
  void TearDown() override {
    // Clean teardown: once the checker stopped, the loop runs dry and closes.
    if (checker_) checker_->Stop();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  void Make(HealthCheckConfig config, HostPort target) {
    checker_ = std::make_unique<HealthChecker>(&loop_, std::move(config), std::move(target),
                                               "www.orang.com",
                                               [this](bool healthy, const std::string& detail) {
                                                 changes_.push_back({healthy, detail});
                                               });
    checker_->Start();
  }

  // Runs the loop until `done` or 5 s pass.
  template <typename Predicate>
  bool RunUntil(Predicate done) {
    uv_timer_t deadline;
    uv_timer_init(&loop_, &deadline);
    bool expired = false;
    deadline.data = &expired;
    uv_timer_start(
        &deadline, [](uv_timer_t* t) { *static_cast<bool*>(t->data) = true; }, 5000, 0);
    while (!done() && !expired) uv_run(&loop_, UV_RUN_ONCE);
    uv_close(reinterpret_cast<uv_handle_t*>(&deadline), nullptr);
    uv_run(&loop_, UV_RUN_NOWAIT);  // the close completes before `deadline` goes out of scope
    return done();
  }

  static HealthCheckConfig Fast(HealthCheckConfig::Kind kind) {
    HealthCheckConfig config;
    config.kind = kind;
    config.interval = absl::Milliseconds(30);
    config.timeout = absl::Milliseconds(20);
    return config;
  }

  struct Change {
    bool healthy;
    std::string detail;
  };
  uv_loop_t loop_;
  std::unique_ptr<HealthChecker> checker_;
  std::vector<Change> changes_;
};

TEST_F(HealthCheckerTest, TcpListenerStaysHealthy) {
  Listener listener;
  Make(Fast(HealthCheckConfig::Kind::kTcp), listener.target());
  ASSERT_TRUE(RunUntil([&] { return checker_->checks() >= 4; }));
  EXPECT_TRUE(checker_->healthy());
  EXPECT_EQ(checker_->detail(), "ok");
  EXPECT_TRUE(changes_.empty());
}

TEST_F(HealthCheckerTest, ClosedPortTurnsUnhealthyAfterTheThresholdThenRecovers) {
  HostPort target = ClosedPort();
  Make(Fast(HealthCheckConfig::Kind::kTcp), target);
  ASSERT_TRUE(RunUntil([&] { return !changes_.empty(); }));
  EXPECT_EQ(checker_->checks(), 2u);  // unhealthy_threshold
  EXPECT_FALSE(changes_[0].healthy);
  EXPECT_THAT(changes_[0].detail, HasSubstr("connection refused"));
  EXPECT_THAT(changes_[0].detail, HasSubstr(FormatHostPort(target)));
  ASSERT_TRUE(RunUntil([&] { return checker_->checks() >= 5; }));
  EXPECT_EQ(changes_.size(), 1u);  // reported once

  // Something listens on the port again (retry: another test may have taken it meanwhile).
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(target.port);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    GTEST_SKIP() << "port " << target.port << " was taken meanwhile";
  }
  ASSERT_EQ(::listen(fd, 64), 0);
  ASSERT_TRUE(RunUntil([&] { return changes_.size() == 2; }));
  EXPECT_TRUE(changes_[1].healthy);  // healthy_threshold 1
  EXPECT_EQ(changes_[1].detail, "ok");
  ::close(fd);
}

TEST_F(HealthCheckerTest, HttpStatusDecides) {
  Listener ok("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
  HealthCheckConfig config = Fast(HealthCheckConfig::Kind::kHttp);
  config.path = "/healthz";
  Make(config, ok.target());
  ASSERT_TRUE(RunUntil([&] { return checker_->checks() >= 3; }));
  EXPECT_TRUE(checker_->healthy());
  EXPECT_TRUE(changes_.empty());
  checker_->Stop();
  ok.Close();
  ASSERT_FALSE(ok.requests().empty());
  EXPECT_THAT(ok.requests()[0], HasSubstr("GET /healthz HTTP/1.1\r\n"));
  EXPECT_THAT(ok.requests()[0], HasSubstr("\r\nHost: www.orang.com\r\n"));
}

TEST_F(HealthCheckerTest, HttpWrongStatusIsAFailure) {
  Listener failing("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
  Make(Fast(HealthCheckConfig::Kind::kHttp), failing.target());
  ASSERT_TRUE(RunUntil([&] { return !changes_.empty(); }));
  EXPECT_FALSE(changes_[0].healthy);
  EXPECT_EQ(changes_[0].detail, "GET / answered 503");
}

TEST_F(HealthCheckerTest, HttpExpectStatusIsExact) {
  Listener redirect("HTTP/1.0 302 Found\r\n\r\n");
  HealthCheckConfig config = Fast(HealthCheckConfig::Kind::kHttp);
  config.expect_status = 200;
  Make(config, redirect.target());
  ASSERT_TRUE(RunUntil([&] { return !changes_.empty(); }));
  EXPECT_EQ(changes_[0].detail, "GET / answered 302");
}

TEST_F(HealthCheckerTest, SilentTargetTimesOut) {
  Listener silent;  // accepts through the backlog, never answers
  Make(Fast(HealthCheckConfig::Kind::kHttp), silent.target());
  ASSERT_TRUE(RunUntil([&] { return !changes_.empty(); }));
  EXPECT_FALSE(changes_[0].healthy);
  EXPECT_EQ(changes_[0].detail, "timed out");
}

TEST_F(HealthCheckerTest, StopCancelsTheCheckInFlight) {
  Listener silent;
  Make(Fast(HealthCheckConfig::Kind::kHttp), silent.target());
  uv_run(&loop_, UV_RUN_NOWAIT);  // the first check is connecting or waiting for an answer
  checker_->Stop();               // TearDown proves the loop then runs dry
  EXPECT_TRUE(changes_.empty());
}

}  // namespace
}  // namespace rdv
