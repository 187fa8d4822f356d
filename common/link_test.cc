// Tests of the link multiplexer (docs/protocol.md, "Streams"): opening, data, half-close,
// reset, limits, GoAway and ping. Flow control and protocol violations are in
// link_flow_test.cc; the in-memory fixture is in link_test_support.h.
#include "common/link.h"

#include <set>
#include <string>
#include <vector>

#include "common/link_test_support.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv::link_test {
namespace {

// ---- Opening, accepting, refusing ----

TEST(LinkTest, OpenCarriesTheRequestAndAcceptReachesTheOpener) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromRelay(OpenFor("db"));
  ASSERT_NE(opened, nullptr);
  EXPECT_EQ(opened->id, 2u);  // the relay side opens even ids
  pair.Pump();

  ASSERT_EQ(pair.agent_handler.opens.size(), 1u);
  const link::Open& open = pair.agent_handler.opens[0];
  EXPECT_EQ(open.stream_id(), 2u);
  EXPECT_EQ(open.service().name(), "db");
  EXPECT_EQ(open.service().kind(), link::TCP);
  EXPECT_EQ(open.client_address(), "192.0.2.7:40000");
  EXPECT_EQ(open.entrypoint(), "tcp:2020");
  ASSERT_EQ(pair.agent_handler.accepted.count(2), 1u);
  EXPECT_EQ(pair.agent_handler.accepted[2]->stream->open().service().name(), "db");
  EXPECT_TRUE(opened->accepted);
  EXPECT_EQ(pair.relay().stream_count(), 1u);
  EXPECT_EQ(pair.agent().stream_count(), 1u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, StreamIdsHaveTheOpenersParity) {
  LinkPair pair;
  std::vector<uint32_t> relay_ids;
  std::vector<uint32_t> agent_ids;
  for (int i = 0; i < 3; ++i) {
    relay_ids.push_back(pair.OpenFromRelay()->id);
    agent_ids.push_back(pair.OpenFromAgent()->id);
  }
  EXPECT_EQ(relay_ids, (std::vector<uint32_t>{2, 4, 6}));
  EXPECT_EQ(agent_ids, (std::vector<uint32_t>{1, 3, 5}));
  pair.Pump();
  EXPECT_EQ(pair.agent_handler.accepted.size(), 3u);
  EXPECT_EQ(pair.relay_handler.accepted.size(), 3u);
  EXPECT_EQ(pair.relay().stream_count(), 6u);
}

TEST(LinkTest, RefusalReasonArrivesInOnStreamClosed) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kRefuse;
  pair.agent_handler.refuse_reason = "connect 127.0.0.1:80: connection refused";
  TestStream* opened = pair.OpenFromRelay(OpenFor("web"));
  opened->Send(PatternBytes(100 * kKiB, 1));  // data sent before the refusal is dropped
  pair.Pump();

  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_EQ(opened->closed->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Message(*opened->closed), "connect 127.0.0.1:80: connection refused");
  EXPECT_FALSE(opened->accepted);
  EXPECT_EQ(pair.relay().stream_count(), 0u);
  EXPECT_EQ(pair.agent().stream_count(), 0u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, DeferredAcceptAndDeferredRefuse) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* first = pair.OpenFromRelay();
  TestStream* second = pair.OpenFromRelay();
  pair.Pump();
  ASSERT_EQ(pair.agent_handler.held.size(), 2u);
  EXPECT_FALSE(first->accepted);

  ASSERT_NE(pair.agent_handler.AcceptHeld(pair.agent(), first->id), nullptr);
  Stream* refused = pair.agent().FindStream(second->id);
  ASSERT_NE(refused, nullptr);
  refused->Refuse("no");
  pair.Pump();
  EXPECT_TRUE(first->accepted);
  EXPECT_FALSE(first->closed.has_value());
  ASSERT_TRUE(second->closed.has_value());
  EXPECT_EQ(Message(*second->closed), "no");
  EXPECT_EQ(pair.agent().FindStream(second->id), nullptr);
}

TEST(LinkTest, AcceptAndRefuseAreIgnoredOnceDecided) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromRelay();
  pair.Pump();
  Stream* stream = pair.agent().FindStream(opened->id);
  ASSERT_NE(stream, nullptr);
  stream->Refuse("too late");  // already accepted
  TestStream other;
  stream->Accept(other);  // already accepted
  pair.Pump();
  EXPECT_TRUE(opened->accepted);
  EXPECT_FALSE(opened->closed.has_value());
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
  // An opener cannot accept its own stream.
  ASSERT_NE(opened->stream, nullptr);
  opened->stream->Accept(other);
  pair.Pump();
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

// ---- Data, half-close, reset ----

TEST(LinkTest, DataBothWays) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromRelay();
  pair.Pump();
  TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
  opened->Send("GET / HTTP/1.1\r\nHost: a\r\n\r\n", /*end=*/false);
  accepted.Send("HTTP/1.1 200 OK\r\n\r\n", /*end=*/false);
  pair.Pump();
  EXPECT_EQ(accepted.received, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(opened->received, "HTTP/1.1 200 OK\r\n\r\n");
  EXPECT_FALSE(opened->ended);
  EXPECT_FALSE(accepted.ended);
}

TEST(LinkTest, LargeTransfersBothWaysAreByteExact) {
  LinkPair pair;
  std::string down = PatternBytes(8 * kMiB + 12345, 11);
  std::string up = PatternBytes(6 * kMiB + 777, 12);
  pair.agent_handler.on_accept = [&](TestStream& s) { s.Send(up); };
  TestStream* opened = pair.OpenFromRelay();
  opened->Send(down);
  pair.Pump();

  TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
  EXPECT_TRUE(SameBytes(accepted.received, down));
  EXPECT_TRUE(SameBytes(opened->received, up));
  ASSERT_TRUE(opened->closed.has_value());
  ASSERT_TRUE(accepted.closed.has_value());
  EXPECT_TRUE(opened->closed->ok()) << *opened->closed;
  EXPECT_TRUE(accepted.closed->ok()) << *accepted.closed;
  EXPECT_EQ(pair.relay().stream_count(), 0u);
  EXPECT_EQ(pair.agent().stream_count(), 0u);
  // The windows were used, not bypassed: a 1 MiB stream window caps what is in flight.
  EXPECT_EQ(pair.relay_audit().max_stream_in_flight(), 1 * kMiB);
  EXPECT_EQ(pair.agent_audit().max_stream_in_flight(), 1 * kMiB);
}

TEST(LinkTest, HalfCloseByOpenerFirst) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromRelay();
  opened->Send("request");  // and End()
  pair.Pump();
  TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
  EXPECT_EQ(accepted.received, "request");
  EXPECT_TRUE(accepted.ended);
  EXPECT_FALSE(accepted.closed.has_value());  // its own direction is still open
  EXPECT_FALSE(opened->closed.has_value());
  ASSERT_NE(opened->stream, nullptr);
  EXPECT_TRUE(opened->stream->write_ended());
  EXPECT_FALSE(opened->stream->Write("more"));  // nothing after End

  // The other direction keeps flowing after the half-close.
  std::string reply = PatternBytes(3 * kMiB, 5);
  accepted.Send(reply);
  pair.Pump();
  EXPECT_TRUE(SameBytes(opened->received, reply));
  EXPECT_TRUE(opened->ended);
  ASSERT_TRUE(opened->closed.has_value());
  ASSERT_TRUE(accepted.closed.has_value());
  EXPECT_TRUE(opened->closed->ok());
  EXPECT_TRUE(accepted.closed->ok());
  EXPECT_EQ(accepted.received, "request");
  EXPECT_EQ(pair.relay().stream_count() + pair.agent().stream_count(), 0u);
}

TEST(LinkTest, HalfCloseByAcceptorFirst) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromAgent();
  pair.Pump();
  TestStream& accepted = *pair.relay_handler.accepted.at(opened->id);
  accepted.Send("banner");
  pair.Pump();
  EXPECT_TRUE(opened->ended);
  EXPECT_EQ(opened->received, "banner");
  EXPECT_FALSE(opened->closed.has_value());

  std::string upload = PatternBytes(2 * kMiB + 3, 6);
  opened->Send(upload);
  pair.Pump();
  EXPECT_TRUE(SameBytes(accepted.received, upload));
  EXPECT_TRUE(accepted.ended);
  ASSERT_TRUE(opened->closed.has_value());
  ASSERT_TRUE(accepted.closed.has_value());
  EXPECT_TRUE(opened->closed->ok());
  EXPECT_TRUE(accepted.closed->ok());
}

TEST(LinkTest, EndWithNothingWrittenClosesCleanly) {
  LinkPair pair;
  pair.agent_handler.on_accept = [](TestStream& s) { s.Send(""); };
  TestStream* opened = pair.OpenFromRelay();
  opened->Send("");
  pair.Pump();
  TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
  EXPECT_TRUE(opened->ended);
  EXPECT_TRUE(accepted.ended);
  ASSERT_TRUE(opened->closed.has_value());
  ASSERT_TRUE(accepted.closed.has_value());
  EXPECT_TRUE(opened->closed->ok());
  EXPECT_TRUE(accepted.closed->ok());
}

TEST(LinkTest, ResetByOpener) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromRelay();
  pair.Pump();
  TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
  // Data in flight toward the resetting side is dropped there without harm.
  accepted.Send(PatternBytes(512 * kKiB, 3), /*end=*/false);
  ASSERT_NE(opened->stream, nullptr);
  opened->stream->Reset("client went away");
  EXPECT_FALSE(opened->closed.has_value()) << "Reset reports nothing to its caller";
  opened->stream = nullptr;  // gone once Reset returns
  pair.Pump();

  EXPECT_FALSE(opened->closed.has_value());
  ASSERT_TRUE(accepted.closed.has_value());
  EXPECT_EQ(accepted.closed->code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Message(*accepted.closed), "reset: client went away");
  EXPECT_EQ(pair.relay().stream_count() + pair.agent().stream_count(), 0u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, ResetByAcceptorWithoutReason) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromAgent();
  opened->Send(PatternBytes(3 * kMiB, 4), /*end=*/false);
  pair.Pump();
  TestStream& accepted = *pair.relay_handler.accepted.at(opened->id);
  ASSERT_NE(accepted.stream, nullptr);
  accepted.stream->Reset("");
  pair.Pump();
  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_EQ(opened->closed->code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Message(*opened->closed), "reset by peer");
  EXPECT_FALSE(accepted.closed.has_value());
  EXPECT_EQ(pair.relay().stream_count() + pair.agent().stream_count(), 0u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, ResetBeforeAcceptRemovesTheHeldStream) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* opened = pair.OpenFromRelay();
  opened->Send("early", /*end=*/false);
  pair.Pump();
  ASSERT_NE(opened->stream, nullptr);
  opened->stream->Reset("changed my mind");
  pair.Pump();
  // The agent's connect finishes later and finds the stream gone.
  EXPECT_EQ(pair.agent_handler.AcceptHeld(pair.agent(), opened->id), nullptr);
  EXPECT_EQ(pair.agent().stream_count(), 0u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, DeferredStreamHearsOfResetAndLinkLossOnly) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* reset = pair.OpenFromRelay();
  TestStream* kept = pair.OpenFromRelay();
  TestStream* lost = pair.OpenFromRelay();
  reset->Send("early", /*end=*/false);
  kept->Send("early data", /*end=*/true);
  pair.Pump();
  TestStream watch_reset, watch_kept, watch_lost;
  pair.agent().FindStream(reset->id)->Defer(watch_reset);
  pair.agent().FindStream(kept->id)->Defer(watch_kept);
  pair.agent().FindStream(lost->id)->Defer(watch_lost);

  // Buffered data is not delivered to the deferring handler.
  reset->stream->Reset("opener gave up");
  pair.Pump();
  EXPECT_TRUE(watch_reset.received.empty());
  ASSERT_TRUE(watch_reset.closed.has_value());
  EXPECT_EQ(Message(*watch_reset.closed), "reset: opener gave up");
  EXPECT_FALSE(watch_kept.closed.has_value());
  EXPECT_TRUE(watch_kept.received.empty());

  // Accepting later delivers what waited, to the accepting handler.
  TestStream* accepted = pair.agent_handler.AcceptHeld(pair.agent(), kept->id);
  ASSERT_NE(accepted, nullptr);
  EXPECT_EQ(accepted->received, "early data");
  EXPECT_TRUE(accepted->ended);
  EXPECT_TRUE(watch_kept.received.empty());

  pair.agent().Close(absl::UnavailableError("transport closed"));
  ASSERT_TRUE(watch_lost.closed.has_value());
  EXPECT_EQ(Message(*watch_lost.closed), "link lost: transport closed");
  EXPECT_FALSE(watch_kept.closed.has_value());
}

TEST(LinkTest, ResettingFromInsideOnStreamDataIsSafe) {
  struct ResetOnData : TestStream {
    void OnStreamData(Stream& s, std::string_view data) override {
      TestStream::OnStreamData(s, data);
      s.Reset("seen enough");
      stream = nullptr;
    }
  };
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* opened = pair.OpenFromRelay();
  opened->Send(PatternBytes(2 * kMiB, 8));
  pair.Pump();
  ResetOnData handler;
  Stream* stream = pair.agent().FindStream(opened->id);
  ASSERT_NE(stream, nullptr);
  handler.stream = stream;
  stream->Accept(handler);  // delivers the early data, which resets
  pair.Pump();
  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_EQ(Message(*opened->closed), "reset: seen enough");
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, EarlyDataIsDeliveredOnAccept) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* opened = pair.OpenFromRelay();
  opened->Send("GET / HTTP/1.1\r\n\r\n");  // written and ended before any answer
  pair.Pump();
  EXPECT_TRUE(pair.agent_handler.accepted.empty());

  TestStream* accepted = pair.agent_handler.AcceptHeld(pair.agent(), opened->id);
  ASSERT_NE(accepted, nullptr);
  // Delivered inside Accept(), end included.
  EXPECT_EQ(accepted->received, "GET / HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(accepted->ended);
  accepted->Send("HTTP/1.1 204 No Content\r\n\r\n");
  pair.Pump();
  EXPECT_TRUE(opened->accepted);
  EXPECT_EQ(opened->received, "HTTP/1.1 204 No Content\r\n\r\n");
  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_TRUE(opened->closed->ok());
  ASSERT_TRUE(accepted->closed.has_value());
  EXPECT_TRUE(accepted->closed->ok());
}

TEST(LinkTest, EarlyDataIsBoundedByTheStreamWindowUntilAccept) {
  LinkOptions one_mib;
  one_mib.stream_window = 1 * kMiB;
  LinkPair pair(one_mib, one_mib);
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  std::string body = PatternBytes(3 * kMiB + 1, 9);
  TestStream* opened = pair.OpenFromRelay();
  opened->Send(body);
  pair.Pump();
  // Nothing consumed the buffered bytes yet: exactly one window is in flight, the rest waits.
  EXPECT_EQ(pair.relay_audit().stream_in_flight(opened->id), 1 * kMiB);
  ASSERT_NE(opened->stream, nullptr);
  EXPECT_EQ(opened->stream->pending_bytes() + opened->unsent(), 2 * kMiB + 1);

  TestStream* accepted = pair.agent_handler.AcceptHeld(pair.agent(), opened->id);
  ASSERT_NE(accepted, nullptr);
  EXPECT_EQ(accepted->received.size(), 1 * kMiB);
  pair.Pump();
  EXPECT_TRUE(SameBytes(accepted->received, body));
  EXPECT_TRUE(accepted->ended);
}

// ---- Limits, GoAway, ping ----

TEST(LinkTest, StreamLimitRefusesOpensBeyondMaxStreams) {
  LinkOptions relay_options;
  relay_options.max_streams = 5;
  LinkOptions agent_options;
  agent_options.max_streams = 3;
  LinkPair pair(relay_options, agent_options);
  std::vector<TestStream*> streams;
  for (int i = 0; i < 5; ++i) {
    streams.push_back(pair.OpenFromRelay());
    ASSERT_NE(streams.back(), nullptr);
  }
  EXPECT_EQ(pair.OpenFromRelay(), nullptr) << "the opener's own limit";
  pair.Pump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(streams[i]->accepted) << i;
    EXPECT_FALSE(streams[i]->closed.has_value()) << i;
  }
  for (int i = 3; i < 5; ++i) {
    ASSERT_TRUE(streams[i]->closed.has_value()) << i;
    EXPECT_EQ(streams[i]->closed->code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(Message(*streams[i]->closed), "too many streams on this link");
  }
  EXPECT_EQ(pair.agent().stream_count(), 3u);
  EXPECT_EQ(pair.agent_handler.opens.size(), 3u) << "refused opens never reach the handler";

  // A finished stream makes room again.
  streams[0]->Send("");
  pair.agent_handler.accepted.at(streams[0]->id)->Send("");
  pair.Pump();
  ASSERT_TRUE(streams[0]->closed.has_value());
  TestStream* again = pair.OpenFromRelay();
  ASSERT_NE(again, nullptr);
  pair.Pump();
  EXPECT_TRUE(again->accepted);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, GoAwayStopsNewStreamsAndOpenOnesFinish) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromRelay();
  pair.Pump();
  pair.relay().SendGoAway("relay draining");
  EXPECT_EQ(pair.OpenFromRelay(), nullptr) << "the side going away opens nothing either";
  pair.Pump();
  ASSERT_EQ(pair.agent_handler.controls.size(), 1u);
  ASSERT_TRUE(pair.agent_handler.controls[0].has_go_away());
  EXPECT_EQ(pair.agent_handler.controls[0].go_away().reason(), "relay draining");
  EXPECT_TRUE(pair.agent().peer_going_away());
  EXPECT_FALSE(pair.relay().peer_going_away());
  EXPECT_EQ(pair.OpenFromAgent(), nullptr);

  std::string body = PatternBytes(2 * kMiB, 61);
  TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
  opened->Send(body);
  accepted.Send("done");
  pair.Pump();
  EXPECT_TRUE(SameBytes(accepted.received, body));
  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_TRUE(opened->closed->ok());

  pair.relay().SendGoAway("again");  // announced once only
  pair.Pump();
  EXPECT_EQ(pair.agent_handler.controls.size(), 1u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkTest, OpenCrossingGoAwayIsRefused) {
  LinkPair pair;
  TestStream* opened = pair.OpenFromAgent();  // on the wire when the GoAway leaves
  pair.relay().SendGoAway("draining");
  pair.Pump();
  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_EQ(opened->closed->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Message(*opened->closed), "link is going away");
  EXPECT_TRUE(pair.relay_handler.opens.empty());
  EXPECT_EQ(pair.relay().stream_count() + pair.agent().stream_count(), 0u);
}

TEST(LinkTest, PingIsAnsweredWithItsPayload) {
  LinkPair pair;
  pair.relay().SendPing(0x0123456789abcdefULL);
  pair.agent().SendPing(0);
  pair.agent().SendPing(~uint64_t{0});
  pair.Pump();
  EXPECT_EQ(pair.relay_handler.pongs, (std::vector<uint64_t>{0x0123456789abcdefULL}));
  EXPECT_EQ(pair.agent_handler.pongs, (std::vector<uint64_t>{0, ~uint64_t{0}}));
  EXPECT_EQ(pair.relay_tap().frames(FrameType::kPong), 2);
  EXPECT_EQ(pair.agent_tap().frames(FrameType::kPong), 1);
  EXPECT_TRUE(pair.relay_handler.controls.empty());
}

TEST(LinkTest, ControlMessagesReachTheLinkHandler) {
  LinkPair pair;
  link::Control hello;
  hello.mutable_hello()->set_version(1);
  hello.mutable_hello()->set_agent_id("agent-1");
  pair.agent().SendControl(hello);
  link::Control registered;
  registered.mutable_registered()->set_ok(true);
  registered.mutable_registered()->add_routes("http://www.orang.com/");
  pair.relay().SendControl(registered);
  pair.Pump();
  ASSERT_EQ(pair.relay_handler.controls.size(), 1u);
  EXPECT_EQ(pair.relay_handler.controls[0].hello().agent_id(), "agent-1");
  ASSERT_EQ(pair.agent_handler.controls.size(), 1u);
  EXPECT_EQ(pair.agent_handler.controls[0].registered().routes(0), "http://www.orang.com/");
}

TEST(LinkTest, CloseFailsEveryStreamAndReportsOnce) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* a = pair.OpenFromRelay();
  TestStream* b = pair.OpenFromRelay();
  TestStream* c = pair.OpenFromAgent();
  a->Send(PatternBytes(3 * kMiB, 71), /*end=*/false);
  pair.Pump();
  TestStream& c_accepted = *pair.relay_handler.accepted.at(c->id);

  pair.relay().Close(absl::CancelledError("relay shutting down"));
  EXPECT_TRUE(pair.relay().failed());
  EXPECT_EQ(pair.relay_handler.failures, 1);
  EXPECT_EQ(pair.relay_handler.failure.code(), absl::StatusCode::kCancelled);
  for (TestStream* s : {a, b, &c_accepted}) {
    ASSERT_TRUE(s->closed.has_value());
    EXPECT_EQ(s->closed->code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(Message(*s->closed), "link lost: relay shutting down");
  }
  EXPECT_EQ(pair.relay().stream_count(), 0u);
  EXPECT_EQ(pair.OpenFromRelay(), nullptr);

  pair.relay().Close(absl::InternalError("twice"));
  EXPECT_EQ(pair.relay_handler.failures, 1);
  // A failed link sends nothing more.
  pair.relay().SendPing(1);
  link::Control go_away;
  go_away.mutable_go_away();
  pair.relay().SendControl(go_away);
  EXPECT_EQ(pair.relay_transport().QueuedBytes(), 0u);
}

// ---- Scale ----

TEST(LinkTest, ThousandStreamsWithChecksums) {
  LinkPair pair;
  auto request_size = [](uint32_t id) { return (id * 7919u) % (24 * kKiB); };
  auto reply_size = [](uint32_t id) { return (id * 104729u) % (24 * kKiB); };
  auto reply = [&](TestStream& s) { s.Send(PatternBytes(reply_size(s.id), s.id * 2 + 1)); };
  pair.agent_handler.on_accept = reply;
  pair.relay_handler.on_accept = reply;

  std::vector<TestStream*> opened;
  for (int i = 0; i < 1000; ++i) {
    TestStream* s = i % 2 == 0 ? pair.OpenFromRelay() : pair.OpenFromAgent();
    ASSERT_NE(s, nullptr);
    s->Send(PatternBytes(request_size(s->id), s->id * 2));
    opened.push_back(s);
    if (i % 100 == 99) pair.PumpOnce();  // open while others are mid-transfer
  }
  pair.Pump();

  std::set<uint32_t> ids;
  for (TestStream* s : opened) {
    SCOPED_TRACE(s->id);
    ids.insert(s->id);
    TestLinkHandler& acceptor = s->id % 2 == 0 ? pair.agent_handler : pair.relay_handler;
    TestStream& peer = *acceptor.accepted.at(s->id);
    EXPECT_EQ(peer.received.size(), request_size(s->id));
    EXPECT_EQ(Checksum(peer.received), Checksum(PatternBytes(request_size(s->id), s->id * 2)));
    EXPECT_EQ(s->received.size(), reply_size(s->id));
    EXPECT_EQ(Checksum(s->received), Checksum(PatternBytes(reply_size(s->id), s->id * 2 + 1)));
    ASSERT_TRUE(s->closed.has_value());
    ASSERT_TRUE(peer.closed.has_value());
    EXPECT_TRUE(s->closed->ok());
    EXPECT_TRUE(peer.closed->ok());
  }
  EXPECT_EQ(ids.size(), 1000u);
  EXPECT_EQ(pair.relay().stream_count(), 0u);
  EXPECT_EQ(pair.agent().stream_count(), 0u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

}  // namespace
}  // namespace rdv::link_test
