#include "common/tcp_connection.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <memory>

#include "common/tcp_listener.h"

namespace rdv {
namespace {

int IntOption(int fd, int level, int name) {
  int value = -1;
  socklen_t length = sizeof(value);
  EXPECT_EQ(getsockopt(fd, level, name, &value, &length), 0);
  return value;
}

TEST(TcpConnectionTest, KeepAliveSettingsReachTheSocket) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::unique_ptr<TcpConnection> accepted;
  auto listener = TcpListener::Create(&loop, "127.0.0.1", 0, [&](uv_stream_t* server) {
    auto connection = TcpConnection::Accept(server);
    ASSERT_TRUE(connection.ok()) << connection.status();
    accepted = *std::move(connection);
  });
  ASSERT_TRUE(listener.ok()) << listener.status();
  absl::StatusOr<sockaddr_storage> address = ResolveNumeric("127.0.0.1", (*listener)->port());
  ASSERT_TRUE(address.ok());
  std::unique_ptr<TcpConnection> dialled;
  TcpConnection::Connect(&loop, reinterpret_cast<const sockaddr*>(&*address),
                         [&](absl::StatusOr<std::unique_ptr<TcpConnection>> connection) {
                           ASSERT_TRUE(connection.ok()) << connection.status();
                           dialled = *std::move(connection);
                         });
  while (dialled == nullptr || accepted == nullptr) uv_run(&loop, UV_RUN_ONCE);
  // The dialled end knows its peer from the connect, the accepted end from the kernel.
  EXPECT_EQ(dialled->peer_address(), (*listener)->address());

  ASSERT_TRUE(dialled->SetKeepAlive(absl::Seconds(15), absl::Seconds(5), 3).ok());
  absl::StatusOr<int> fd = dialled->DetachFd();  // the options stay with the socket
  ASSERT_TRUE(fd.ok()) << fd.status();
  EXPECT_EQ(IntOption(*fd, SOL_SOCKET, SO_KEEPALIVE), 1);
  EXPECT_EQ(IntOption(*fd, IPPROTO_TCP, TCP_KEEPIDLE), 15);
  EXPECT_EQ(IntOption(*fd, IPPROTO_TCP, TCP_KEEPINTVL), 5);
  EXPECT_EQ(IntOption(*fd, IPPROTO_TCP, TCP_KEEPCNT), 3);
  ::close(*fd);
  EXPECT_FALSE(dialled->SetKeepAlive(absl::Seconds(1), absl::Seconds(1), 1).ok())
      << "a detached connection has no socket";

  accepted->Close();
  (*listener)->Close();
  uv_run(&loop, UV_RUN_DEFAULT);
  EXPECT_EQ(uv_loop_close(&loop), 0);
}

}  // namespace
}  // namespace rdv
