// Reads the PROXY protocol header a trusted load balancer sends first (relay config
// `proxy_protocol_from`), replaces the connection's peer address with the client it names, and
// passes the connection, with any bytes after the header, on to its entrypoint.
#ifndef RDV_RELAY_PROXY_HEADER_SESSION_H_
#define RDV_RELAY_PROXY_HEADER_SESSION_H_

#include <functional>
#include <memory>
#include <string>

#include "common/tcp_connection.h"
#include "relay/relay_worker.h"

namespace rdv {

class ProxyHeaderSession : public RelaySession, public TcpConnection::Handler {
 public:
  // `next` gets the connection (peer replaced, later bytes queued with Unread()).
  using Next = std::function<void(std::unique_ptr<TcpConnection>)>;
  ProxyHeaderSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client, Next next);
  ~ProxyHeaderSession() override;
  void Start();

  void OnRead(std::string_view data) override;
  void OnEof() override { Fail("closed before the PROXY header ended", "eof"); }
  void OnError(const absl::Status& status) override {
    Fail(std::string(status.message()), "error");
  }

 private:
  void Fail(std::string_view why, std::string_view reason);

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;
  Next next_;
  std::string buffer_;
  bool done_ = false;
  uv_timer_t* timer_;
};

}  // namespace rdv

#endif  // RDV_RELAY_PROXY_HEADER_SESSION_H_
