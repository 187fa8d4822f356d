// One connection on the admin listener: GET /metrics (Prometheus text), GET /healthz.
// Anything else gets 404/405; garbage gets 400 and a counter. A connection gets one answer and
// at most kAdminTimeoutMs in all, so idle or slow clients cannot pile up.
#ifndef RDV_RELAY_ADMIN_SESSION_H_
#define RDV_RELAY_ADMIN_SESSION_H_

#include <memory>
#include <string>

#include "common/tcp_connection.h"
#include "relay/http_codec.h"
#include "relay/relay_worker.h"

namespace rdv {

class AdminSession : public RelaySession, public TcpConnection::Handler {
 public:
  AdminSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client);
  ~AdminSession() override;
  void Start();

  void OnRead(std::string_view data) override;
  void OnEof() override { Finish(); }
  void OnError(const absl::Status&) override { Finish(); }
  void OnDrained() override;

 private:
  void Respond(int code, std::string_view content_type, std::string_view body);
  void Finish();

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;
  HttpRequestFramer framer_;
  bool responded_ = false;
  bool finished_ = false;
  uv_timer_t* timer_;
};

}  // namespace rdv

#endif  // RDV_RELAY_ADMIN_SESSION_H_
