// The relay's side of end-to-end tunnels (docs/protocol.md "Tunnels"), driven end to end in
// process: a real Relay (two worker loops, TLS agent listener on 127.0.0.1:0) and small fake
// agents that speak rdv/1 over TLS from the test's loop (worker 0's loop). The fake agents do
// what the real ones will: register PRIVATE and PAIR services, open tunnel streams with a
// TunnelSetup, and accept them with their own setup. The end-to-end TLS inside the tunnel is
// the agents' business; here the bytes are opaque patterns.
#include "relay/tunnel_bridge.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/auth.h"
#include "common/data_path.h"
#include "common/link_test_support.h"
#include "common/loop_tasks.h"
#include "common/metrics.h"
#include "common/tcp_connection.h"
#include "common/tls.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "relay/data_path_test_support.h"
#include "relay/relay.h"
#include "relay/relay_config.h"

namespace rdv {
namespace {

using data_path_test::DataPathClient;
using data_path_test::DataPathOffers;
using link_test::Message;
using link_test::PatternBytes;
using link_test::SameBytes;
using link_test::TestStream;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kRelayId[] = "relay-t";
constexpr char kPairIdA[] = "0123456789abcdef0123456789abcdef";
constexpr char kPairIdB[] = "fedcba9876543210fedcba9876543210";

uint64_t Refusals(std::string_view reason) {
  return CounterOf("rdv_tunnels_refused_total",
                   "Tunnel streams refused, by the relay or the far end",
                   "reason=\"" + std::string(reason) + "\"")
      .value();
}
uint64_t BridgedTotal() {
  return CounterOf("rdv_tunnels_bridged_total", "Tunnel streams joined to their far end").value();
}
uint64_t Abandoned() {
  return CounterOf("rdv_tunnels_abandoned_total",
                   "Tunnel streams whose opener went away before the far end answered")
      .value();
}
int64_t ActiveTunnels() {
  return GaugeOf("rdv_tunnels_active", "Bridged tunnel streams open now").value();
}

link::ServiceSpec Spec(link::ServiceKind kind, const std::string& name,
                       const std::string& pair_id = "") {
  link::ServiceSpec spec;
  spec.set_kind(kind);
  spec.set_name(name);
  spec.set_pair_id(pair_id);
  return spec;
}

// A TestStream that also keeps the OpenResult of a stream it opened.
class TunnelStream : public TestStream {
 public:
  link::OpenResult result;
  void OnStreamAccepted(Stream& s) override {
    TestStream::OnStreamAccepted(s);
    result = s.result();
  }
  void OnStreamClosed(Stream& s, const absl::Status& status) override {
    if (!accepted) result = s.result();  // a refusal: its reason and error
    TestStream::OnStreamClosed(s, status);
  }
};

// An agent reduced to the link protocol: authenticates, registers `services`, opens tunnel
// streams on request and accepts (or refuses) the ones the relay opens to it.
class FakeAgent : public TlsSession::Handler, public LinkTransport, public LinkHandler {
 public:
  FakeAgent(std::string agent_id, std::string credential, std::string secret,
            std::vector<link::ServiceSpec> services)
      : agent_id_(std::move(agent_id)),
        credential_(std::move(credential)),
        secret_(std::move(secret)),
        services_(std::move(services)),
        link_(*this, *this, LinkOptions{}) {}
  ~FakeAgent() override { Close(); }

  void Dial(uv_loop_t* loop, LoopTasks& tasks, SSL_CTX* ctx, uint16_t port,
            const std::string& fingerprint) {
    sockaddr_in address{};
    uv_ip4_addr("127.0.0.1", port, &address);
    TcpConnection::Connect(
        loop, reinterpret_cast<const sockaddr*>(&address),
        [this, &tasks, ctx, fingerprint](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
          if (!tcp.ok()) {
            failed = true;
            return;
          }
          local_address = (*tcp)->local_address();
          tls_ =
              TlsSession::Create(std::move(*tcp), ctx, /*is_server=*/false, tasks, "", fingerprint);
          tls_->Start(*this);
        });
  }
  void Close() {
    link_.Close(absl::CancelledError("test agent closed"));
    if (tls_) tls_->Close();
  }

  TunnelStream* OpenTunnel(const link::ServiceSpec& service, std::vector<std::string> hops = {},
                           bool with_setup = true) {
    link::Open open;
    *open.mutable_service() = service;
    if (with_setup) {
      link::TunnelSetup* setup = open.mutable_tunnel();
      setup->set_agent_id(agent_id_);
      setup->set_nonce(std::string(32, 'a'));
      for (std::string& hop : hops) setup->add_hops(std::move(hop));
      setup->set_security("psk");
    }
    auto stream = std::make_unique<TunnelStream>();
    Stream* opened = link_.OpenStream(std::move(open), *stream);
    if (opened == nullptr) return nullptr;
    stream->stream = opened;
    stream->id = opened->id();
    opened_.push_back(std::move(stream));
    return opened_.back().get();
  }
  void Unregister(const link::ServiceSpec& service) {
    link::Control control;
    *control.mutable_unregister()->add_services() = service;
    link_.SendControl(control);
  }

  // Serving end policy: refuse with this reason (and error) instead of accepting.
  std::string refuse_reason;
  link::OpenError refuse_error = link::OPEN_ERROR_UNSPECIFIED;
  bool hold = false;    // leave streams the relay opens undecided (AcceptHeld answers later)
  bool consume = true;  // accepted streams return credit at once
  std::function<void(TestStream&)> on_accept;  // e.g. send the reply

  std::vector<std::string> features;  // Hello.features, set before Dial

  bool ready = false;
  bool failed = false;
  bool closed = false;
  std::string local_address;
  std::vector<link::Registered> registered;
  std::vector<link::TunnelNotice> notices;
  std::vector<link::TunnelData> tunnel_data;
  // For each TunnelData: whether the stream it names was answered (accepted) when it came.
  std::vector<bool> tunnel_data_after_answer;
  std::vector<link::Open> opens;                      // streams the relay opened to us
  std::vector<std::unique_ptr<TestStream>> accepted;  // ... and accepted, in order
  std::vector<uint32_t> held;                         // ... and left undecided

  // TlsSession::Handler
  void OnTlsReady() override {
    link::Control control;
    link::Hello* hello = control.mutable_hello();
    hello->set_version(1);
    hello->set_agent_id(agent_id_);
    hello->set_credential(credential_);
    hello->set_initial_stream_window(link_.options().stream_window);
    for (const std::string& feature : features) hello->add_features(feature);
    link_.SendControl(control);
  }
  void OnTlsData(std::string_view plaintext) override { link_.OnBytes(plaintext); }
  void OnTlsClosed(const absl::Status& status) override {
    closed = true;
    link_.Close(status);
  }
  void OnTlsDrained() override { link_.OnTransportDrained(); }
  // LinkTransport
  void Send(std::string_view bytes) override {
    if (tls_) tls_->Send(bytes);
  }
  size_t QueuedBytes() const override { return tls_ ? tls_->QueuedBytes() : 0; }
  // LinkHandler
  void OnControl(Link& link, const link::Control& control) override {
    switch (control.body_case()) {
      case link::Control::kChallenge: {
        link_.set_peer_stream_window(control.challenge().initial_stream_window());
        link::Control reply;
        reply.mutable_proof()->set_mac(ComputeAuthMac(
            secret_, control.challenge().nonce(), tls_->ExportKeyingMaterial("EXPORTER-rdv-auth")));
        link_.SendControl(reply);
        return;
      }
      case link::Control::kAuthResult: {
        ready = control.auth_result().ok();
        failed = !ready;
        if (ready && !services_.empty()) {
          link::Control reg;
          for (const link::ServiceSpec& spec : services_) {
            *reg.mutable_register_()->add_services() = spec;
          }
          link_.SendControl(reg);
        }
        return;
      }
      case link::Control::kRegistered:
        registered.push_back(control.registered());
        return;
      case link::Control::kTunnelNotice:
        notices.push_back(control.tunnel_notice());
        return;
      case link::Control::kTunnelData: {
        uint32_t id = control.tunnel_data().stream_id();
        bool answered = false;
        for (const auto& stream : opened_) answered |= stream->id == id && stream->accepted;
        for (const auto& stream : accepted) answered |= stream->id == id;
        tunnel_data.push_back(control.tunnel_data());
        tunnel_data_after_answer.push_back(answered);
        return;
      }
      default:
        return;
    }
  }
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override {
    opens.push_back(open);
    if (!refuse_reason.empty()) {
      stream.Refuse(refuse_reason, refuse_error);
      return;
    }
    if (hold) {
      held.push_back(stream.id());
      return;
    }
    AcceptStream(stream, open);
  }
  TestStream* AcceptHeld(size_t index) {
    Stream* stream = link_.FindStream(held.at(index));
    if (stream == nullptr) return nullptr;
    AcceptStream(*stream, stream->open());
    return accepted.back().get();
  }
  void AcceptStream(Stream& stream, const link::Open& open) {
    auto handler = std::make_unique<TestStream>();
    handler->stream = &stream;
    handler->id = stream.id();
    handler->consume = consume;
    TestStream& raw = *handler;
    accepted.push_back(std::move(handler));
    link::OpenResult result;
    link::TunnelSetup* setup = result.mutable_tunnel();
    setup->set_agent_id(agent_id_);
    setup->set_nonce(std::string(32, 'b'));
    *setup->mutable_hops() = open.tunnel().hops();
    setup->set_security("psk");
    stream.Accept(raw, std::move(result));
    if (on_accept && raw.stream != nullptr) on_accept(raw);
  }
  void OnLinkFailed(Link& link, const absl::Status& status) override {
    closed = true;
    if (tls_) tls_->Close();
  }

 private:
  const std::string agent_id_;
  const std::string credential_;
  const std::string secret_;
  const std::vector<link::ServiceSpec> services_;
  std::unique_ptr<TlsSession> tls_;
  Link link_;
  std::vector<std::unique_ptr<TunnelStream>> opened_;
};

class TunnelBridgeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    char dir_template[] = "/tmp/rdv_tunnel_bridge_test_XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    tap_path_ = dir_ + "/tap.bin";
    std::string yaml = "relay_id: " + std::string(kRelayId) + "\nstate_dir: " + dir_ +
                       "\nworkers: 2\n" + extra_config_ +
                       "agent_listener: {listen: ['127.0.0.1:0']}\n"
                       "admin: {listen: []}\n"
                       "tunnel_tap_file: " +
                       tap_path_ +
                       "\n"
                       "credentials:\n"
                       "  - name: site-a\n"
                       "    secret: secret-of-site-a\n"
                       "    grants: ['pair:*', 'connect:db']\n"
                       "  - name: site-b\n"
                       "    secret: secret-of-site-b\n"
                       "    grants: ['pair:site-*', 'private:db']\n"
                       "  - name: bare\n"
                       "    secret: secret-of-bare\n"
                       "    grants: ['tcp:*']\n";
    absl::StatusOr<RelayConfig> config = ParseRelayConfig(yaml, "relay.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    absl::StatusOr<std::unique_ptr<Relay>> relay = Relay::Create(*std::move(config), &loop_);
    ASSERT_TRUE(relay.ok()) << relay.status();
    relay_ = *std::move(relay);
    ASSERT_TRUE(relay_->Start().ok());
    tasks_ = std::make_unique<LoopTasks>(&loop_);
    absl::StatusOr<SslCtxPtr> ctx = CreateLinkClientContext("");
    ASSERT_TRUE(ctx.ok());
    client_ctx_ = *std::move(ctx);
  }

  void TearDown() override {
    agents_.clear();
    if (tasks_) tasks_->Close();
    if (relay_) {
      relay_->Shutdown();
      uv_run(&loop_, UV_RUN_DEFAULT);
      relay_->Join();
      relay_.reset();
    }
    tasks_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // Runs the test's loop (worker 0) until `done`, for at most 10 s.
  bool RunUntil(const std::function<bool()>& done) {
    return data_path_test::RunLoopUntil(&loop_, done);
  }
  // Runs the loop for `ms` to let anything that would happen happen (for asserting an absence).
  void RunFor(int ms) {
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    RunUntil([&] { return std::chrono::steady_clock::now() >= end; });
  }

  FakeAgent& Connect(const std::string& agent_id, const std::string& credential,
                     std::vector<link::ServiceSpec> services = {},
                     std::vector<std::string> features = {}) {
    size_t expected = services.size();
    std::string secret = "secret-of-" + credential;
    agents_.push_back(
        std::make_unique<FakeAgent>(agent_id, credential, secret, std::move(services)));
    FakeAgent& agent = *agents_.back();
    agent.features = std::move(features);
    agent.Dial(&loop_, *tasks_, client_ctx_.get(), relay_->listening_port("agent"),
               relay_->fingerprint());
    EXPECT_TRUE(RunUntil([&] {
                  return agent.failed || (agent.ready && agent.registered.size() >= expected);
                }) &&
                agent.ready)
        << agent_id << " did not come up";
    return agent;
  }
  void Drop(FakeAgent& agent) {
    agent.Close();
    for (auto it = agents_.begin(); it != agents_.end(); ++it) {
      if (it->get() == &agent) {
        agents_.erase(it);
        return;
      }
    }
  }

  Directory& directory() { return relay_->directory(); }
  RouteResult::Outcome Outcome(link::ServiceKind kind, const std::string& key) {
    return directory().Lookup(kind, key).outcome;
  }
  int WorkerOf(link::ServiceKind kind, const std::string& key) {
    return directory().RouteService(kind, key, 0, "").worker;
  }

  // Connects the serving agent of private service db until its link lands on the same worker
  // as `connector`'s (which holds pair `connector_pair_id`), or on the other one.
  FakeAgent* PlaceServer(const std::string& connector_pair_id, bool cross_worker,
                         std::vector<std::string> features = {}) {
    int connector_worker = WorkerOf(link::PAIR, connector_pair_id);
    for (int attempt = 0; attempt < 40; ++attempt) {
      FakeAgent& server = Connect("agent-b", "site-b", {Spec(link::PRIVATE, "db")}, features);
      if (server.registered.empty() || !server.registered[0].ok()) return nullptr;
      if ((WorkerOf(link::PRIVATE, "db") != connector_worker) == cross_worker) return &server;
      Drop(server);
      if (!RunUntil(
              [&] { return Outcome(link::PRIVATE, "db") == RouteResult::Outcome::kNoLink; })) {
        return nullptr;
      }
    }
    return nullptr;
  }

  // Bytes both ways on a bridged tunnel. Once they arrived, so did any TunnelData for it: the
  // relay sends each end its TunnelData before it delivers any later tunnel byte to it.
  void PingPong(TunnelStream& up, TestStream& down) {
    up.Send("ping", /*end=*/false);
    down.Send("pong", /*end=*/false);
    ASSERT_TRUE(RunUntil([&] { return down.received == "ping" && up.received == "pong"; }));
  }

  uintmax_t TapSize() {
    std::error_code error;
    uintmax_t size = std::filesystem::file_size(tap_path_, error);
    return error ? 0 : size;
  }

  std::string extra_config_;  // more top-level YAML for the relay, set before SetUp
  uv_loop_t loop_;
  std::string dir_;
  std::string tap_path_;
  std::unique_ptr<Relay> relay_;
  std::unique_ptr<LoopTasks> tasks_;
  SslCtxPtr client_ctx_;
  std::vector<std::unique_ptr<FakeAgent>> agents_;
};

TEST_F(TunnelBridgeTest, RegistrationOfTunnelServices) {
  FakeAgent& b = Connect("agent-b", "site-b",
                         {Spec(link::PRIVATE, "db", kPairIdA), Spec(link::PAIR, "site-b", kPairIdA),
                          Spec(link::PAIR, "office", kPairIdB), Spec(link::PAIR, "site-c", "XYZ"),
                          Spec(link::PRIVATE, "web")});
  ASSERT_EQ(b.registered.size(), 5u);
  EXPECT_TRUE(b.registered[0].ok());
  EXPECT_THAT(b.registered[0].routes(), ElementsAre("private db"));
  EXPECT_EQ(b.registered[0].service().pair_id(), "");  // meaningless for a private service
  EXPECT_TRUE(b.registered[1].ok());
  EXPECT_THAT(b.registered[1].routes(), ElementsAre("pair site-b"));
  EXPECT_EQ(b.registered[1].service().pair_id(), kPairIdA);
  EXPECT_FALSE(b.registered[2].ok());  // pair:site-* does not cover "office"
  EXPECT_EQ(b.registered[2].reason(), "name not granted to this credential");
  EXPECT_FALSE(b.registered[3].ok());
  EXPECT_EQ(b.registered[3].reason(), "invalid pair id (expected 32 lowercase hex digits)");
  EXPECT_FALSE(b.registered[4].ok());  // private:db only

  // A pair id is unique relay-wide; private names stay with their credential.
  FakeAgent& a = Connect("agent-a", "site-a",
                         {Spec(link::PAIR, "site-b", kPairIdA), Spec(link::PRIVATE, "db")});
  ASSERT_EQ(a.registered.size(), 2u);
  EXPECT_FALSE(a.registered[0].ok());
  EXPECT_EQ(a.registered[0].reason(),
            "pair site-b (this pairing secret) is held by another credential");
  EXPECT_FALSE(a.registered[1].ok());
  EXPECT_EQ(a.registered[1].reason(), "name not granted to this credential");

  // What a cascade registers upstream.
  std::vector<link::ServiceSpec> tunnels = directory().TunnelServices();
  ASSERT_EQ(tunnels.size(), 2u);

  // Unregister withdraws; the link and its other registrations stay.
  b.Unregister(Spec(link::PRIVATE, "db"));
  ASSERT_TRUE(RunUntil([&] { return directory().TunnelServices().size() == 1; }));
  EXPECT_EQ(directory().TunnelServices()[0].name(), "site-b");
  EXPECT_EQ(Outcome(link::PRIVATE, "db"), RouteResult::Outcome::kNoLink);
  EXPECT_EQ(Outcome(link::PAIR, kPairIdA), RouteResult::Outcome::kFound);
  // Releasing the link withdraws the rest.
  Drop(b);
  ASSERT_TRUE(RunUntil([&] { return directory().TunnelServices().empty(); }));
}

class TunnelBridgeWorkersTest : public TunnelBridgeTest,
                                public ::testing::WithParamInterface<bool> {};

// Bytes both ways, byte-exact, with early data, a slow reader and half-closes, between streams
// on one worker loop or on two.
TEST_P(TunnelBridgeWorkersTest, BridgesPrivateServiceBothWays) {
  bool cross_worker = GetParam();
  FakeAgent& a = Connect("agent-a", "site-a", {Spec(link::PAIR, "site-a-marker", kPairIdB)});
  FakeAgent* server = PlaceServer(kPairIdB, cross_worker);
  ASSERT_NE(server, nullptr) << "could not place the server on the wanted worker";
  FakeAgent& b = *server;
  b.consume = false;  // a slow reader at first
  std::string to_b = PatternBytes(16 * link_test::kMiB + 13, 1);
  std::string to_a = PatternBytes(3 * link_test::kMiB + 7, 2);
  b.on_accept = [&](TestStream& stream) { stream.Send(to_a, /*end=*/true); };
  uint64_t bridged = BridgedTotal();
  int64_t active = ActiveTunnels();
  uintmax_t tap_before = TapSize();

  TunnelStream* up = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_NE(up, nullptr);
  up->Send(to_b, /*end=*/true);  // starts before the answer: early data
  ASSERT_TRUE(RunUntil([&] { return !b.accepted.empty() && up->accepted; }));

  // The far end saw the extended setup, the relay's entrypoint and the opener's address.
  ASSERT_EQ(b.opens.size(), 1u);
  const link::Open& open = b.opens[0];
  EXPECT_EQ(open.service().kind(), link::PRIVATE);
  EXPECT_EQ(open.service().name(), "db");
  EXPECT_EQ(open.entrypoint(), "tunnel");
  EXPECT_EQ(open.client_address(), a.local_address);
  EXPECT_EQ(open.tunnel().agent_id(), "agent-a");
  EXPECT_EQ(open.tunnel().nonce(), std::string(32, 'a'));
  EXPECT_THAT(open.tunnel().hops(), ElementsAre(kRelayId));
  // The opener got the far end's setup, hops included.
  EXPECT_EQ(up->result.tunnel().agent_id(), "agent-b");
  EXPECT_EQ(up->result.tunnel().nonce(), std::string(32, 'b'));
  EXPECT_THAT(up->result.tunnel().hops(), ElementsAre(kRelayId));
  EXPECT_EQ(BridgedTotal(), bridged + 1);
  EXPECT_EQ(ActiveTunnels(), active + 1);

  // While b reads nothing, a's bytes stop at the windows: the relay does not buffer them.
  TestStream& down = *b.accepted[0];
  const size_t b_window = LinkOptions{}.stream_window;
  ASSERT_TRUE(RunUntil([&] { return down.received.size() >= b_window; }));
  RunFor(200);
  EXPECT_EQ(down.received.size(), b_window);  // b's stream window
  EXPECT_GT(up->unsent(), 2 * b_window);

  down.ConsumeAll();
  ASSERT_TRUE(RunUntil([&] { return up->closed.has_value() && down.closed.has_value(); }));
  EXPECT_TRUE(up->closed->ok()) << Message(*up->closed);
  EXPECT_TRUE(down.closed->ok()) << Message(*down.closed);
  EXPECT_TRUE(SameBytes(down.received, to_b));
  EXPECT_TRUE(SameBytes(up->received, to_a));
  EXPECT_TRUE(down.ended);
  EXPECT_TRUE(up->ended);
  ASSERT_TRUE(RunUntil([&] { return ActiveTunnels() == active; }));
  // tunnel_tap_file saw every byte, both ways.
  EXPECT_EQ(TapSize() - tap_before, to_a.size() + to_b.size());
}

TEST_P(TunnelBridgeWorkersTest, ResetAndLinkLossCrossTheBridge) {
  bool cross_worker = GetParam();
  FakeAgent& a = Connect("agent-a", "site-a", {Spec(link::PAIR, "site-a-marker", kPairIdB)});
  FakeAgent* server = PlaceServer(kPairIdB, cross_worker);
  ASSERT_NE(server, nullptr);
  FakeAgent& b = *server;

  TunnelStream* first = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_TRUE(RunUntil([&] { return first->accepted; }));
  first->stream->Reset("client went away");
  ASSERT_TRUE(RunUntil([&] { return b.accepted[0]->closed.has_value(); }));
  EXPECT_EQ(Message(*b.accepted[0]->closed), "reset: client went away");

  TunnelStream* second = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_TRUE(RunUntil([&] { return second->accepted; }));
  b.accepted[1]->stream->Reset("");
  ASSERT_TRUE(RunUntil([&] { return second->closed.has_value(); }));
  EXPECT_EQ(Message(*second->closed), "reset by peer");

  TunnelStream* third = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_TRUE(RunUntil([&] { return third->accepted; }));
  Drop(b);  // the far end's link is lost
  ASSERT_TRUE(RunUntil([&] { return third->closed.has_value(); }));
  EXPECT_EQ(third->closed->code(), absl::StatusCode::kAborted);
  EXPECT_THAT(Message(*third->closed), HasSubstr("link lost"));
  EXPECT_TRUE(a.ready);  // only the stream died
}

TEST_P(TunnelBridgeWorkersTest, OpenerLeavingBeforeTheAnswerCancelsTheFarEnd) {
  bool cross_worker = GetParam();
  FakeAgent& a = Connect("agent-a", "site-a", {Spec(link::PAIR, "site-a-marker", kPairIdB)});
  FakeAgent* server = PlaceServer(kPairIdB, cross_worker);
  ASSERT_NE(server, nullptr);
  FakeAgent& b = *server;
  b.hold = true;

  TunnelStream* up = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  up->Send("early bytes", /*end=*/false);
  ASSERT_TRUE(RunUntil([&] { return b.held.size() == 1; }));
  uint64_t abandoned = Abandoned();
  up->stream->Reset("gave up waiting");
  up->stream = nullptr;
  ASSERT_TRUE(RunUntil([&] { return Abandoned() == abandoned + 1; }));
  TestStream* down = b.AcceptHeld(0);
  ASSERT_NE(down, nullptr);
  ASSERT_TRUE(RunUntil([&] { return down->closed.has_value(); }));
  EXPECT_EQ(Message(*down->closed), "reset: the tunnel's opener went away");
  EXPECT_TRUE(down->received.empty());  // the early bytes went with the opener

  // The same when the opener's whole link goes.
  int64_t active = ActiveTunnels();
  a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_TRUE(RunUntil([&] { return b.held.size() == 2; }));
  Drop(a);
  ASSERT_TRUE(RunUntil([&] { return Abandoned() == abandoned + 2; }));
  down = b.AcceptHeld(1);
  ASSERT_NE(down, nullptr);
  ASSERT_TRUE(RunUntil([&] { return down->closed.has_value(); }));
  EXPECT_EQ(Message(*down->closed), "reset: the tunnel's opener went away");
  EXPECT_EQ(ActiveTunnels(), active);  // never bridged
}

// docs/protocol.md "Tunnel data path": both ends take offers, so each gets a token for its own
// stream (the opener's after its OpenResult), and the two tokens open one spliced data path.
TEST_P(TunnelBridgeWorkersTest, DataPathOfferedWhenBothEndsTakeIt) {
  bool cross_worker = GetParam();
  const std::vector<std::string> takes_data = {std::string(kFeatureTunnelData)};
  FakeAgent& a =
      Connect("agent-a", "site-a", {Spec(link::PAIR, "site-a-marker", kPairIdB)}, takes_data);
  FakeAgent* server = PlaceServer(kPairIdB, cross_worker, takes_data);
  ASSERT_NE(server, nullptr);
  FakeAgent& b = *server;
  uint64_t offers = DataPathOffers();

  TunnelStream* up = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_NE(up, nullptr);
  ASSERT_TRUE(RunUntil([&] { return a.tunnel_data.size() == 1 && b.tunnel_data.size() == 1; }));
  ASSERT_EQ(b.accepted.size(), 1u);
  EXPECT_EQ(a.tunnel_data[0].stream_id(), up->id);
  EXPECT_TRUE(a.tunnel_data_after_answer[0]);  // after the OpenResult that accepted it
  EXPECT_EQ(b.tunnel_data[0].stream_id(), b.accepted[0]->id);
  EXPECT_TRUE(b.tunnel_data_after_answer[0]);
  const std::string& a_token = a.tunnel_data[0].token();
  const std::string& b_token = b.tunnel_data[0].token();
  EXPECT_EQ(a_token.size(), kDataPathTokenSize);
  EXPECT_EQ(b_token.size(), kDataPathTokenSize);
  EXPECT_NE(a_token, b_token);
  EXPECT_EQ(DataPathOffers(), offers + 1);

  DataPathClient a_data;
  DataPathClient b_data;
  a_data.Send(DataPathRequest(a_token));
  b_data.Send(DataPathRequest(b_token));
  a_data.Dial(&loop_, relay_->listening_port("agent"));
  b_data.Dial(&loop_, relay_->listening_port("agent"));
  ASSERT_TRUE(RunUntil([&] { return a_data.received == "OK\r\n" && b_data.received == "OK\r\n"; }));
  a_data.Send("ciphertext from a");
  ASSERT_TRUE(RunUntil([&] { return b_data.received == "OK\r\nciphertext from a"; }));
  a_data.Close();
  b_data.Close();
  // The tunnel stream is untouched by the offer.
  up->Send("on the stream", /*end=*/false);
  ASSERT_TRUE(RunUntil([&] { return b.accepted[0]->received == "on the stream"; }));
}

TEST_F(TunnelBridgeTest, NoDataPathOfferUnlessBothEndsTakeIt) {
  FakeAgent& a = Connect("agent-a", "site-a", {}, {std::string(kFeatureTunnelData)});
  FakeAgent& b = Connect("agent-b", "site-b", {Spec(link::PRIVATE, "db")});
  uint64_t offers = DataPathOffers();
  TunnelStream* up = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_NE(up, nullptr);
  ASSERT_TRUE(RunUntil([&] { return up->accepted && b.accepted.size() == 1; }));
  PingPong(*up, *b.accepted[0]);
  EXPECT_TRUE(a.tunnel_data.empty());
  EXPECT_TRUE(b.tunnel_data.empty());
  EXPECT_EQ(DataPathOffers(), offers);
}

class TunnelBridgeWithoutDataPathTest : public TunnelBridgeTest {
 protected:
  TunnelBridgeWithoutDataPathTest() { extra_config_ = "tunnel_data_path: false\n"; }
};

TEST_F(TunnelBridgeWithoutDataPathTest, NoDataPathOfferWhenTurnedOff) {
  const std::vector<std::string> takes_data = {std::string(kFeatureTunnelData)};
  FakeAgent& a = Connect("agent-a", "site-a", {}, takes_data);
  FakeAgent& b = Connect("agent-b", "site-b", {Spec(link::PRIVATE, "db")}, takes_data);
  uint64_t offers = DataPathOffers();
  TunnelStream* up = a.OpenTunnel(Spec(link::PRIVATE, "db"));
  ASSERT_NE(up, nullptr);
  ASSERT_TRUE(RunUntil([&] { return up->accepted && b.accepted.size() == 1; }));
  PingPong(*up, *b.accepted[0]);
  EXPECT_TRUE(a.tunnel_data.empty());
  EXPECT_TRUE(b.tunnel_data.empty());
  EXPECT_EQ(DataPathOffers(), offers);
}

INSTANTIATE_TEST_SUITE_P(SameAndCrossWorker, TunnelBridgeWorkersTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "CrossWorker" : "SameWorker";
                         });

TEST_F(TunnelBridgeTest, RefusalsCarryReasonAndError) {
  FakeAgent& a = Connect("agent-a", "site-a");
  FakeAgent& bare = Connect("agent-x", "bare");
  auto open_and_wait = [&](FakeAgent& agent, const link::ServiceSpec& service,
                           std::vector<std::string> hops = {}, bool with_setup = true) {
    TunnelStream* stream = agent.OpenTunnel(service, std::move(hops), with_setup);
    EXPECT_NE(stream, nullptr);
    EXPECT_TRUE(RunUntil([&] { return stream->closed.has_value(); }));
    EXPECT_FALSE(stream->accepted);
    return stream;
  };

  uint64_t no_route = Refusals("no_route");
  TunnelStream* s = open_and_wait(a, Spec(link::PRIVATE, "db"));
  EXPECT_EQ(s->result.reason(), "no agent serves private service 'db'");
  EXPECT_EQ(s->result.error(), link::HOST_UNREACHABLE);
  s = open_and_wait(a, Spec(link::PAIR, "site-b", kPairIdA));
  EXPECT_EQ(s->result.reason(), "no agent holds pair 'site-b' with this pairing secret");
  EXPECT_EQ(s->result.error(), link::HOST_UNREACHABLE);
  EXPECT_EQ(Refusals("no_route"), no_route + 2);

  uint64_t not_granted = Refusals("not_granted");
  s = open_and_wait(bare, Spec(link::PRIVATE, "db"));
  EXPECT_EQ(s->result.reason(), "not granted");
  EXPECT_EQ(s->result.error(), link::NOT_ALLOWED);
  s = open_and_wait(a, Spec(link::PRIVATE, "cache"));  // connect:db only
  EXPECT_EQ(s->result.error(), link::NOT_ALLOWED);
  EXPECT_EQ(Refusals("not_granted"), not_granted + 2);

  uint64_t not_tunnel = Refusals("not_tunnel");
  s = open_and_wait(a, Spec(link::TCP, "db"));
  EXPECT_EQ(s->result.error(), link::NOT_ALLOWED);
  s = open_and_wait(a, Spec(link::PRIVATE, "db"), {}, /*with_setup=*/false);
  EXPECT_EQ(s->result.reason(),
            "the relay accepts only tunnel streams (private or pair) from agents");
  EXPECT_EQ(Refusals("not_tunnel"), not_tunnel + 2);

  uint64_t loop = Refusals("loop");
  s = open_and_wait(a, Spec(link::PRIVATE, "db"), {"relay-x", kRelayId});
  EXPECT_EQ(s->result.reason(), "tunnel loop: relay relay-t is already on the path");
  EXPECT_EQ(Refusals("loop"), loop + 1);
  std::vector<std::string> sixteen;
  for (int i = 0; i < kMaxTunnelHops; ++i) sixteen.push_back("relay-" + std::to_string(i));
  s = open_and_wait(a, Spec(link::PRIVATE, "db"), sixteen);
  EXPECT_EQ(s->result.reason(), "tunnel path longer than 16 relays");

  s = open_and_wait(a, Spec(link::PAIR, "site-b", "not-a-pair-id"));
  EXPECT_EQ(s->result.reason(), "invalid pair id (expected 32 lowercase hex digits)");

  // The far end's refusal travels back unchanged.
  FakeAgent& b = Connect("agent-b", "site-b", {Spec(link::PRIVATE, "db")});
  b.refuse_reason = "connect 127.0.0.1:5432: connection refused";
  b.refuse_error = link::CONNECTION_REFUSED;
  uint64_t far_refused = Refusals("far_end_refused");
  s = open_and_wait(a, Spec(link::PRIVATE, "db"));
  EXPECT_EQ(s->result.reason(), "connect 127.0.0.1:5432: connection refused");
  EXPECT_EQ(s->result.error(), link::CONNECTION_REFUSED);
  EXPECT_EQ(Refusals("far_end_refused"), far_refused + 1);
  EXPECT_TRUE(a.ready);
  EXPECT_TRUE(b.ready);
}

TEST_F(TunnelBridgeTest, PairsMatchOnPairIdAndAWrongSecretIsTold) {
  FakeAgent& b = Connect("agent-b", "site-b", {Spec(link::PAIR, "site-b", kPairIdA)});
  FakeAgent& a = Connect("agent-a", "site-a");
  b.on_accept = [](TestStream& stream) { stream.Send("pong", /*end=*/true); };

  uint64_t mismatch = Refusals("pair_secret_mismatch");
  TunnelStream* wrong = a.OpenTunnel(Spec(link::PAIR, "site-b", kPairIdB));
  ASSERT_TRUE(RunUntil([&] { return wrong->closed.has_value() && !b.notices.empty(); }));
  EXPECT_EQ(wrong->result.reason(), "pair 'site-b' is registered with a different pairing secret");
  EXPECT_EQ(wrong->result.error(), link::HOST_UNREACHABLE);
  EXPECT_EQ(Refusals("pair_secret_mismatch"), mismatch + 1);
  EXPECT_TRUE(b.opens.empty());
  ASSERT_EQ(b.notices.size(), 1u);
  EXPECT_EQ(b.notices[0].service().pair_id(), kPairIdA);  // the holder's own registration
  EXPECT_EQ(b.notices[0].detail(),
            "an agent (agent-a) asked for pair 'site-b' with a different pairing secret");

  TunnelStream* right = a.OpenTunnel(Spec(link::PAIR, "site-b", kPairIdA));
  right->Send("ping", /*end=*/true);
  ASSERT_TRUE(RunUntil([&] {
    return right->closed.has_value() && b.accepted.size() == 1 && b.accepted[0]->closed.has_value();
  }));
  EXPECT_TRUE(right->closed->ok()) << Message(*right->closed);
  EXPECT_EQ(right->received, "pong");
  EXPECT_TRUE(b.accepted[0]->closed->ok()) << Message(*b.accepted[0]->closed);
  EXPECT_EQ(b.accepted[0]->received, "ping");
  EXPECT_EQ(b.opens[0].service().pair_id(), kPairIdA);
  EXPECT_THAT(right->result.tunnel().hops(), ElementsAre(kRelayId));
}

}  // namespace
}  // namespace rdv
