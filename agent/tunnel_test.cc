#include "agent/tunnel.h"

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "agent/connect_listener.h"
#include "common/data_path.h"
#include "common/link_test_support.h"
#include "common/metrics.h"
#include "common/secure_channel.h"
#include "common/str_cat.h"
#include "common/tcp_listener.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using link_test::kMiB;
using link_test::LinkPair;
using link_test::Message;
using link_test::PatternBytes;
using link_test::SameBytes;
using link_test::TestLinkHandler;
using link_test::TestStream;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Nonce(char fill) { return std::string(kTunnelNonceSize, fill); }

TEST(TunnelElectionTest, PskSmallerNonceIsTheTlsClient) {
  std::string low = Nonce('\x01');
  std::string high = Nonce('\x01');
  high.back() = '\x02';
  EXPECT_TRUE(*ElectTlsClient("psk", TunnelRole::kConnect, low, high));
  EXPECT_FALSE(*ElectTlsClient("psk", TunnelRole::kServe, high, low));
  EXPECT_TRUE(*ElectTlsClient("psk", TunnelRole::kServe, low, high));
  // Bytewise, unsigned: 0xff sorts after 0x01.
  EXPECT_FALSE(*ElectTlsClient("psk", TunnelRole::kConnect, Nonce('\xff'), Nonce('\x01')));
  EXPECT_FALSE(ElectTlsClient("psk", TunnelRole::kConnect, low, low).ok());
  EXPECT_FALSE(ElectTlsClient("psk", TunnelRole::kConnect, "short", high).ok());
}

TEST(TunnelElectionTest, CertificateServingEndIsTheTlsServer) {
  EXPECT_TRUE(*ElectTlsClient("certificate", TunnelRole::kConnect, Nonce('\x09'), Nonce('\x01')));
  EXPECT_FALSE(*ElectTlsClient("certificate", TunnelRole::kServe, Nonce('\x01'), Nonce('\x09')));
}

TEST(TunnelErrorsTest, ConnectFailuresMapToOpenErrors) {
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError(UvError(UV_ECONNREFUSED))),
            link::CONNECTION_REFUSED);
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError(UvError(UV_ENETUNREACH))),
            link::NETWORK_UNREACHABLE);
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError(UvError(UV_EHOSTUNREACH))),
            link::HOST_UNREACHABLE);
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError(UvError(UV_ETIMEDOUT))), link::TIMED_OUT);
  EXPECT_EQ(OpenErrorForConnect(absl::DeadlineExceededError("timed out")), link::TIMED_OUT);
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError(UvError(UV_EAFNOSUPPORT))),
            link::ADDRESS_NOT_SUPPORTED);
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError("cannot resolve: EAI_NONAME: unknown")),
            link::HOST_UNREACHABLE);
  EXPECT_EQ(OpenErrorForConnect(absl::UnavailableError(UvError(UV_EACCES))),
            link::OPEN_ERROR_UNSPECIFIED);
}

TEST(TunnelErrorsTest, OpenErrorsMapToSocksRepliesAndLabels) {
  struct Case {
    link::OpenError error;
    uint8_t socks;
    std::string_view label;
  };
  for (const Case& c : {Case{link::NOT_ALLOWED, 0x02, "not_allowed"},
                        Case{link::NETWORK_UNREACHABLE, 0x03, "network_unreachable"},
                        Case{link::HOST_UNREACHABLE, 0x04, "host_unreachable"},
                        Case{link::CONNECTION_REFUSED, 0x05, "connection_refused"},
                        Case{link::TIMED_OUT, 0x06, "timed_out"},
                        Case{link::ADDRESS_NOT_SUPPORTED, 0x08, "address_not_supported"},
                        Case{link::OPEN_ERROR_UNSPECIFIED, 0x01, "other"}}) {
    EXPECT_EQ(static_cast<uint8_t>(SocksReplyFor(c.error)), c.socks) << c.label;
    EXPECT_EQ(OpenErrorLabel(c.error), c.label);
  }
}

TEST(TunnelEndpointTest, BothEndsDeriveTheSameKeyAndPairId) {
  ServiceConfig service;
  service.kind = ServiceConfig::Kind::kPair;
  service.name = "site-b";
  service.secret = "pairing-secret-0123";
  ConnectConfig connect;
  connect.kind = ServiceConfig::Kind::kPair;
  connect.name = "site-b";
  connect.secret = "pairing-secret-0123";
  TunnelEndpoint serving = ServingEndpoint(service);
  TunnelEndpoint connecting = ConnectingEndpoint(connect);
  EXPECT_EQ(serving.kind, link::PAIR);
  EXPECT_EQ(serving.pair_id, PairId("pairing-secret-0123", "site-b"));
  EXPECT_EQ(serving.pair_id, connecting.pair_id);
  EXPECT_EQ(serving.channel.psk, TunnelPsk("pairing-secret-0123", "pair", "site-b"));
  EXPECT_EQ(serving.channel.psk, connecting.channel.psk);
  EXPECT_EQ(serving.security, "psk");
  EXPECT_EQ(connecting.security, "psk");

  service.kind = ServiceConfig::Kind::kPrivate;
  connect.kind = ServiceConfig::Kind::kPrivate;
  EXPECT_EQ(ServingEndpoint(service).pair_id, "");
  EXPECT_EQ(ServingEndpoint(service).channel.psk,
            TunnelPsk("pairing-secret-0123", "private", "site-b"));
  EXPECT_EQ(ServingEndpoint(service).channel.psk, ConnectingEndpoint(connect).channel.psk);
}

// ---- Two tunnel ends through an in-memory relay ------------------------------------------------
//
// agent A (connect) --link pair "a"-- relay --link pair "b"-- agent B (serve). The relay is the
// test: it appends its id to the hops, forwards the Open, answers A with B's OpenResult and
// bridges the two streams, optionally altering the clear-text setup on the way.

class Bridge : public StreamHandler {
 public:
  Stream* self = nullptr;
  Stream* other = nullptr;
  std::function<void(Stream&)> on_accepted;
  std::function<void(Stream&)> on_refused;

  void OnStreamAccepted(Stream& stream) override {
    if (on_accepted) on_accepted(stream);
  }
  void OnStreamData(Stream& stream, std::string_view data) override {
    if (other != nullptr) other->Write(data);
    stream.Consumed(data.size());
  }
  void OnStreamEnd(Stream& stream) override {
    if (other != nullptr) other->End();
  }
  void OnStreamWritable(Stream& stream) override {}
  void OnStreamClosed(Stream& stream, const absl::Status& status) override {
    self = nullptr;
    if (on_refused && stream.result().stream_id() == stream.id() && !stream.result().ok()) {
      on_refused(stream);
    }
    // Closed cleanly (both ENDs passed on): the other stream closes cleanly by itself.
    if (other != nullptr && !status.ok()) {
      Stream* peer = other;
      other = nullptr;
      peer->Reset(std::string(status.message()));
    }
  }
};

struct RecordingOwner : Tunnel::Owner {
  int up = 0;
  std::optional<absl::Status> closed;
  void OnTunnelUp(Tunnel& tunnel) override { ++up; }
  void OnTunnelClosed(Tunnel& tunnel, const absl::Status& status) override { closed = status; }
};

// A nested stream opened by the connecting end.
struct NestedClient : StreamHandler {
  bool accepted = false;
  std::optional<absl::Status> closed;
  link::OpenResult result;
  void OnStreamAccepted(Stream& stream) override { accepted = true; }
  void OnStreamData(Stream& stream, std::string_view data) override {}
  void OnStreamEnd(Stream& stream) override {}
  void OnStreamWritable(Stream& stream) override {}
  void OnStreamClosed(Stream& stream, const absl::Status& status) override {
    closed = status;
    result = stream.result();
  }
};

// Stands in for the relay's data path (docs/protocol.md "Tunnel data path", item 3): accepts
// loopback connections, reads each one's request line, pairs two connections by the tokens of
// one offer and, once both arrived, answers OK on both and copies bytes between them (EOF as a
// half-close). Or answers ERR to every request.
class TestDataPathRelay {
 public:
  enum class Answer { kOk, kRefuse };

  TestDataPathRelay(uv_loop_t* loop, std::string host) : host_(std::move(host)) {
    absl::StatusOr<std::unique_ptr<TcpListener>> listener =
        TcpListener::Create(loop, host_, 0, [this](uv_stream_t* server) { OnAccept(server); });
    EXPECT_TRUE(listener.ok()) << listener.status();
    if (listener.ok()) listener_ = *std::move(listener);
  }
  ~TestDataPathRelay() { Close(); }

  sockaddr_storage address() const { return *ResolveNumeric(host_, listener_->port()); }
  // Two tokens good for one pair of connections.
  std::pair<std::string, std::string> NewOffer() {
    std::string first = PatternBytes(kDataPathTokenSize, ++seed_);
    std::string second = PatternBytes(kDataPathTokenSize, ++seed_);
    partner_token_[first] = second;
    partner_token_[second] = first;
    return {first, second};
  }
  // The OK for the connection presenting `token` waits for ReleaseOk(); what its partner sends
  // meanwhile waits here too.
  void HoldOk(std::string token) { held_token_ = std::move(token); }
  void ReleaseOk() {
    held_token_.clear();
    for (auto& conn : conns_) {
      if (conn->paired && !conn->ok_sent) SendOk(*conn);
    }
  }
  // Closes every connection, as a relay does when a spliced connection fails.
  void DropAll() {
    for (auto& conn : conns_) conn->tcp->Close();
  }
  void Close() {
    if (listener_ != nullptr) listener_->Close();
    DropAll();
  }

  Answer answer = Answer::kOk;
  int requests = 0;
  // Bytes copied to the connection that presented `token`.
  uint64_t BytesTo(const std::string& token) const {
    for (const auto& conn : conns_) {
      if (conn->token == token) return conn->copied_to;
    }
    return 0;
  }

  int spliced = 0;            // connections answered OK
  uint64_t bytes_copied = 0;  // after OK, both directions

 private:
  struct Conn : TcpConnection::Handler {
    TestDataPathRelay* relay = nullptr;
    std::unique_ptr<TcpConnection> tcp;
    std::string line;
    std::string token;
    Conn* partner = nullptr;
    bool paired = false;
    bool ok_sent = false;
    std::string waiting;  // from the partner, before this one's OK went out
    uint64_t copied_to = 0;

    void OnRead(std::string_view data) override {
      if (paired) {
        relay->bytes_copied += data.size();
        partner->Forward(data);
        return;
      }
      line.append(data);
      absl::StatusOr<size_t> end = DataPathLineEnd(line);
      ASSERT_TRUE(end.ok()) << end.status();
      if (*end == 0) return;
      ASSERT_EQ(*end, line.size()) << "bytes after the request line, before OK";
      absl::StatusOr<std::string> parsed = ParseDataPathRequest(line);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      token = *std::move(parsed);
      relay->Arrived(*this);
    }
    void OnEof() override {
      if (partner != nullptr) partner->tcp->Shutdown();
    }
    void OnError(const absl::Status& status) override {
      tcp->Close();
      if (partner != nullptr) partner->tcp->Close();
    }
    void Forward(std::string_view data) {
      copied_to += data.size();
      if (ok_sent) {
        tcp->Write(data);
      } else {
        waiting.append(data);
      }
    }
  };

  void OnAccept(uv_stream_t* server) {
    absl::StatusOr<std::unique_ptr<TcpConnection>> tcp = TcpConnection::Accept(server);
    ASSERT_TRUE(tcp.ok()) << tcp.status();
    auto conn = std::make_unique<Conn>();
    conn->relay = this;
    conn->tcp = *std::move(tcp);
    conn->tcp->Start(*conn);
    conns_.push_back(std::move(conn));
  }

  void Arrived(Conn& conn) {
    ++requests;
    if (answer == Answer::kRefuse || !partner_token_.contains(conn.token)) {
      conn.tcp->Write(DataPathError("unknown, used or expired token"));
      conn.tcp->Shutdown();
      return;
    }
    for (auto& other : conns_) {
      if (other.get() == &conn || other->token != partner_token_[conn.token]) continue;
      conn.partner = other.get();
      other->partner = &conn;
      conn.paired = other->paired = true;
      SendOk(*other);
      SendOk(conn);
      return;
    }
  }

  void SendOk(Conn& conn) {
    if (conn.token == held_token_) return;
    conn.ok_sent = true;
    ++spliced;
    conn.tcp->Write(std::string(kDataPathOk) + std::exchange(conn.waiting, std::string()));
  }

  const std::string host_;
  std::unique_ptr<TcpListener> listener_;
  std::vector<std::unique_ptr<Conn>> conns_;  // kept until the end: closed, never freed early
  std::map<std::string, std::string> partner_token_;
  std::string held_token_;
  uint32_t seed_ = 100;
};

// The serving end's target: sends `reply` and half-closes as soon as it is connected; records
// what it receives.
class TestTarget : public TcpConnection::Handler {
 public:
  explicit TestTarget(uv_loop_t* loop) {
    absl::StatusOr<std::unique_ptr<TcpListener>> listener =
        TcpListener::Create(loop, "127.0.0.1", 0, [this](uv_stream_t* server) {
          absl::StatusOr<std::unique_ptr<TcpConnection>> tcp = TcpConnection::Accept(server);
          ASSERT_TRUE(tcp.ok()) << tcp.status();
          ASSERT_EQ(tcp_, nullptr) << "one connection expected";
          tcp_ = *std::move(tcp);
          tcp_->Start(*this);
          tcp_->Write(reply);
          tcp_->Shutdown();
        });
    EXPECT_TRUE(listener.ok()) << listener.status();
    if (listener.ok()) listener_ = *std::move(listener);
  }
  ~TestTarget() override { Close(); }

  uint16_t port() const { return listener_->port(); }
  void Close() {
    if (listener_ != nullptr) listener_->Close();
    if (tcp_ != nullptr) tcp_->Close();
  }

  void OnRead(std::string_view data) override { received.append(data); }
  void OnEof() override { eof = true; }
  void OnError(const absl::Status& status) override { ADD_FAILURE() << status; }

  std::string reply;
  std::string received;
  bool eof = false;

 private:
  std::unique_ptr<TcpListener> listener_;
  std::unique_ptr<TcpConnection> tcp_;
};

uint64_t DataPathResults(std::string_view result) {
  return CounterOf("rdv_agent_tunnel_data_paths_total", "", StrCat("result=\"", result, "\""))
      .value();
}

class TunnelEndToEndTest : public ::testing::Test {
 protected:
  TunnelEndToEndTest() : tasks_(&loop_storage_) {}

  void SetUp() override {
    a_.relay_handler.on_open = TestLinkHandler::OnOpen::kHold;
    b_.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
    service_.kind = ServiceConfig::Kind::kPair;
    service_.name = "site-b";
    service_.secret = "pairing-secret-0123";
    ASSERT_TRUE(service_.allow.Add("192.0.2.0/24", {{22, 22}}).ok());
    connect_.kind = ServiceConfig::Kind::kPair;
    connect_.name = "site-b";
    connect_.secret = "pairing-secret-0123";
  }

  void TearDown() override {
    serving_.reset();
    connecting_.reset();
    if (data_relay_ != nullptr) data_relay_->Close();
    if (target_ != nullptr) target_->Close();
    tasks_.Close();
    uv_run(&loop_storage_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_storage_), 0);
  }

  static uv_loop_t* NewLoop(uv_loop_t* storage) {
    uv_loop_init(storage);
    return storage;
  }

  Tunnel::Context Context(std::string agent_id) {
    Tunnel::Context context;
    context.loop = &loop_storage_;
    context.tasks = &tasks_;
    context.agent_id = std::move(agent_id);
    return context;
  }

  // Moves bytes on both link pairs and runs the relay's part until nothing moves. The loop runs
  // first in each round, so that what its end-of-iteration flushes wrote is moved in the same
  // round.
  void Pump() {
    for (int round = 0; round < 10000; ++round) {
      uv_run(&loop_storage_, UV_RUN_NOWAIT);
      bool moved = a_.PumpOnce();
      moved |= b_.PumpOnce();
      moved |= Relay();
      moved |= ServeHeld();
      if (!moved) return;
    }
    ADD_FAILURE() << "never went idle";
  }

  // The relay: forwards Opens held on A's link to B's link.
  bool Relay() {
    if (a_.relay_handler.held.empty()) return false;
    std::vector<uint32_t> held = std::move(a_.relay_handler.held);
    a_.relay_handler.held.clear();
    for (uint32_t id : held) {
      Stream* from_a = a_.relay().FindStream(id);
      if (from_a == nullptr) continue;
      link::Open open = from_a->open();
      open.mutable_tunnel()->add_hops("relay-t");
      // The last byte: flipping the first could change which end B elects TLS client (when
      // both nonces share their first 7 bits) and fail the handshake before the Hello check.
      if (tamper_nonce_) (*open.mutable_tunnel()->mutable_nonce())[kTunnelNonceSize - 1] ^= 1;
      auto to_b = std::make_unique<Bridge>();
      auto back = std::make_unique<Bridge>();
      Bridge* to_b_raw = to_b.get();
      Bridge* back_raw = back.get();
      to_b->on_accepted = [this, to_b_raw, back_raw, id](Stream& stream) {
        Stream* a_stream = a_.relay().FindStream(id);
        link::OpenResult result = stream.result();
        if (tamper_hops_) result.mutable_tunnel()->set_hops(0, "relay-x");
        back_raw->self = a_stream;
        back_raw->other = &stream;
        to_b_raw->other = a_stream;
        a_stream->Accept(*back_raw, result);
      };
      to_b->on_refused = [this, id](Stream& stream) {
        if (Stream* a_stream = a_.relay().FindStream(id)) {
          a_stream->Refuse(stream.result().reason(), stream.result().error());
        }
      };
      to_b->self = b_.relay().OpenStream(open, *to_b);
      bridges_.push_back(std::move(to_b));
      bridges_.push_back(std::move(back));
    }
    return true;
  }

  // Agent B: tunnel Opens become the serving end of a Tunnel.
  bool ServeHeld() {
    if (b_.agent_handler.held.empty()) return false;
    std::vector<uint32_t> held = std::move(b_.agent_handler.held);
    b_.agent_handler.held.clear();
    for (uint32_t id : held) {
      Stream* stream = b_.agent().FindStream(id);
      absl::StatusOr<std::unique_ptr<Tunnel>> tunnel =
          Tunnel::Serve(Context("agent-b"), ServingEndpoint(service_), *stream, serving_owner_);
      serve_status_ = tunnel.status();
      if (tunnel.ok()) serving_ = *std::move(tunnel);
    }
    return true;
  }

  // Runs the loop and the in-memory links until `done` (real sockets settle in their own time);
  // false when it did not come within 30 s or (unless `may_close`) a tunnel closed first.
  bool RunUntil(const std::function<bool()>& done, bool may_close = false) {
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!done()) {
      // A tunnel that closed unexpectedly will not bring `done` about.
      bool closed = connecting_owner_.closed.has_value() || serving_owner_.closed.has_value();
      if (absl::Now() > deadline || (closed && !may_close)) return false;
      uv_run(&loop_storage_, UV_RUN_NOWAIT);
      a_.PumpOnce();
      b_.PumpOnce();
      Relay();
      ServeHeld();
    }
    return true;
  }

  // A target for the serving end that sends `reply`, and the fake relay's data path.
  void StartTargetAndDataPath(std::string reply, std::string relay_host = "127.0.0.1") {
    target_ = std::make_unique<TestTarget>(&loop_storage_);
    target_->reply = std::move(reply);
    service_.target = HostPort{"127.0.0.1", target_->port()};
    data_relay_ = std::make_unique<TestDataPathRelay>(&loop_storage_, std::move(relay_host));
  }

  // One nested stream to the serving end's target, sending `data` and then END.
  void OpenClientStream(std::string data) {
    client_.stream = connecting_->OpenStream("", "127.0.0.1:5000", client_);
    ASSERT_NE(client_.stream, nullptr);
    client_.id = client_.stream->id();
    client_.Send(std::move(data));
  }

  // Both ends get their token of one offer from the fake relay.
  void OfferBoth() {
    auto [to_connecting, to_serving] = data_relay_->NewOffer();
    connecting_token_ = to_connecting;
    EXPECT_TRUE(connecting_->OfferDataPath(data_relay_->address(), to_connecting));
    EXPECT_TRUE(serving_->OfferDataPath(data_relay_->address(), to_serving));
  }

  bool BothAt(Tunnel::DataPath path) const {
    return connecting_->data_path() == path && serving_->data_path() == path;
  }

  bool ClientExchangeDone(std::string_view from_target, std::string_view to_target) {
    return client_.ended && client_.received.size() == from_target.size() && target_->eof &&
           target_->received.size() == to_target.size();
  }

  void ConnectAndPump() {
    absl::StatusOr<std::unique_ptr<Tunnel>> tunnel = Tunnel::Connect(
        Context("agent-a"), ConnectingEndpoint(connect_), a_.agent(), connecting_owner_);
    ASSERT_TRUE(tunnel.ok()) << tunnel.status();
    connecting_ = *std::move(tunnel);
    Pump();
  }

  uv_loop_t loop_storage_;
  uv_loop_t* loop_ = NewLoop(&loop_storage_);
  LoopTasks tasks_;
  LinkPair a_;
  LinkPair b_;
  std::vector<std::unique_ptr<Bridge>> bridges_;
  ServiceConfig service_;
  ConnectConfig connect_;
  RecordingOwner connecting_owner_;
  RecordingOwner serving_owner_;
  std::unique_ptr<Tunnel> connecting_;
  std::unique_ptr<Tunnel> serving_;
  absl::Status serve_status_;
  bool tamper_hops_ = false;
  bool tamper_nonce_ = false;
  std::unique_ptr<TestTarget> target_;
  std::unique_ptr<TestDataPathRelay> data_relay_;
  std::string connecting_token_;
  TestStream client_;  // outlives the tunnels: their nested streams report to it
};

TEST_F(TunnelEndToEndTest, BothEndsComeUpWithTheSameHops) {
  ConnectAndPump();
  ASSERT_NE(serving_, nullptr) << serve_status_;
  EXPECT_EQ(connecting_owner_.up, 1);
  EXPECT_EQ(serving_owner_.up, 1);
  EXPECT_EQ(connecting_->state(), Tunnel::State::kUp);
  EXPECT_EQ(serving_->state(), Tunnel::State::kUp);
  EXPECT_THAT(connecting_->hops(), ElementsAre("relay-t"));
  EXPECT_THAT(serving_->hops(), ElementsAre("relay-t"));
  EXPECT_EQ(connecting_->peer_agent(), "agent-b");
  EXPECT_EQ(serving_->peer_agent(), "agent-a");
  EXPECT_EQ(connecting_->security(), "psk");
}

TEST_F(TunnelEndToEndTest, ServingEndRefusesDestinationsOutsideItsAllowList) {
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  uint64_t not_allowed_before =
      CounterOf("rdv_agent_tunnel_streams_refused_total", "", "reason=\"not_allowed\"").value();
  uint64_t no_target_before =
      CounterOf("rdv_agent_tunnel_streams_refused_total", "", "reason=\"no_target\"").value();
  NestedClient outside, wrong_port, no_target, bad;
  ASSERT_NE(connecting_->OpenStream("198.51.100.1:22", "127.0.0.1:5000", outside), nullptr);
  ASSERT_NE(connecting_->OpenStream("[2001:db8::1]:22", "127.0.0.1:5001", wrong_port), nullptr);
  ASSERT_NE(connecting_->OpenStream("", "127.0.0.1:5002", no_target), nullptr);
  ASSERT_NE(connecting_->OpenStream("no-port", "127.0.0.1:5003", bad), nullptr);
  Pump();
  for (NestedClient* client : {&outside, &wrong_port, &no_target, &bad}) {
    ASSERT_TRUE(client->closed.has_value());
    EXPECT_FALSE(client->accepted);
  }
  EXPECT_EQ(outside.result.error(), link::NOT_ALLOWED);
  EXPECT_THAT(outside.result.reason(), HasSubstr("198.51.100.1:22"));
  EXPECT_EQ(wrong_port.result.error(), link::NOT_ALLOWED);
  EXPECT_EQ(no_target.result.error(), link::NOT_ALLOWED);
  EXPECT_THAT(no_target.result.reason(), HasSubstr("has no target"));
  EXPECT_EQ(bad.result.error(), link::ADDRESS_NOT_SUPPORTED);
  EXPECT_EQ(
      CounterOf("rdv_agent_tunnel_streams_refused_total", "", "reason=\"not_allowed\"").value(),
      not_allowed_before + 2);
  EXPECT_EQ(CounterOf("rdv_agent_tunnel_streams_refused_total", "", "reason=\"no_target\"").value(),
            no_target_before + 1);
  // The tunnel itself is unharmed.
  EXPECT_EQ(connecting_->state(), Tunnel::State::kUp);
}

TEST_F(TunnelEndToEndTest, RetiredTunnelClosesOnceItsLastStreamEnds) {
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  auto lost = [] {
    return CounterOf("rdv_agent_tunnel_failures_total", "", "reason=\"lost\"").value();
  };
  uint64_t lost_before = lost();
  NestedClient refused;  // open until the serving end's refusal comes back
  ASSERT_NE(connecting_->OpenStream("198.51.100.1:22", "127.0.0.1:5000", refused), nullptr);
  connecting_->Retire("relay going away");
  EXPECT_EQ(connecting_->state_name(), "retiring");
  uv_run(&loop_storage_, UV_RUN_NOWAIT);
  EXPECT_FALSE(connecting_owner_.closed.has_value()) << "closed with a stream still open";
  Pump();
  ASSERT_TRUE(refused.closed.has_value());
  ASSERT_TRUE(connecting_owner_.closed.has_value()) << "still open after its last stream";
  EXPECT_TRUE(absl::IsCancelled(*connecting_owner_.closed)) << *connecting_owner_.closed;
  // The serving end heard GoAway first, so the close is orderly there: not a failure.
  EXPECT_TRUE(serving_->draining());
  ASSERT_TRUE(serving_owner_.closed.has_value());
  EXPECT_EQ(lost(), lost_before);
}

TEST_F(TunnelEndToEndTest, RetiredIdleTunnelClosesAtOnce) {
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  connecting_->Retire("relay going away");
  Pump();
  ASSERT_TRUE(connecting_owner_.closed.has_value());
  EXPECT_TRUE(absl::IsCancelled(*connecting_owner_.closed)) << *connecting_owner_.closed;
  EXPECT_TRUE(serving_owner_.closed.has_value());
}

TEST_F(TunnelEndToEndTest, AlteredHopsCloseBothEnds) {
  tamper_hops_ = true;
  ConnectAndPump();
  ASSERT_NE(serving_, nullptr) << serve_status_;
  ASSERT_TRUE(connecting_owner_.closed.has_value());
  EXPECT_EQ(Message(*connecting_owner_.closed), "setup information changed in transit");
  ASSERT_TRUE(serving_owner_.closed.has_value());
  EXPECT_EQ(connecting_owner_.up + serving_owner_.up, 0);
}

TEST_F(TunnelEndToEndTest, AlteredNonceClosesTheTunnel) {
  tamper_nonce_ = true;
  ConnectAndPump();
  ASSERT_NE(serving_, nullptr) << serve_status_;
  ASSERT_TRUE(serving_owner_.closed.has_value());
  EXPECT_EQ(Message(*serving_owner_.closed), "setup information changed in transit");
  EXPECT_EQ(serving_owner_.up, 0);
  // The connecting end saw B's setup unaltered; it goes down with the serving end's reset.
  EXPECT_TRUE(connecting_owner_.closed.has_value());
}

TEST_F(TunnelEndToEndTest, DifferentSecretsFailTheHandshakeAtBothEnds) {
  // A private service: the relay routes by name, so a wrong secret reaches the TLS handshake.
  service_.kind = ServiceConfig::Kind::kPrivate;
  connect_.kind = ServiceConfig::Kind::kPrivate;
  connect_.secret = "another-secret-456789";
  ConnectAndPump();
  ASSERT_NE(serving_, nullptr) << serve_status_;
  ASSERT_TRUE(connecting_owner_.closed.has_value());
  ASSERT_TRUE(serving_owner_.closed.has_value());
  EXPECT_THAT(Message(*connecting_owner_.closed), HasSubstr("TLS handshake failed"));
  EXPECT_EQ(connecting_owner_.up + serving_owner_.up, 0);
}

TEST_F(TunnelEndToEndTest, SecurityMismatchIsRefusedInTheClear) {
  service_.kind = ServiceConfig::Kind::kPrivate;
  service_.secret.clear();
  service_.certificate_file = "/nonexistent/cert.pem";  // never read: refused before the channel
  service_.key_file = "/nonexistent/key.pem";
  connect_.kind = ServiceConfig::Kind::kPrivate;
  ConnectAndPump();
  EXPECT_EQ(serving_, nullptr);
  EXPECT_THAT(Message(serve_status_), HasSubstr("security mismatch"));
  ASSERT_TRUE(connecting_owner_.closed.has_value());
  EXPECT_TRUE(connecting_->refused());
  EXPECT_THAT(connecting_->refusal(), HasSubstr("security mismatch"));
}

}  // namespace
}  // namespace rdv

namespace rdv {
namespace {

// ---- The data path -----------------------------------------------------------------------------

TEST_F(TunnelEndToEndTest, TransferInFlightCrossesTheSwitchToTheDataPath) {
  const std::string to_target = PatternBytes(8 * kMiB, 1);
  const std::string from_target = PatternBytes(8 * kMiB, 2);
  StartTargetAndDataPath(from_target);
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  ASSERT_EQ(serving_->state(), Tunnel::State::kUp);
  EXPECT_EQ(connecting_->path_name(), "link");
  uint64_t switched_before = DataPathResults("switched");

  // Both directions under way on the relay stream when the offer comes.
  OpenClientStream(to_target);
  ASSERT_TRUE(RunUntil(
      [&] { return client_.received.size() >= kMiB && target_->received.size() >= kMiB; }));
  ASSERT_LT(client_.received.size(), from_target.size());
  ASSERT_LT(target_->received.size(), to_target.size());
  // What the serving end writes on its relay stream from here on waits in its link (a slow
  // relay link), so its first bytes on the data path overtake it (and its END): the connecting
  // end must hold them back until that END.
  b_.hold_agent_output = true;
  OfferBoth();
  EXPECT_FALSE(connecting_->OfferDataPath(data_relay_->address(), "again"))
      << "an offer in progress takes no other";
  // The serving end switched (the connecting end's END came), and its ciphertext crossed the
  // data path ahead of what waits in its link.
  ASSERT_TRUE(RunUntil([&] {
    return connecting_->data_path() == Tunnel::DataPath::kSwitching &&
           serving_->data_path() == Tunnel::DataPath::kUp &&
           data_relay_->BytesTo(connecting_token_) > 0;
  }));
  b_.hold_agent_output = false;

  ASSERT_TRUE(RunUntil([&] { return ClientExchangeDone(from_target, to_target); }))
      << "client got " << client_.received.size() << ", target got " << target_->received.size();
  EXPECT_TRUE(SameBytes(client_.received, from_target));
  EXPECT_TRUE(SameBytes(target_->received, to_target));
  EXPECT_EQ(connecting_->data_path(), Tunnel::DataPath::kUp);
  EXPECT_EQ(serving_->data_path(), Tunnel::DataPath::kUp);
  EXPECT_EQ(connecting_->path_name(), "data");
  EXPECT_EQ(data_relay_->spliced, 2);
  EXPECT_GT(data_relay_->bytes_copied, 0u) << "nothing went on the data path";
  EXPECT_EQ(DataPathResults("switched"), switched_before + 2);
  // The relay streams closed cleanly with both ENDs; the tunnels live on.
  ASSERT_TRUE(RunUntil([&] { return a_.relay().stream_count() + b_.relay().stream_count() == 0; }));
  EXPECT_EQ(connecting_->state(), Tunnel::State::kUp);
  EXPECT_EQ(serving_->state(), Tunnel::State::kUp);
  EXPECT_FALSE(connecting_owner_.closed.has_value());
  EXPECT_FALSE(serving_owner_.closed.has_value());
  EXPECT_FALSE(serving_->OfferDataPath(data_relay_->address(), "again")) << "done: no other";
}

TEST_F(TunnelEndToEndTest, PeerEndBeforeOwnOkIsTheSwitch) {
  // The relay answers both ends at once, but the connecting end's END on the relay stream may
  // reach the serving end before the serving end's own OK does.
  const std::string to_target = PatternBytes(2 * kMiB, 3);
  const std::string from_target = PatternBytes(2 * kMiB, 4);
  StartTargetAndDataPath(from_target);
  ConnectAndPump();
  ASSERT_EQ(serving_->state(), Tunnel::State::kUp);
  auto [to_connecting, to_serving] = data_relay_->NewOffer();
  data_relay_->HoldOk(to_serving);
  ASSERT_TRUE(connecting_->OfferDataPath(data_relay_->address(), to_connecting));
  ASSERT_TRUE(serving_->OfferDataPath(data_relay_->address(), to_serving));
  ASSERT_TRUE(RunUntil([&] { return data_relay_->spliced == 1; }));
  ASSERT_TRUE(RunUntil([&] { return connecting_->data_path() == Tunnel::DataPath::kSwitching; }));
  // Data from the connecting end now goes on its data path and waits at the relay.
  OpenClientStream(to_target);
  Pump();  // the connecting end's END has crossed the relay
  EXPECT_EQ(serving_->state(), Tunnel::State::kUp);
  EXPECT_EQ(serving_->data_path(), Tunnel::DataPath::kOffered);

  data_relay_->ReleaseOk();
  ASSERT_TRUE(RunUntil([&] { return ClientExchangeDone(from_target, to_target); }));
  EXPECT_TRUE(SameBytes(client_.received, from_target));
  EXPECT_TRUE(SameBytes(target_->received, to_target));
  EXPECT_EQ(connecting_->data_path(), Tunnel::DataPath::kUp);
  EXPECT_EQ(serving_->data_path(), Tunnel::DataPath::kUp);
  EXPECT_FALSE(connecting_owner_.closed.has_value());
  EXPECT_FALSE(serving_owner_.closed.has_value());
}

TEST_F(TunnelEndToEndTest, RefusedOfferLeavesTheTunnelOnTheRelayStream) {
  const std::string to_target = PatternBytes(512 * 1024, 5);
  const std::string from_target = PatternBytes(512 * 1024, 6);
  StartTargetAndDataPath(from_target);
  data_relay_->answer = TestDataPathRelay::Answer::kRefuse;
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  uint64_t refused_before = DataPathResults("refused");
  OfferBoth();
  ASSERT_TRUE(RunUntil([&] { return BothAt(Tunnel::DataPath::kDeclined); }));
  EXPECT_EQ(DataPathResults("refused"), refused_before + 2);
  EXPECT_EQ(data_relay_->requests, 2);
  EXPECT_FALSE(connecting_->OfferDataPath(data_relay_->address(), "again")) << "done: no other";

  OpenClientStream(to_target);
  ASSERT_TRUE(RunUntil([&] { return ClientExchangeDone(from_target, to_target); }));
  EXPECT_TRUE(SameBytes(client_.received, from_target));
  EXPECT_TRUE(SameBytes(target_->received, to_target));
  EXPECT_EQ(connecting_->path_name(), "link");
  EXPECT_EQ(connecting_->state(), Tunnel::State::kUp);
  EXPECT_EQ(serving_->state(), Tunnel::State::kUp);
  EXPECT_EQ(data_relay_->bytes_copied, 0u);
}

TEST_F(TunnelEndToEndTest, UnreachableDataPathLeavesTheTunnelOnTheRelayStream) {
  StartTargetAndDataPath("pong");
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  // A port nobody listens on any more.
  sockaddr_storage closed = data_relay_->address();
  data_relay_->Close();
  uint64_t failed_before = DataPathResults("connect_failed");
  ASSERT_TRUE(connecting_->OfferDataPath(closed, std::string(kDataPathTokenSize, 'x')));
  ASSERT_TRUE(RunUntil([&] { return connecting_->data_path() == Tunnel::DataPath::kDeclined; }));
  EXPECT_EQ(DataPathResults("connect_failed"), failed_before + 1);

  OpenClientStream("ping");
  ASSERT_TRUE(RunUntil([&] { return ClientExchangeDone("pong", "ping"); }));
  EXPECT_EQ(client_.received, "pong");
  EXPECT_EQ(target_->received, "ping");
  EXPECT_EQ(connecting_->state(), Tunnel::State::kUp);
}

TEST_F(TunnelEndToEndTest, SwitchesToADataPathOverIpv6) {
  if (!TcpListener::Create(&loop_storage_, "::1", 0, [](uv_stream_t*) {}).ok()) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  StartTargetAndDataPath("pong", "::1");
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  OfferBoth();
  ASSERT_TRUE(RunUntil([&] { return BothAt(Tunnel::DataPath::kUp); }));
  OpenClientStream("ping");
  ASSERT_TRUE(RunUntil([&] { return ClientExchangeDone("pong", "ping"); }));
  EXPECT_EQ(client_.received, "pong");
  EXPECT_EQ(target_->received, "ping");
  EXPECT_GT(data_relay_->bytes_copied, 0u);
}

TEST_F(TunnelEndToEndTest, DataPathClosedAfterTheSwitchFailsTheTunnel) {
  StartTargetAndDataPath("pong");
  ConnectAndPump();
  ASSERT_EQ(connecting_->state(), Tunnel::State::kUp);
  OfferBoth();
  ASSERT_TRUE(RunUntil([&] { return BothAt(Tunnel::DataPath::kUp); }));
  OpenClientStream("ping");
  ASSERT_TRUE(RunUntil([&] { return ClientExchangeDone("pong", "ping"); }));

  data_relay_->DropAll();
  ASSERT_TRUE(RunUntil(
      [&] { return connecting_owner_.closed.has_value() && serving_owner_.closed.has_value(); },
      /*may_close=*/true));
  EXPECT_THAT(Message(*connecting_owner_.closed), HasSubstr("the tunnel's data path closed"));
  EXPECT_THAT(Message(*serving_owner_.closed), HasSubstr("the tunnel's data path closed"));
  EXPECT_EQ(connecting_->state(), Tunnel::State::kClosed);
}

}  // namespace
}  // namespace rdv
