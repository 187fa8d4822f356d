#include "common/tcp_listener.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/str_cat.h"
#include "common/tcp_connection.h"

namespace rdv {

absl::Status CheckAddressFree(const std::string& host, uint16_t port) {
  absl::StatusOr<sockaddr_storage> address = ResolveNumeric(host, port);
  if (!address.ok()) return address.status();
  auto* sa = reinterpret_cast<const sockaddr*>(&*address);
  int fd = ::socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::UnavailableError(StrCat("socket: ", std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // TIME_WAIT is not "in use"
  if (sa->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  socklen_t len = sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  int rc = ::bind(fd, sa, len);
  int error = errno;
  ::close(fd);
  if (rc != 0) {
    return absl::UnavailableError(
        StrCat("cannot listen on ", FormatSockaddr(sa), ": ", std::strerror(error)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TcpListener>> TcpListener::Create(uv_loop_t* loop,
                                                                 const std::string& host,
                                                                 uint16_t port,
                                                                 AcceptCallback on_accept,
                                                                 bool reuse_port) {
  absl::StatusOr<sockaddr_storage> address = ResolveNumeric(host, port);
  if (!address.ok()) return address.status();
  std::unique_ptr<TcpListener> listener(new TcpListener);
  listener->on_accept_ = std::move(on_accept);
  listener->handle_ = new uv_tcp_t;
  uv_tcp_init(loop, listener->handle_);
  listener->handle_->data = listener.get();
  auto* sa = reinterpret_cast<const sockaddr*>(&*address);
  std::string where = FormatSockaddr(sa);
  int rc = 0;
  if (reuse_port) {
    // libuv 1.44 has no UV_TCP_REUSEPORT: make the socket here and hand it to libuv.
    int fd = ::socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0) {
      rc = -errno;
    } else {
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
      if (sa->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
      socklen_t len = sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
      if (::bind(fd, sa, len) != 0) {
        rc = -errno;
        ::close(fd);
      } else {
        rc = uv_tcp_open(listener->handle_, fd);
        if (rc != 0) ::close(fd);
      }
    }
  } else {
    unsigned flags = sa->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    rc = uv_tcp_bind(listener->handle_, sa, flags);
  }
  if (rc == 0) {
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(listener->handle_), 1024,
                   [](uv_stream_t* server, int status) {
                     auto* self = static_cast<TcpListener*>(server->data);
                     if (self == nullptr || status != 0) return;
                     self->on_accept_(server);
                   });
  }
  if (rc != 0) {
    listener->Close();
    return absl::UnavailableError(StrCat("cannot listen on ", where, ": ", UvError(rc)));
  }
  sockaddr_storage bound{};
  int len = sizeof(bound);
  uv_tcp_getsockname(listener->handle_, reinterpret_cast<sockaddr*>(&bound), &len);
  listener->address_ = FormatSockaddr(reinterpret_cast<sockaddr*>(&bound));
  listener->port_ = bound.ss_family == AF_INET
                        ? ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port)
                        : ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return listener;
}

TcpListener::~TcpListener() { Close(); }

void TcpListener::Close() {
  if (handle_ == nullptr) return;
  handle_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(handle_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
  handle_ = nullptr;
}

}  // namespace rdv
