// A listening TCP socket on a libuv loop. IPv6 listeners are v6-only so that "0.0.0.0:p" and
// "[::]:p" can be bound side by side. With `reuse_port`, every worker loop binds its own socket to
// the same address (SO_REUSEPORT) and the kernel spreads new connections across them.
#ifndef RDV_COMMON_TCP_LISTENER_H_
#define RDV_COMMON_TCP_LISTENER_H_

#include <uv.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace rdv {

// Fails with a clear message when `host:port` is already bound by anyone. SO_REUSEPORT listeners
// check this first, so that a second relay started on the same port fails instead of silently
// sharing the port's connections with the first.
absl::Status CheckAddressFree(const std::string& host, uint16_t port);

class TcpListener {
 public:
  // Called for every pending connection; call TcpConnection::Accept(server) in it.
  using AcceptCallback = std::function<void(uv_stream_t* server)>;

  static absl::StatusOr<std::unique_ptr<TcpListener>> Create(uv_loop_t* loop,
                                                             const std::string& host, uint16_t port,
                                                             AcceptCallback on_accept,
                                                             bool reuse_port = false);
  ~TcpListener();
  void Close();
  uint16_t port() const { return port_; }
  const std::string& address() const { return address_; }  // "127.0.0.1:7000" / "[::]:7000"

 private:
  TcpListener() = default;
  uv_tcp_t* handle_ = nullptr;
  AcceptCallback on_accept_;
  uint16_t port_ = 0;
  std::string address_;
};

}  // namespace rdv

#endif  // RDV_COMMON_TCP_LISTENER_H_
