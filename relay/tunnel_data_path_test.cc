// Tunnel data paths at the relay (docs/protocol.md "Tunnel data path", step 3), driven in
// process: a real Relay (two worker loops, agent listener on 127.0.0.1:0, worker 0 on the
// test's loop) and plain TCP clients that present tokens of offers the test makes itself
// (OfferDataPath, as the tunnel bridge does once a tunnel is bridged; the bridge's part is in
// tunnel_bridge_test.cc). Connections land on either worker (SO_REUSEPORT), so tokens of offers
// held by the other worker cross loops.
#include "relay/tunnel_data_path.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/data_path.h"
#include "common/link_test_support.h"
#include "common/metrics.h"
#include "gtest/gtest.h"
#include "relay/data_path_test_support.h"
#include "relay/relay.h"
#include "relay/relay_config.h"

namespace rdv {
namespace {

using data_path_test::DataPathClient;
using link_test::PatternBytes;
using link_test::SameBytes;

using data_path_test::ActiveDataPaths;
using data_path_test::BytesSpliced;
using data_path_test::DataPathOffers;
using data_path_test::DataPaths;
using data_path_test::kOkSize;
uint64_t AgentHandshakeErrors() {
  return CounterOf("rdv_tls_handshake_errors_total", "TLS handshakes that failed",
                   "listener=\"agent\"")
      .value();
}

class TunnelDataPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    char dir_template[] = "/tmp/rdv_data_path_test_XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    tap_path_ = dir_ + "/tap.bin";
    std::string yaml = "relay_id: relay-t\nstate_dir: " + dir_ +
                       "\nworkers: 2\n"
                       "agent_listener: {listen: ['127.0.0.1:0'], handshake_timeout_ms: 500}\n"
                       "admin: {listen: []}\n"
                       "tunnel_tap_file: " +
                       tap_path_ +
                       "\n"
                       "credentials:\n"
                       "  - name: site-a\n"
                       "    secret: secret-of-site-a\n"
                       "    grants: ['pair:*']\n";
    absl::StatusOr<RelayConfig> config = ParseRelayConfig(yaml, "relay.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<std::unique_ptr<Relay>> relay = Relay::Create(*std::move(config), &loop_);
    ASSERT_TRUE(relay.ok()) << relay.status();
    relay_ = *std::move(relay);
    ASSERT_TRUE(relay_->Start().ok());
    port_ = relay_->listening_port("agent");
  }

  void TearDown() override {
    clients_.clear();
    StopRelay();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  void StopRelay() {
    if (!relay_) return;
    relay_->Shutdown();
    uv_run(&loop_, UV_RUN_DEFAULT);
    relay_->Join();
    relay_.reset();
  }

  // Runs the test's loop (worker 0) until `done`, for at most 10 s.
  bool RunUntil(const std::function<bool()>& done) {
    return data_path_test::RunLoopUntil(&loop_, done);
  }

  // An offer held by worker `worker` (0 runs on this thread; 1 is asked by a posted task).
  DataPathTokens Offer(int worker) {
    if (worker == 0) return OfferDataPath(relay_->worker(0), "test tunnel");
    auto tokens = std::make_shared<DataPathTokens>();
    auto made = std::make_shared<std::atomic<bool>>(false);
    RelayWorker& owner = relay_->worker(worker);
    owner.Post([&owner, tokens, made] {
      *tokens = OfferDataPath(owner, "test tunnel");
      made->store(true, std::memory_order_release);
    });
    EXPECT_TRUE(RunUntil([&] { return made->load(std::memory_order_acquire); }));
    return *tokens;
  }

  // A client that dials the agent listener and sends `first`.
  DataPathClient& Dial(std::string_view first) {
    clients_.push_back(std::make_unique<DataPathClient>());
    DataPathClient& client = *clients_.back();
    client.Send(first);
    client.Dial(&loop_, port_);
    return client;
  }
  DataPathClient& Present(const std::string& token) { return Dial(DataPathRequest(token)); }

  // Both clients of a pair read OK.
  bool Spliced(DataPathClient& a, DataPathClient& b) {
    return RunUntil([&] { return a.received.size() >= kOkSize && b.received.size() >= kOkSize; }) &&
           a.received.substr(0, kOkSize) == kDataPathOk &&
           b.received.substr(0, kOkSize) == kDataPathOk;
  }
  // The client read one ERR line and then EOF; returns the line.
  std::string Refusal(DataPathClient& client) {
    EXPECT_TRUE(RunUntil([&] { return client.eof || client.error; }));
    EXPECT_TRUE(client.eof) << "reset instead of closed";
    return client.received;
  }

  uintmax_t TapSize() {
    std::error_code error;
    uintmax_t size = std::filesystem::file_size(tap_path_, error);
    return error ? 0 : size;
  }

  uv_loop_t loop_;
  std::string dir_;
  std::string tap_path_;
  std::unique_ptr<Relay> relay_;
  uint16_t port_ = 0;
  std::vector<std::unique_ptr<DataPathClient>> clients_;
};

TEST_F(TunnelDataPathTest, SplicesBothEndsByteExactWithHalfClose) {
  uint64_t spliced_before = DataPaths("spliced");
  uint64_t bytes_before = BytesSpliced();
  uint64_t offers_before = DataPathOffers();
  int64_t active_before = ActiveDataPaths();
  uintmax_t tap_before = TapSize();
  DataPathTokens tokens = Offer(0);
  EXPECT_EQ(tokens.opener.size(), kDataPathTokenSize);
  EXPECT_EQ(tokens.far_end.size(), kDataPathTokenSize);
  EXPECT_NE(tokens.opener, tokens.far_end);
  EXPECT_EQ(DataPathOffers(), offers_before + 1);

  DataPathClient& a = Present(tokens.opener);
  ASSERT_TRUE(RunUntil([&] { return a.connected(); }));
  DataPathClient& b = Present(tokens.far_end);
  ASSERT_TRUE(Spliced(a, b));
  EXPECT_EQ(DataPaths("spliced"), spliced_before + 1);
  EXPECT_EQ(ActiveDataPaths(), active_before + 1);

  // Small bytes both ways.
  a.Send("hello from a");
  b.Send("hello from b");
  ASSERT_TRUE(RunUntil(
      [&] { return a.received.size() == kOkSize + 12 && b.received.size() == kOkSize + 12; }));
  EXPECT_EQ(b.received.substr(kOkSize), "hello from a");
  EXPECT_EQ(a.received.substr(kOkSize), "hello from b");

  // 4 MiB each way at once, b not reading at first (the relay's read pause for a slow reader
  // is shown in data_path_splice_test.cc).
  const std::string a_to_b = PatternBytes(4 << 20, 1);
  const std::string b_to_a = PatternBytes(4 << 20, 2);
  a.received.clear();
  b.received.clear();
  b.PauseReading();
  uint64_t bytes_mid = BytesSpliced();
  a.Send(a_to_b);
  b.Send(b_to_a);
  ASSERT_TRUE(RunUntil([&] { return BytesSpliced() >= bytes_mid + (1 << 20); }));
  b.ResumeReading();
  ASSERT_TRUE(RunUntil(
      [&] { return b.received.size() >= a_to_b.size() && a.received.size() >= b_to_a.size(); }));
  EXPECT_TRUE(SameBytes(b.received, a_to_b));
  EXPECT_TRUE(SameBytes(a.received, b_to_a));

  // a half-closes: b reads EOF, and can still send to a.
  a.received.clear();
  a.ShutdownWrite();
  ASSERT_TRUE(RunUntil([&] { return b.eof; }));
  EXPECT_FALSE(a.eof);
  b.Send("after your end");
  ASSERT_TRUE(RunUntil([&] { return a.received == "after your end"; }));
  b.ShutdownWrite();
  ASSERT_TRUE(RunUntil([&] { return a.eof; }));
  EXPECT_FALSE(a.error || b.error);
  ASSERT_TRUE(RunUntil([&] { return ActiveDataPaths() == active_before; }));

  uint64_t total = 24 + a_to_b.size() + b_to_a.size() + 14;
  EXPECT_EQ(BytesSpliced(), bytes_before + total);
  EXPECT_EQ(TapSize(), tap_before + total);  // the tunnel_tap_file sees data paths too
}

TEST_F(TunnelDataPathTest, PairsAcrossWorkers) {
  // Offers on both workers, ends accepted on either: many pairs have an end that moves.
  uint64_t spliced_before = DataPaths("spliced");
  constexpr int kPairs = 8;
  std::vector<std::pair<DataPathClient*, DataPathClient*>> pairs;
  for (int i = 0; i < kPairs; ++i) {
    DataPathTokens tokens = Offer(i % 2);
    pairs.emplace_back(&Present(tokens.opener), &Present(tokens.far_end));
  }
  for (int i = 0; i < kPairs; ++i) {
    // Plain pointers, not a structured binding: the lambda below captures them.
    DataPathClient* a = pairs[static_cast<size_t>(i)].first;
    DataPathClient* b = pairs[static_cast<size_t>(i)].second;
    ASSERT_TRUE(Spliced(*a, *b)) << "pair " << i;
    std::string message = "pair " + std::to_string(i);
    a->Send(message);
    b->Send(message + " back");
    ASSERT_TRUE(RunUntil([&] {
      return b->received.size() == kOkSize + message.size() &&
             a->received.size() == kOkSize + message.size() + 5;
    }));
    EXPECT_EQ(b->received.substr(kOkSize), message);
    EXPECT_EQ(a->received.substr(kOkSize), message + " back");
  }
  EXPECT_EQ(DataPaths("spliced"), spliced_before + kPairs);
}

TEST_F(TunnelDataPathTest, UnknownTokenIsRefused) {
  uint64_t before = DataPaths("unknown_token");
  DataPathClient& client = Present(std::string(kDataPathTokenSize, '\x42'));
  EXPECT_EQ(Refusal(client), "ERR unknown or expired token\r\n");
  EXPECT_EQ(DataPaths("unknown_token"), before + 1);
}

TEST_F(TunnelDataPathTest, TokensAreSingleUse) {
  uint64_t before = DataPaths("unknown_token");
  DataPathTokens tokens = Offer(1);
  DataPathClient& a = Present(tokens.opener);
  DataPathClient& b = Present(tokens.far_end);
  ASSERT_TRUE(Spliced(a, b));
  DataPathClient& again = Present(tokens.opener);
  EXPECT_EQ(Refusal(again), "ERR unknown or expired token\r\n");
  EXPECT_EQ(DataPaths("unknown_token"), before + 1);
  // The pair goes on.
  a.Send("still here");
  ASSERT_TRUE(RunUntil([&] { return b.received.size() == kOkSize + 10; }));
}

TEST_F(TunnelDataPathTest, MalformedRequestsAreRefused) {
  uint64_t before = DataPaths("bad_request");
  DataPathClient& bad_token = Dial("RDV-DATA/1 xyz\r\n");
  EXPECT_EQ(Refusal(bad_token), "ERR data path token of 3 hex digits, expected 64\r\n");
  DataPathClient& upper = Dial("RDV-DATA/1 " + std::string(64, 'A') + "\r\n");
  EXPECT_EQ(Refusal(upper), "ERR data path token is not lowercase hex\r\n");
  DataPathClient& other = Dial("RDV-DATA/2 " + std::string(64, 'a') + "\r\n");
  EXPECT_EQ(Refusal(other), "ERR not a data path request (expected \"RDV-DATA/1 <token>\")\r\n");
  DataPathClient& endless = Dial("R" + std::string(kMaxDataPathLine, 'x'));
  EXPECT_EQ(Refusal(endless), "ERR data path line longer than 128 bytes\r\n");
  DataPathClient& cut = Dial("RDV-DA");
  cut.ShutdownWrite();
  EXPECT_EQ(Refusal(cut), "ERR closed before the request line ended\r\n");
  EXPECT_EQ(DataPaths("bad_request"), before + 5);
}

TEST_F(TunnelDataPathTest, RequestLineTimesOut) {
  relay_->data_paths().set_timeouts_for_test(kDataPathPairTimeout, absl::Milliseconds(100));
  uint64_t before = DataPaths("request_timeout");
  DataPathClient& slow = Dial("RDV-DATA/1 00");
  EXPECT_EQ(Refusal(slow), "ERR no request line in time\r\n");
  EXPECT_EQ(DataPaths("request_timeout"), before + 1);
}

TEST_F(TunnelDataPathTest, MissingPartnerTimesOut) {
  relay_->data_paths().set_timeouts_for_test(absl::Milliseconds(200), kDataPathRequestTimeout);
  uint64_t before = DataPaths("partner_timeout");
  DataPathTokens tokens = Offer(1);
  DataPathClient& lonely = Present(tokens.far_end);
  EXPECT_EQ(Refusal(lonely), "ERR the other end of the tunnel did not arrive\r\n");
  EXPECT_EQ(DataPaths("partner_timeout"), before + 1);
  // The offer's tokens are forgotten with it.
  DataPathClient& late = Present(tokens.opener);
  EXPECT_EQ(Refusal(late), "ERR unknown or expired token\r\n");
}

TEST_F(TunnelDataPathTest, AnEndThatLeavesEndsTheOffer) {
  DataPathTokens tokens = Offer(0);
  DataPathClient& quitter = Present(tokens.opener);
  ASSERT_TRUE(RunUntil([&] { return quitter.connected(); }));
  // Once the relay holds the end (its token is taken), it leaves.
  ASSERT_TRUE(RunUntil([&] { return relay_->data_paths().WorkerOf(tokens.opener) < 0; }));
  quitter.Close();
  ASSERT_TRUE(RunUntil([&] { return relay_->data_paths().WorkerOf(tokens.far_end) < 0; }));
  DataPathClient& partner = Present(tokens.far_end);
  EXPECT_EQ(Refusal(partner), "ERR unknown or expired token\r\n");
}

TEST_F(TunnelDataPathTest, OtherFirstBytesStillReachTheLinkPath) {
  uint64_t handshake_errors = AgentHandshakeErrors();
  uint64_t bad_requests = DataPaths("bad_request");
  // A TLS record header that is not a ClientHello, then junk: the TLS session fails it.
  DataPathClient& tls = Dial(std::string("\x16\x03\x01\x00\x05junk!", 10));
  ASSERT_TRUE(RunUntil([&] { return tls.eof || tls.error; }));
  EXPECT_TRUE(tls.received.find("ERR") == std::string::npos);
  // Silence until the handshake timeout (500 ms here) is a failed handshake too.
  DataPathClient& silent = Dial("");
  ASSERT_TRUE(RunUntil([&] { return silent.eof || silent.error; }));
  EXPECT_TRUE(silent.received.empty());
  EXPECT_EQ(AgentHandshakeErrors(), handshake_errors + 2);
  EXPECT_EQ(DataPaths("bad_request"), bad_requests);
}

TEST_F(TunnelDataPathTest, ShutdownClosesPairsAndWaitingEnds) {
  DataPathTokens first = Offer(0);
  DataPathTokens second = Offer(1);
  DataPathClient& a = Present(first.opener);
  DataPathClient& b = Present(first.far_end);
  ASSERT_TRUE(Spliced(a, b));
  DataPathClient& waiting = Present(second.opener);
  ASSERT_TRUE(RunUntil([&] { return relay_->data_paths().WorkerOf(second.opener) < 0; }));
  relay_->Shutdown();
  EXPECT_TRUE(RunUntil(
      [&] { return (a.eof || a.error) && (b.eof || b.error) && (waiting.eof || waiting.error); }));
  clients_.clear();
  uv_run(&loop_, UV_RUN_DEFAULT);
  relay_->Join();
  relay_.reset();
  EXPECT_EQ(ActiveDataPaths(), 0);
}

}  // namespace
}  // namespace rdv
