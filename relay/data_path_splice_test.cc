// DataPathSplice on its own (relay/data_path_splice.h): two loopback connections accepted on the
// test's loop, joined directly, with plain TCP clients at their far ends. The relay's accept,
// request and pairing steps are in tunnel_data_path_test.cc.
#include "relay/data_path_splice.h"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/data_path.h"
#include "common/link_test_support.h"
#include "common/tcp_listener.h"
#include "gtest/gtest.h"
#include "relay/data_path_test_support.h"

namespace rdv {
namespace {

using data_path_test::DataPathClient;
using link_test::PatternBytes;
using link_test::SameBytes;

constexpr size_t kOkSize = kDataPathOk.size();

class DataPathSpliceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    absl::StatusOr<std::unique_ptr<TcpListener>> listener =
        TcpListener::Create(&loop_, "127.0.0.1", 0, [this](uv_stream_t* server) {
          absl::StatusOr<std::unique_ptr<TcpConnection>> accepted = TcpConnection::Accept(server);
          if (accepted.ok()) accepted_.push_back(*std::move(accepted));
        });
    ASSERT_TRUE(listener.ok()) << listener.status();
    listener_ = *std::move(listener);
  }

  void TearDown() override {
    splice_.reset();
    for (auto& connection : accepted_) {
      if (connection) connection->Close();
    }
    a_.Close();
    b_.Close();
    listener_->Close();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  bool RunUntil(const std::function<bool()>& done) {
    return data_path_test::RunLoopUntil(&loop_, done);
  }

  // Connects a_ and b_ and splices the relay's ends of the two, a_'s first.
  void Splice(std::string a_early = "", std::string b_early = "") {
    a_.Dial(&loop_, listener_->port());
    ASSERT_TRUE(RunUntil([&] { return accepted_.size() == 1; }));
    b_.Dial(&loop_, listener_->port());
    ASSERT_TRUE(RunUntil([&] { return accepted_.size() == 2; }));
    splice_ = std::make_unique<DataPathSplice>(
        DataPathSplice::End{std::move(accepted_[0]), std::move(a_early)},
        DataPathSplice::End{std::move(accepted_[1]), std::move(b_early)}, "test", "",
        [this](const absl::Status& status) {
          done_ = true;
          status_ = status;
        });
    splice_->Start();
  }

  uv_loop_t loop_;
  std::unique_ptr<TcpListener> listener_;
  std::vector<std::unique_ptr<TcpConnection>> accepted_;
  DataPathClient a_;
  DataPathClient b_;
  std::unique_ptr<DataPathSplice> splice_;
  bool done_ = false;
  absl::Status status_;
};

TEST_F(DataPathSpliceTest, EarlyBytesFollowTheOk) {
  Splice("early from a", "early from b");
  ASSERT_TRUE(RunUntil(
      [&] { return a_.received.size() == kOkSize + 12 && b_.received.size() == kOkSize + 12; }));
  EXPECT_EQ(a_.received, "OK\r\nearly from b");
  EXPECT_EQ(b_.received, "OK\r\nearly from a");
}

TEST_F(DataPathSpliceTest, SlowReaderPausesTheOtherSideAndLosesNothing) {
  b_.PauseReading();
  Splice();
  const std::string payload = PatternBytes(16 << 20, 7);
  a_.Send(payload);
  // b reads nothing: once more than kDataPathHighWatermark waits for it, a is not read.
  ASSERT_TRUE(RunUntil([&] { return splice_->pauses() > 0; }));
  EXPECT_LT(splice_->bytes_forwarded(), payload.size());
  b_.ResumeReading();
  ASSERT_TRUE(RunUntil([&] { return b_.received.size() >= kOkSize + payload.size(); }));
  EXPECT_TRUE(SameBytes(b_.received.substr(kOkSize), payload));
  a_.ShutdownWrite();
  b_.ShutdownWrite();
  ASSERT_TRUE(RunUntil([&] { return done_ && a_.eof && b_.eof; }));
  EXPECT_TRUE(status_.ok()) << status_;
  EXPECT_EQ(splice_->bytes_forwarded(), payload.size());
}

TEST_F(DataPathSpliceTest, AResetClosesBoth) {
  Splice();
  ASSERT_TRUE(RunUntil([&] { return a_.received.size() == kOkSize; }));
  a_.Reset();
  ASSERT_TRUE(RunUntil([&] { return done_ && (b_.eof || b_.error); }));
  EXPECT_FALSE(status_.ok());
}

}  // namespace
}  // namespace rdv
