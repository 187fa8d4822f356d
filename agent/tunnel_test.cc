#include "agent/tunnel.h"

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "agent/connect_listener.h"
#include "common/link_test_support.h"
#include "common/metrics.h"
#include "common/secure_channel.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using link_test::LinkPair;
using link_test::Message;
using link_test::TestLinkHandler;
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
    if (other != nullptr) {
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
      if (tamper_nonce_) (*open.mutable_tunnel()->mutable_nonce())[0] ^= 1;
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
