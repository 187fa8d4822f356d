// DataPathSplice on its own (relay/data_path_splice.h): two loopback connections accepted on the
// test's loop, joined directly, with plain TCP clients at their far ends. Every test runs in
// both modes: kernel splice (no tap file) and user-space copy (a tap file, which must see every
// byte). The relay's accept, request and pairing steps are in tunnel_data_path_test.cc.
#include "relay/data_path_splice.h"

#include <stdlib.h>

#include <csignal>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "common/data_path.h"
#include "common/link_test_support.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/tcp_listener.h"
#include "gtest/gtest.h"
#include "relay/data_path_test_support.h"

namespace rdv {
namespace {

using data_path_test::DataPathClient;
using link_test::PatternBytes;
using link_test::SameBytes;

using data_path_test::BytesSpliced;
using data_path_test::kOkSize;
// Far more than a pipe, the user-space watermark and what loopback sockets buffer at first.
constexpr size_t kBigTransfer = 16 << 20;

enum class Mode { kSplice, kTap };

class DataPathSpliceTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    // As the relay process does (common/process_main.cc): a write or splice into a socket the
    // peer reset is then an EPIPE error, not a signal.
    std::signal(SIGPIPE, SIG_IGN);
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    if (GetParam() == Mode::kTap) {
      // A directory per test: the tap keeps each path it wrote open for the process's life.
      char dir_template[] = "/tmp/rdv_data_path_splice_test_XXXXXX";
      ASSERT_NE(mkdtemp(dir_template), nullptr);
      dir_ = dir_template;
      tap_path_ = dir_ + "/tap.bin";
    }
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
    if (listener_) listener_->Close();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
    if (!dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
    }
  }

  bool RunUntil(const std::function<bool()>& done) {
    return data_path_test::RunLoopUntil(&loop_, done);
  }

  // Connects a_ and b_ and splices the relay's ends of the two, a_'s first.
  void Splice(std::string a_early = "", std::string b_early = "", bool start = true) {
    a_.Dial(&loop_, listener_->port());
    ASSERT_TRUE(RunUntil([&] { return accepted_.size() == 1; }));
    b_.Dial(&loop_, listener_->port());
    ASSERT_TRUE(RunUntil([&] { return accepted_.size() == 2; }));
    splice_ = std::make_unique<DataPathSplice>(
        DataPathSplice::End{std::move(accepted_[0]), std::move(a_early)},
        DataPathSplice::End{std::move(accepted_[1]), std::move(b_early)}, "test", tap_path_,
        [this](const absl::Status& status) {
          done_ = true;
          status_ = status;
        });
    ASSERT_EQ(splice_->zero_copy(), GetParam() == Mode::kSplice);
    if (start) splice_->Start();
  }

  bool Over(const DataPathClient& client) { return client.eof || client.error; }

  uintmax_t TapSize() {
    std::error_code error;
    uintmax_t size = std::filesystem::file_size(tap_path_, error);
    return error ? 0 : size;
  }

  uv_loop_t loop_;
  std::string dir_;
  std::string tap_path_;  // "" in kSplice mode
  std::unique_ptr<TcpListener> listener_;
  std::vector<std::unique_ptr<TcpConnection>> accepted_;
  DataPathClient a_;
  DataPathClient b_;
  std::unique_ptr<DataPathSplice> splice_;
  bool done_ = false;
  absl::Status status_;
};

TEST_P(DataPathSpliceTest, EarlyBytesFollowTheOk) {
  Splice("early from a", "early from b");
  ASSERT_TRUE(RunUntil(
      [&] { return a_.received.size() == kOkSize + 12 && b_.received.size() == kOkSize + 12; }));
  EXPECT_EQ(a_.received, "OK\r\nearly from b");
  EXPECT_EQ(b_.received, "OK\r\nearly from a");
  EXPECT_EQ(splice_->bytes_forwarded(), 24u);
}

TEST_P(DataPathSpliceTest, SlowReaderPausesTheOtherSideAndLosesNothing) {
  b_.PauseReading();
  Splice();
  const std::string payload = PatternBytes(kBigTransfer, 7);
  a_.Send(payload);
  // b reads nothing: once the relay holds what it may for b, a is not read.
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

TEST_P(DataPathSpliceTest, SlowReadersBothWaysLoseNothing) {
  const uint64_t total_before = BytesSpliced();
  const uintmax_t tap_before = TapSize();
  a_.PauseReading();
  b_.PauseReading();
  Splice("a's early bytes", "b's early bytes");
  const std::string from_a = "a's early bytes" + PatternBytes(kBigTransfer, 11);
  const std::string from_b = "b's early bytes" + PatternBytes(kBigTransfer + 4097, 13);
  a_.Send(std::string_view(from_a).substr(15));
  b_.Send(std::string_view(from_b).substr(15));
  a_.ShutdownWrite();
  b_.ShutdownWrite();
  ASSERT_TRUE(RunUntil([&] { return splice_->pauses() > 0; }));
  EXPECT_LT(splice_->bytes_forwarded(), from_a.size() + from_b.size());
  EXPECT_FALSE(done_);
  a_.ResumeReading();
  b_.ResumeReading();
  ASSERT_TRUE(RunUntil([&] { return done_ && a_.eof && b_.eof; }));
  EXPECT_TRUE(status_.ok()) << status_;
  EXPECT_TRUE(SameBytes(a_.received, StrCat(kDataPathOk, from_b)));
  EXPECT_TRUE(SameBytes(b_.received, StrCat(kDataPathOk, from_a)));
  const size_t total = from_a.size() + from_b.size();
  EXPECT_EQ(splice_->bytes_forwarded(), total);
  EXPECT_EQ(BytesSpliced() - total_before, total);
  if (GetParam() == Mode::kTap) {
    EXPECT_EQ(TapSize() - tap_before, total);
  }
}

TEST_P(DataPathSpliceTest, AHalfCloseLetsTheOtherDirectionRunOn) {
  Splice();
  a_.Send("last words of a");
  a_.ShutdownWrite();
  ASSERT_TRUE(RunUntil([&] { return b_.eof; }));
  EXPECT_EQ(b_.received, "OK\r\nlast words of a");
  EXPECT_FALSE(done_);
  EXPECT_FALSE(Over(a_));
  const std::string reply = PatternBytes(3 << 20, 5);
  b_.Send(reply);
  ASSERT_TRUE(RunUntil([&] { return a_.received.size() >= kOkSize + reply.size(); }));
  EXPECT_TRUE(SameBytes(a_.received.substr(kOkSize), reply));
  EXPECT_FALSE(Over(a_));
  EXPECT_FALSE(done_);
  b_.ShutdownWrite();
  ASSERT_TRUE(RunUntil([&] { return done_ && a_.eof; }));
  EXPECT_TRUE(status_.ok()) << status_;
  EXPECT_EQ(splice_->bytes_forwarded(), 15 + reply.size());
}

TEST_P(DataPathSpliceTest, AResetClosesBoth) {
  Splice();
  ASSERT_TRUE(RunUntil([&] { return a_.received.size() == kOkSize; }));
  a_.Reset();
  ASSERT_TRUE(RunUntil([&] { return done_ && Over(b_); }));
  EXPECT_FALSE(status_.ok());
}

TEST_P(DataPathSpliceTest, AResetOfTheSlowReaderClosesBoth) {
  b_.PauseReading();
  Splice();
  a_.Send(PatternBytes(kBigTransfer, 3));
  ASSERT_TRUE(RunUntil([&] { return splice_->pauses() > 0; }));
  b_.Reset();
  ASSERT_TRUE(RunUntil([&] { return done_ && Over(a_); }));
  EXPECT_FALSE(status_.ok());
}

TEST_P(DataPathSpliceTest, ClosingMidTransferClosesBothWithoutReporting) {
  b_.PauseReading();
  Splice();
  a_.Send(PatternBytes(kBigTransfer, 9));
  ASSERT_TRUE(RunUntil([&] { return splice_->pauses() > 0; }));
  splice_->Close();  // relay shutdown
  ASSERT_TRUE(RunUntil([&] { return Over(a_); }));
  b_.ResumeReading();
  ASSERT_TRUE(RunUntil([&] { return Over(b_); }));
  EXPECT_FALSE(done_);
}

TEST_P(DataPathSpliceTest, ClosingBeforeStartClosesBoth) {
  Splice("early", "", /*start=*/false);
  splice_->Close();
  ASSERT_TRUE(RunUntil([&] { return Over(a_) && Over(b_); }));
  EXPECT_TRUE(a_.received.empty());
  EXPECT_TRUE(b_.received.empty());
  EXPECT_FALSE(done_);
}

INSTANTIATE_TEST_SUITE_P(, DataPathSpliceTest, ::testing::Values(Mode::kSplice, Mode::kTap),
                         [](const ::testing::TestParamInfo<Mode>& info) {
                           return info.param == Mode::kSplice ? "Splice" : "Tap";
                         });

}  // namespace
}  // namespace rdv
