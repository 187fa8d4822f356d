#include "agent/smtp_opener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "common/link_test_support.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using link_test::LinkPair;
using link_test::TestLinkHandler;
using link_test::TestStream;
using ::testing::HasSubstr;

// The opener between a held stream of a LinkPair and a scripted mail server: the test is the
// server, on the accepted end of a real loopback connection, and plays its replies by hand.
class SmtpOpenerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(listen_fd_, 4), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    sockaddr_storage target{};
    std::memcpy(&target, &addr, sizeof(addr));

    std::unique_ptr<TcpConnection> connection;
    bool connected = false;
    TcpConnection::ConnectWithin(&loop_, target, 5000,
                                 [&](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
                                   ASSERT_TRUE(tcp.ok()) << tcp.status();
                                   connection = std::move(*tcp);
                                   connected = true;
                                 });
    RunUntil([&] { return connected; });
    ASSERT_NE(connection, nullptr);
    server_fd_ = ::accept(listen_fd_, nullptr, nullptr);
    ASSERT_GE(server_fd_, 0);
    ::fcntl(server_fd_, F_SETFL, ::fcntl(server_fd_, F_GETFL) | O_NONBLOCK);

    pair_.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
    link::Open open = link_test::OpenFor("orang.com");
    open.mutable_service()->set_kind(link::SMTP);
    open.set_entrypoint("smtp");
    open.mutable_smtp()->set_helo("EHLO client.test");
    open.mutable_smtp()->set_mail("MAIL FROM:<alice@client.test> SIZE=100");
    open.mutable_smtp()->set_rcpt("RCPT TO:<bob@orang.com>");
    relay_stream_ = pair_.OpenFromRelay(open);
    ASSERT_NE(relay_stream_, nullptr);
    pair_.Pump();
    ASSERT_EQ(pair_.agent_handler.held.size(), 1u);
    Stream* stream = pair_.agent().FindStream(pair_.agent_handler.held[0]);
    ASSERT_NE(stream, nullptr);
    opener_ = std::make_unique<SmtpOpener>(
        std::move(connection), *stream, open.smtp(),
        [this](SmtpOpener& opener, std::unique_ptr<TcpConnection> connection) {
          ++done_calls_;
          if (connection == nullptr) return;
          handed_over_ = connection->TakeUnread();
          connection->Close();
          // As the agent does: accept the stream now that the server is at the MAIL reply.
          if (opener.stream() != nullptr) {
            agent_end_.stream = opener.stream();
            opener.stream()->Accept(agent_end_);
          }
        });
    opener_->Start();
  }

  void TearDown() override {
    opener_.reset();
    if (server_fd_ >= 0) ::close(server_fd_);
    ::close(listen_fd_);
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  // Runs the loop (without blocking) until `done`; loopback bytes are ready to read as soon as
  // their write returned, so a bounded number of passes suffices.
  template <typename Predicate>
  void RunUntil(Predicate done) {
    for (int i = 0; i < 10000 && !done(); ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    ASSERT_TRUE(done()) << "the condition never came true";
  }
  void ServerSays(std::string_view bytes) {
    ASSERT_EQ(::write(server_fd_, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    uv_run(&loop_, UV_RUN_NOWAIT);
    pair_.Pump();
  }
  // What the server has received so far (everything since the last call).
  std::string ServerHeard() {
    std::string heard;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(server_fd_, buf, sizeof(buf))) > 0)
      heard.append(buf, static_cast<size_t>(n));
    return heard;
  }
  // Reads until the server has heard `lines` lines (CRLF-terminated).
  std::string ServerHeardLines(int lines) {
    std::string heard;
    RunUntil([&] {
      heard += ServerHeard();
      int count = 0;
      for (size_t at = heard.find("\r\n"); at != std::string::npos;
           at = heard.find("\r\n", at + 2)) {
        ++count;
      }
      return count >= lines;
    });
    return heard;
  }
  bool ServerSeesEof() {
    char c;
    return ::read(server_fd_, &c, 1) == 0;
  }

  uv_loop_t loop_;
  int listen_fd_ = -1;
  int server_fd_ = -1;
  LinkPair pair_;
  TestStream* relay_stream_ = nullptr;
  TestStream agent_end_;
  std::unique_ptr<SmtpOpener> opener_;
  int done_calls_ = 0;
  std::string handed_over_;
};

TEST_F(SmtpOpenerTest, PipeliningServerGetsMailAndRcptInOneWriteAndTheRepliesGoOn) {
  ServerSays("220 mx.orang.com ESMTP\r\n");
  EXPECT_EQ(ServerHeardLines(1), "EHLO client.test\r\n");
  ServerSays("250-mx.orang.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
  EXPECT_EQ(ServerHeardLines(2),
            "MAIL FROM:<alice@client.test> SIZE=100\r\nRCPT TO:<bob@orang.com>\r\n");
  EXPECT_EQ(done_calls_, 0);
  ServerSays("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  RunUntil([&] { return done_calls_ == 1; });
  // Greeting and EHLO reply stay with the agent; the MAIL reply onwards is the relay's.
  EXPECT_EQ(handed_over_, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  pair_.Pump();
  EXPECT_TRUE(relay_stream_->accepted);
  EXPECT_FALSE(relay_stream_->closed.has_value());
}

TEST_F(SmtpOpenerTest, ServerWithoutPipeliningGetsRcptAfterTheMailReply) {
  ServerSays("220-mx.orang.com first line\r\n");
  ServerSays("220 second line\r\n");  // a multi-line greeting, split across reads
  EXPECT_EQ(ServerHeardLines(1), "EHLO client.test\r\n");
  ServerSays("250 mx.orang.com\r\n");
  EXPECT_EQ(ServerHeardLines(1), "MAIL FROM:<alice@client.test> SIZE=100\r\n");
  ServerSays("250 2.1.0 Ok\r\n");
  RunUntil([&] { return done_calls_ == 1; });
  EXPECT_EQ(ServerHeardLines(1), "RCPT TO:<bob@orang.com>\r\n");
  EXPECT_EQ(handed_over_, "250 2.1.0 Ok\r\n");
}

TEST_F(SmtpOpenerTest, RefusedSenderIsHandedOverForTheRelayToPassOn) {
  ServerSays("220 mx\r\n");
  ServerHeardLines(1);
  ServerSays("250-mx\r\n250 PIPELINING\r\n");
  ServerHeardLines(2);
  ServerSays("553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n");
  RunUntil([&] { return done_calls_ == 1; });
  EXPECT_EQ(handed_over_, "553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n");
}

TEST_F(SmtpOpenerTest, GreetingOtherThan220RefusesTheStreamWithTheServersWords) {
  ServerSays("554 5.3.2 mx.orang.com no service\r\n");
  RunUntil([&] { return done_calls_ == 1; });
  pair_.Pump();
  ASSERT_TRUE(relay_stream_->closed.has_value());
  EXPECT_THAT(std::string(relay_stream_->closed->message()),
              HasSubstr("554 5.3.2 mx.orang.com no service"));
  EXPECT_EQ(pair_.relay().FindStream(relay_stream_->id), nullptr);
  EXPECT_TRUE(ServerSeesEof());
}

TEST_F(SmtpOpenerTest, MalformedReplyRefuses) {
  ServerSays("220 mx\r\n");
  ServerHeardLines(1);
  ServerSays("this is not smtp\r\n");
  RunUntil([&] { return done_calls_ == 1; });
  pair_.Pump();
  ASSERT_TRUE(relay_stream_->closed.has_value());
  EXPECT_THAT(std::string(relay_stream_->closed->message()), HasSubstr("malformed reply"));
  EXPECT_TRUE(ServerSeesEof());
}

TEST_F(SmtpOpenerTest, RefusedEhloRefusesWithTheServersWords) {
  ServerSays("220 mx\r\n");
  ServerHeardLines(1);
  ServerSays("550 5.7.1 client.test is not welcome\r\n");
  RunUntil([&] { return done_calls_ == 1; });
  pair_.Pump();
  ASSERT_TRUE(relay_stream_->closed.has_value());
  EXPECT_THAT(std::string(relay_stream_->closed->message()),
              HasSubstr("answer to EHLO: \"550 5.7.1 client.test is not welcome\""));
  EXPECT_TRUE(ServerSeesEof());
}

TEST_F(SmtpOpenerTest, ServerClosingBeforeTheGreetingRefuses) {
  ::shutdown(server_fd_, SHUT_WR);
  RunUntil([&] { return done_calls_ == 1; });
  pair_.Pump();
  ASSERT_TRUE(relay_stream_->closed.has_value());
  EXPECT_THAT(std::string(relay_stream_->closed->message()), HasSubstr("closed the connection"));
  EXPECT_TRUE(handed_over_.empty());
}

TEST_F(SmtpOpenerTest, RelayGivingUpClosesTheServerConnection) {
  ServerSays("220 mx\r\n");
  ServerHeardLines(1);
  relay_stream_->stream->Reset("smtp client gone");
  pair_.Pump();
  RunUntil([&] { return done_calls_ == 1; });
  EXPECT_TRUE(handed_over_.empty());
  uv_run(&loop_, UV_RUN_NOWAIT);  // the close reaches the kernel
  EXPECT_TRUE(ServerSeesEof());
}

}  // namespace
}  // namespace rdv
