// A process's local admin HTTP server (the relay's and the agent's `admin` listener): GET only,
// one answer per connection.
//
// 1. a connection's bytes accumulate until the request head ends (at most kMaxAdminHead bytes);
//    the request line is checked as it arrives, so garbage is refused at once with 400 and
//    rdv_protocol_errors_total{listener="admin"}
// 2. the router answers the path (query stripped); no answer is 404, a method other than GET 405
// 3. the answer goes out with Connection: close, then the write side shuts; a connection gets
//    kAdminTimeoutMs in all, so idle or slow clients cannot pile up
#ifndef RDV_COMMON_ADMIN_HTTP_H_
#define RDV_COMMON_ADMIN_HTTP_H_

#include <uv.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/loop_tasks.h"
#include "common/tcp_connection.h"
#include "common/tcp_listener.h"

namespace rdv {

inline constexpr size_t kMaxAdminHead = 8192;
inline constexpr uint64_t kAdminTimeoutMs = 10000;

struct AdminResponse {
  int code = 200;
  std::string content_type = "text/plain";
  std::string body;
};

// Answers a GET of `path` (without the query); std::nullopt = 404.
using AdminRouter = std::function<std::optional<AdminResponse>(std::string_view path)>;

// GET /metrics: the Prometheus text of Metrics::Global().
AdminResponse MetricsResponse();

struct AdminRequest {
  std::string method;
  std::string path;  // the target without its query
};

// Parses what arrived of a request head: the request if it is complete, std::nullopt while more
// bytes are needed, InvalidArgumentError as soon as the bytes cannot be an HTTP/1.x request.
absl::StatusOr<std::optional<AdminRequest>> ParseAdminRequest(std::string_view head);

// One connection. `on_finished` runs once when it is done (answered and closed by the peer, timed
// out, failed); the owner destroys the session after that, never from inside the call.
class AdminHttpSession : public TcpConnection::Handler {
 public:
  AdminHttpSession(uv_loop_t* loop, std::unique_ptr<TcpConnection> client, AdminRouter router,
                   std::function<void(AdminHttpSession&)> on_finished);
  ~AdminHttpSession() override;
  void Start();

  // TcpConnection::Handler
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status&) override { Finish(); }

 private:
  void Respond(int code, std::string_view content_type, std::string_view body);
  void Finish();

  std::unique_ptr<TcpConnection> client_;
  AdminRouter router_;
  std::function<void(AdminHttpSession&)> on_finished_;
  std::string head_;
  bool responded_ = false;
  bool finished_ = false;
  uv_timer_t* timer_;  // freed in its close callback
};

// A listener and its sessions, for a process without session bookkeeping of its own (the agent).
class AdminServer {
 public:
  // Binds `host:port` (port 0: any free port; address() tells which).
  static absl::StatusOr<std::unique_ptr<AdminServer>> Create(uv_loop_t* loop, LoopTasks& tasks,
                                                             const std::string& host, uint16_t port,
                                                             AdminRouter router);
  ~AdminServer();
  // Closes the listener and every open session.
  void Close();
  const std::string& address() const { return listener_->address(); }

 private:
  AdminServer(LoopTasks& tasks, AdminRouter router);
  void Accept(uv_stream_t* server);

  LoopTasks& tasks_;
  AdminRouter router_;
  std::unique_ptr<TcpListener> listener_;
  absl::flat_hash_map<AdminHttpSession*, std::unique_ptr<AdminHttpSession>> sessions_;
  std::shared_ptr<AdminServer*> alive_;  // deferred erasures hold a weak_ptr to this token
};

}  // namespace rdv

#endif  // RDV_COMMON_ADMIN_HTTP_H_
