#include "common/tcp_connection.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

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

// ---- WriteBatch ----

// A TcpConnection accepted from a plain blocking client socket, which reads what it writes.
class WriteBatchTest : public ::testing::Test, public TcpConnection::Handler {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    auto listener = TcpListener::Create(&loop_, "127.0.0.1", 0, [&](uv_stream_t* server) {
      auto connection = TcpConnection::Accept(server);
      ASSERT_TRUE(connection.ok()) << connection.status();
      writer_ = *std::move(connection);
    });
    ASSERT_TRUE(listener.ok()) << listener.status();
    listener_ = *std::move(listener);
    client_ = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(client_, 0);
    timeval timeout{5, 0};  // a test that waits for bytes that never come fails, not hangs
    setsockopt(client_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    absl::StatusOr<sockaddr_storage> address = ResolveNumeric("127.0.0.1", listener_->port());
    ASSERT_TRUE(address.ok());
    ASSERT_EQ(connect(client_, reinterpret_cast<const sockaddr*>(&*address), sizeof(sockaddr_in)),
              0);
    while (writer_ == nullptr) uv_run(&loop_, UV_RUN_ONCE);
    writer_->Start(*this);
  }
  void TearDown() override {
    if (writer_ != nullptr) writer_->Close();
    listener_->Close();
    ::close(client_);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // What the client has received, without waiting.
  std::string Available() {
    std::string got;
    char buffer[65536];
    ssize_t n;
    while ((n = recv(client_, buffer, sizeof(buffer), MSG_DONTWAIT)) > 0) got.append(buffer, n);
    return got;
  }
  // Exactly `size` bytes (waits for them).
  std::string Receive(size_t size) {
    std::string got(size, '\0');
    size_t filled = 0;
    while (filled < size) {
      ssize_t n = recv(client_, got.data() + filled, size - filled, 0);
      if (n <= 0) break;
      filled += static_cast<size_t>(n);
    }
    got.resize(filled);
    return got;
  }
  // Exactly `size` bytes, running the loop meanwhile (for writes the kernel could not take at
  // once); fewer when nothing arrives for 5 s.
  std::string ReceiveWhileRunning(size_t size) {
    std::string got;
    std::vector<char> buffer(1 << 20);
    while (got.size() < size) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      ssize_t n =
          recv(client_, buffer.data(), std::min(buffer.size(), size - got.size()), MSG_DONTWAIT);
      if (n > 0) {
        got.append(buffer.data(), static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || errno != EAGAIN) break;
      pollfd fds[2] = {{client_, POLLIN, 0}, {uv_backend_fd(&loop_), POLLIN, 0}};
      if (poll(fds, 2, 5000) == 0) break;
    }
    return got;
  }
  bool AtEof() {
    char byte;
    return recv(client_, &byte, 1, 0) == 0;
  }

  void OnRead(std::string_view) override {}
  void OnEof() override {}
  void OnError(const absl::Status& status) override { ADD_FAILURE() << status; }
  void OnDrained() override { ++drained_; }

  uv_loop_t loop_;
  std::unique_ptr<TcpListener> listener_;
  std::unique_ptr<TcpConnection> writer_;
  int client_ = -1;
  int drained_ = 0;
};

TEST_F(WriteBatchTest, WritesLeaveInOrderWhenTheBatchEnds) {
  const std::string stable = "first part, referenced|second part, referenced";
  std::string_view view(stable);
  {
    WriteBatch batch(view);
    writer_->Write(view.substr(0, 22));
    writer_->Write(std::string("[copied: not in the stable buffer]"));
    writer_->Write(view.substr(22));
    EXPECT_EQ(Available(), "") << "nothing goes out inside the batch";
    EXPECT_EQ(writer_->queued_bytes(), stable.size() + 34);
  }
  EXPECT_EQ(writer_->queued_bytes(), 0u);
  EXPECT_EQ(drained_, 1) << "the batch's end reports the drain, as a completed write would";
  EXPECT_EQ(Receive(stable.size() + 34),
            "first part, referenced[copied: not in the stable buffer]|second part, referenced");
}

TEST_F(WriteBatchTest, ManyPiecesAllArriveAndTheDrainIsReported) {
  std::string stable;
  for (int i = 0; i < 1000; ++i) stable += "piece " + std::to_string(i) + ";";
  {
    WriteBatch batch(stable);
    size_t offset = 0;
    for (int i = 0; i < 1000; ++i) {
      size_t length = stable.find(';', offset) + 1 - offset;
      writer_->Write(std::string_view(stable).substr(offset, length));
      offset += length;
    }
  }
  EXPECT_EQ(writer_->queued_bytes(), 0u);
  EXPECT_EQ(drained_, 1);
  EXPECT_EQ(Receive(stable.size()), stable);
}

TEST_F(WriteBatchTest, ShutdownWritesWhatTheBatchHoldsFirst) {
  {
    WriteBatch batch("");
    writer_->Write("before shutdown");
    writer_->Shutdown();
    writer_->Write("after shutdown: dropped");
  }
  uv_run(&loop_, UV_RUN_NOWAIT);  // the shutdown request
  EXPECT_EQ(Receive(15), "before shutdown");
  EXPECT_TRUE(AtEof());
}

TEST_F(WriteBatchTest, CloseInsideTheBatchWritesFirst) {
  {
    WriteBatch batch("");
    writer_->Write("said before close");
    writer_->Close();
  }
  EXPECT_EQ(Receive(17), "said before close");
  EXPECT_EQ(drained_, 0) << "a closed connection reports nothing";
}

TEST_F(WriteBatchTest, AnInnerBatchWritesTheOuterBatchsBytesFirst) {
  {
    WriteBatch outer("");
    writer_->Write("outer;");
    {
      WriteBatch inner("");
      writer_->Write("inner;");
      EXPECT_EQ(Available(), "outer;");
    }
    EXPECT_EQ(Receive(6), "inner;");
    writer_->Write("outer again");
    EXPECT_EQ(Available(), "");
  }
  EXPECT_EQ(Receive(11), "outer again");
}

TEST_F(WriteBatchTest, LentBytesLeaveIntactAfterTheBufferIsRefilled) {
  constexpr size_t kSize = 4 << 20;
  LendableBuffer buffer(kSize);
  char* first = buffer.Data();
  for (size_t i = 0; i < kSize; ++i) first[i] = static_cast<char>('a' + i % 26);
  const std::string lent(first, kSize);
  {
    std::string_view view(first, kSize);
    WriteBatch batch(view, buffer.Owner());
    writer_->Write(view.substr(0, kSize / 2));
    writer_->Write(std::string("[copied]"));
    writer_->Write(view.substr(kSize / 2));
  }
  ASSERT_GT(writer_->queued_bytes(), 0u) << "a client that reads nothing cannot take 4 MiB";
  char* second = buffer.Data();
  EXPECT_NE(second, first) << "memory a connection references is not refilled";
  EXPECT_EQ(LendableBuffer::HeldBytes(), kSize) << "the connection holds the first buffer";
  std::memset(second, 'x', kSize);
  {
    std::string_view view(second, kSize);
    WriteBatch batch(view, buffer.Owner());
    writer_->Write(view.substr(0, 100));  // queued behind the rest: small, so copied
    writer_->Write(view.substr(100, 64 << 10));
  }
  const std::string expected = lent.substr(0, kSize / 2) + "[copied]" + lent.substr(kSize / 2) +
                               std::string(100 + (64 << 10), 'x');
  const std::string got = ReceiveWhileRunning(expected.size());
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "bytes differ from offset "
                               << std::mismatch(got.begin(), got.end(), expected.begin()).first -
                                      got.begin();
  EXPECT_EQ(writer_->queued_bytes(), 0u);
  EXPECT_EQ(LendableBuffer::HeldBytes(), 0u) << "written bytes release their buffer";
}

TEST(LendableBufferTest, LendingStopsWhileTooMuchIsHeld) {
  LendableBuffer buffer(LendableBuffer::kMaxHeldBytes + 1);  // never touched: no pages
  const char* first = buffer.Data();
  std::shared_ptr<const void> held = buffer.Owner();
  ASSERT_NE(held, nullptr);
  const char* second = buffer.Data();
  EXPECT_NE(second, first);
  EXPECT_EQ(LendableBuffer::HeldBytes(), LendableBuffer::kMaxHeldBytes + 1);
  EXPECT_EQ(buffer.Owner(), nullptr) << "connections copy while too much is held";
  held.reset();
  EXPECT_EQ(LendableBuffer::HeldBytes(), 0u);
  EXPECT_NE(buffer.Owner(), nullptr);
  EXPECT_EQ(buffer.Data(), second) << "memory nobody references is refilled in place";
}

}  // namespace
}  // namespace rdv
