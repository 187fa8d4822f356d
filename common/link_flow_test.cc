// Tests of the link multiplexer (docs/protocol.md, "Flow control"): credit, slow readers and
// backed-up transports, and the bytes a well-behaved Link never sends. The in-memory fixture
// is in link_test_support.h.
#include <string>
#include <vector>

#include "common/frame.h"
#include "common/link.h"
#include "common/link_test_support.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv::link_test {
namespace {

using ::testing::HasSubstr;

// ---- Flow control ----

// The acceptance item: a receiver that never consumes stalls its own stream and nothing else.
// The stalled streams together hold more than the whole link window, so the test fails if link
// credit were tied to consumption, and it fails if a stream waiting for its own WINDOW blocked
// the link's send queue.
class SlowReaderTest : public ::testing::TestWithParam<bool> {};

TEST_P(SlowReaderTest, StallsOnlyItsOwnStream) {
  const bool relay_sends = GetParam();
  LinkOptions options;
  options.stream_window = 256 * kKiB;
  options.link_window = 1 * kMiB;
  LinkPair pair(options, options);
  constexpr int kStalled = 6;  // 6 x 256 KiB held > 1 MiB link window
  TestLinkHandler& receiver = relay_sends ? pair.agent_handler : pair.relay_handler;
  auto open = [&] { return relay_sends ? pair.OpenFromRelay() : pair.OpenFromAgent(); };

  receiver.consume = false;
  receiver.on_accept = [](TestStream& s) { s.Send(""); };  // the receiver only listens
  std::vector<TestStream*> stalled;
  std::vector<std::string> stalled_bodies;
  for (int i = 0; i < kStalled; ++i) {
    stalled.push_back(open());
    stalled_bodies.push_back(PatternBytes(2 * kMiB, 100 + i));
    stalled.back()->Send(stalled_bodies.back());
  }
  pair.Pump();
  receiver.consume = true;
  TestStream* fast = open();
  std::string fast_body = PatternBytes(48 * kMiB, 200);
  fast->Send(fast_body);
  pair.Pump();

  TestStream& fast_receiver = *receiver.accepted.at(fast->id);
  EXPECT_TRUE(SameBytes(fast_receiver.received, fast_body));
  ASSERT_TRUE(fast->closed.has_value());
  EXPECT_TRUE(fast->closed->ok());
  for (int i = 0; i < kStalled; ++i) {
    TestStream& r = *receiver.accepted.at(stalled[i]->id);
    EXPECT_EQ(r.received.size(), 256 * kKiB) << "stalled stream " << i;
    EXPECT_FALSE(r.ended);
    EXPECT_FALSE(stalled[i]->closed.has_value());
  }

  // Consuming reopens every stalled stream; all of them finish byte-exact.
  for (TestStream* s : stalled) receiver.accepted.at(s->id)->ConsumeAll();
  pair.Pump();
  for (int i = 0; i < kStalled; ++i) {
    TestStream& r = *receiver.accepted.at(stalled[i]->id);
    EXPECT_TRUE(SameBytes(r.received, stalled_bodies[i])) << "stream " << i;
    ASSERT_TRUE(stalled[i]->closed.has_value());
    EXPECT_TRUE(stalled[i]->closed->ok());
  }
  EXPECT_EQ(pair.relay().stream_count() + pair.agent().stream_count(), 0u);
  CreditAudit& sender = relay_sends ? pair.relay_audit() : pair.agent_audit();
  EXPECT_LE(sender.max_link_in_flight(), 1 * kMiB);
}

INSTANTIATE_TEST_SUITE_P(BothDirections, SlowReaderTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "RelaySends" : "AgentSends"; });

TEST(LinkFlowTest, SenderNeverExceedsTheStreamWindow) {
  LinkOptions options;
  options.stream_window = 256 * kKiB;
  LinkPair pair(options, options);
  pair.agent_handler.consume = false;
  TestStream* opened = pair.OpenFromRelay();
  std::string body = PatternBytes(5 * kMiB, 21);
  opened->Send(body);
  pair.Pump();
  TestStream& reader = *pair.agent_handler.accepted.at(opened->id);
  EXPECT_EQ(pair.relay_audit().stream_in_flight(opened->id), 256 * kKiB);
  EXPECT_EQ(reader.received.size(), 256 * kKiB);

  // Credit is returned in batches of a quarter window: less than that sends no WINDOW.
  int windows_before = pair.agent_tap().frames(FrameType::kWindow);
  Stream* reading = pair.agent().FindStream(opened->id);
  ASSERT_NE(reading, nullptr);
  reading->Consumed(64 * kKiB - 1);
  pair.Pump();
  EXPECT_EQ(pair.agent_tap().stream_credit_returned(opened->id), 0u);
  EXPECT_EQ(reader.received.size(), 256 * kKiB);
  // One more byte completes the batch: exactly that much more data follows, no more.
  reading = pair.agent().FindStream(opened->id);
  ASSERT_NE(reading, nullptr);
  reading->Consumed(1);
  pair.Pump();
  EXPECT_GT(pair.agent_tap().frames(FrameType::kWindow), windows_before);
  EXPECT_EQ(pair.agent_tap().stream_credit_returned(opened->id), 64 * kKiB);
  EXPECT_EQ(reader.received.size(), 320 * kKiB);
  EXPECT_EQ(pair.relay_audit().stream_in_flight(opened->id), 256 * kKiB);

  // Returning the rest lets everything through, never more than a window at a time.
  reader.unconsumed -= 64 * kKiB;  // returned by hand above
  reader.ConsumeAll();
  pair.Pump();
  EXPECT_TRUE(SameBytes(reader.received, body));
  EXPECT_TRUE(reader.ended);
  reader.Send("");
  pair.Pump();
  ASSERT_TRUE(opened->closed.has_value());
  EXPECT_TRUE(opened->closed->ok());
  EXPECT_EQ(pair.relay_audit().max_stream_in_flight(), 256 * kKiB);
}

TEST(LinkFlowTest, OnStreamWritableFiresAfterWriteReturnedFalse) {
  LinkPair pair;  // 1 MiB stream window, 256 KiB stream high watermark
  TestStream* opened = pair.OpenFromRelay();
  pair.Pump();
  // One window goes out at once; the rest stays pending, above the watermark.
  std::string body = PatternBytes(2 * kMiB, 31);
  ASSERT_NE(opened->stream, nullptr);
  EXPECT_FALSE(opened->stream->Write(body));
  EXPECT_EQ(opened->stream->pending_bytes(), 1 * kMiB);
  EXPECT_EQ(opened->writable_events, 0);
  pair.Pump();
  EXPECT_EQ(opened->writable_events, 1);
  ASSERT_NE(opened->stream, nullptr);
  EXPECT_EQ(opened->stream->pending_bytes(), 0u);
  EXPECT_TRUE(SameBytes(pair.agent_handler.accepted.at(opened->id)->received, body));
  // A Write below the watermark owes no event.
  ASSERT_NE(opened->stream, nullptr);
  EXPECT_TRUE(opened->stream->Write("small"));
  pair.Pump();
  EXPECT_EQ(opened->writable_events, 1);
}

TEST(LinkFlowTest, BackedUpTransportHoldsDataAndDrainResumesIt) {
  LinkPair pair;
  const size_t watermark = pair.relay().options().transport_high_watermark;
  std::vector<TestStream*> streams;
  std::vector<std::string> bodies;
  for (int i = 0; i < 3; ++i) streams.push_back(pair.OpenFromRelay());
  pair.Pump();

  pair.hold_relay_output = true;
  for (int i = 0; i < 3; ++i) {
    bodies.push_back(PatternBytes(3 * kMiB, 40 + i));
    streams[i]->Send(bodies[i]);
    EXPECT_TRUE(streams[i]->write_returned_false) << i;
  }
  pair.Pump();
  // DATA stops at the transport's high watermark, give or take the frame that crossed it.
  EXPECT_GE(pair.relay_transport().QueuedBytes(), watermark);
  EXPECT_LE(pair.relay_transport().QueuedBytes(), watermark + kFrameHeaderSize + kMaxDataPayload);

  pair.hold_relay_output = false;
  pair.Pump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(SameBytes(pair.agent_handler.accepted.at(streams[i]->id)->received, bodies[i]));
    EXPECT_GE(streams[i]->writable_events, 1);
    EXPECT_TRUE(pair.agent_handler.accepted.at(streams[i]->id)->ended);
  }
  // Small frames (WINDOW, control) are not held back, so allow a little over one DATA frame.
  EXPECT_LE(pair.relay_transport().max_queued(),
            watermark + kFrameHeaderSize + kMaxDataPayload + 4 * kKiB);
}

// Each side applies its own link window, so traffic must flow whatever link window each side
// was configured with: announced in Hello and Challenge, or not (a peer of an older version).
TEST(LinkFlowTest, LinkWindowsOfTheTwoSidesNeedNotMatch) {
  struct Case {
    uint32_t relay_window;
    uint32_t agent_window;
    bool announced;
  };
  for (bool announced : {true, false}) {
    for (Case c : {Case{64 * kKiB, 16 * kMiB, announced}, Case{16 * kMiB, 64 * kKiB, announced},
                   Case{1 * kMiB, 64 * kMiB, announced}, Case{64 * kMiB, 1 * kMiB, announced}}) {
      SCOPED_TRACE(testing::Message() << "relay " << c.relay_window << " agent " << c.agent_window
                                      << (c.announced ? " announced" : " not announced"));
      LinkOptions relay_options;
      relay_options.link_window = c.relay_window;
      LinkOptions agent_options;
      agent_options.link_window = c.agent_window;
      LinkPair pair(relay_options, agent_options);
      if (!c.announced) {
        pair.relay().set_peer_link_window(0);
        pair.agent().set_peer_link_window(0);
      }
      std::string down = PatternBytes(3 * kMiB, 51);
      std::string up = PatternBytes(3 * kMiB, 52);
      pair.agent_handler.on_accept = [&](TestStream& s) { s.Send(up); };
      TestStream* opened = pair.OpenFromRelay();
      opened->Send(down);
      pair.Pump();
      TestStream& accepted = *pair.agent_handler.accepted.at(opened->id);
      EXPECT_TRUE(SameBytes(accepted.received, down));
      EXPECT_TRUE(SameBytes(opened->received, up));
      EXPECT_TRUE(opened->closed.has_value() && opened->closed->ok());
      EXPECT_LE(pair.relay_audit().max_link_in_flight(), c.relay_window);
      EXPECT_LE(pair.agent_audit().max_link_in_flight(), c.agent_window);
    }
  }
}

// A receiver returns link credit every quarter of the smaller of the two announced windows, not
// every 16 KiB as it must for a peer that announced none.
TEST(LinkFlowTest, LinkCreditIsBatchedByAQuarterOfTheAnnouncedWindow) {
  for (bool announced : {true, false}) {
    SCOPED_TRACE(announced ? "announced" : "not announced");
    LinkOptions relay_options;
    relay_options.link_window = 8 * kMiB;
    relay_options.stream_window = 64 * kMiB;  // few stream WINDOWs: they are not counted here
    LinkOptions agent_options;
    agent_options.link_window = 16 * kMiB;
    agent_options.stream_window = 64 * kMiB;
    LinkPair pair(relay_options, agent_options);
    if (!announced) {
      pair.relay().set_peer_link_window(0);
      pair.agent().set_peer_link_window(0);
    }
    std::string body = PatternBytes(32 * kMiB, 53);
    TestStream* opened = pair.OpenFromRelay();
    opened->Send(body);
    pair.Pump();
    EXPECT_TRUE(SameBytes(pair.agent_handler.accepted.at(opened->id)->received, body));
    EXPECT_LE(pair.relay_audit().max_link_in_flight(), 8 * kMiB);
    // 32 MiB received, credit returned per 2 MiB (a quarter of the relay's 8 MiB) or per 16 KiB.
    if (announced) {
      EXPECT_EQ(pair.agent_tap().link_credit_frames(), 16);
    } else {
      EXPECT_GE(pair.agent_tap().link_credit_frames(), 32 * kMiB / (64 * kKiB));
    }
  }
}

// ---- Bytes a well-behaved Link never sends ----

// One link fed hand-written frames.
class RawPeer {
 public:
  explicit RawPeer(bool is_relay_side, LinkOptions options = {})
      : link_(transport_, handler, WithSide(options, is_relay_side)) {}

  Link& link() { return link_; }
  MemoryTransport& transport() { return transport_; }

  void Frame(FrameType type, uint8_t flags, uint32_t stream_id, std::string_view payload) {
    std::string wire;
    AppendFrame(wire, type, flags, stream_id, payload);
    link_.OnBytes(wire);
  }
  // The same frame, delivered in reads cut at `cuts` (offsets into the frame's bytes).
  void FrameInReads(FrameType type, uint8_t flags, uint32_t stream_id, std::string_view payload,
                    std::vector<size_t> cuts) {
    std::string wire;
    AppendFrame(wire, type, flags, stream_id, payload);
    cuts.push_back(wire.size());
    size_t from = 0;
    for (size_t cut : cuts) {
      std::string read = wire.substr(from, cut - from);  // gone once OnBytes returns
      link_.OnBytes(read);
      from = cut;
    }
  }
  void Control(const link::Control& control) {
    std::string payload;
    control.SerializeToString(&payload);
    Frame(FrameType::kControl, 0, 0, payload);
  }
  void Open(uint32_t stream_id) {
    link::Control control;
    control.mutable_open()->set_stream_id(stream_id);
    Control(control);
  }
  void OpenResult(uint32_t stream_id, bool ok) {
    link::Control control;
    control.mutable_open_result()->set_stream_id(stream_id);
    control.mutable_open_result()->set_ok(ok);
    Control(control);
  }
  void Window(uint32_t stream_id, uint32_t increment) {
    std::string payload;
    AppendBigEndian32(payload, increment);
    Frame(FrameType::kWindow, 0, stream_id, payload);
  }
  void Data(uint32_t stream_id, std::string_view payload, bool fin = false) {
    Frame(FrameType::kData, fin ? kFlagFin : 0, stream_id, payload);
  }

  // The link failed exactly once with InvalidArgument mentioning `text`.
  void ExpectFailed(std::string_view text) {
    EXPECT_EQ(handler.failures, 1);
    EXPECT_EQ(handler.failure.code(), absl::StatusCode::kInvalidArgument) << handler.failure;
    EXPECT_THAT(Message(handler.failure), HasSubstr(std::string(text)));
    EXPECT_TRUE(link_.failed());
    EXPECT_EQ(link_.stream_count(), 0u);
    // Nothing is answered any more.
    size_t queued = transport_.QueuedBytes();
    std::string ping;
    AppendBigEndian32(ping, 0);
    AppendBigEndian32(ping, 1);
    Frame(FrameType::kPing, 0, 0, ping);
    EXPECT_EQ(transport_.QueuedBytes(), queued);
    EXPECT_EQ(handler.failures, 1);
  }

  TestLinkHandler handler;

 private:
  static LinkOptions WithSide(LinkOptions options, bool is_relay_side) {
    options.is_relay_side = is_relay_side;
    return options;
  }
  MemoryTransport transport_;
  Link link_;
};

TEST(LinkViolationTest, DataBeyondTheStreamWindow) {
  LinkOptions options;
  options.stream_window = 64 * kKiB;
  uint64_t before = FrameErrors("flow_control");
  RawPeer peer(/*is_relay_side=*/false, options);
  peer.handler.consume = false;
  peer.Open(2);
  peer.Data(2, std::string(64 * kKiB, 'a'));  // exactly the window: fine
  EXPECT_EQ(peer.handler.failures, 0);
  TestStream& stream = *peer.handler.accepted.at(2);
  peer.Data(2, "b");
  peer.ExpectFailed("stream 2 sent 1 bytes with only 0 of window");
  EXPECT_EQ(FrameErrors("flow_control"), before + 1);
  ASSERT_TRUE(stream.closed.has_value());
  EXPECT_EQ(stream.closed->code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Message(*stream.closed), HasSubstr("link lost: stream 2 sent"));
}

TEST(LinkViolationTest, DataCutByReadsIsCheckedAgainstTheWindowAtItsFirstPiece) {
  LinkOptions options;
  options.stream_window = 64 * kKiB;
  RawPeer peer(/*is_relay_side=*/false, options);
  peer.handler.consume = false;
  peer.Open(2);
  TestStream& stream = *peer.handler.accepted.at(2);
  std::string too_much(64 * kKiB + 1, 'w');
  peer.FrameInReads(FrameType::kData, 0, 2, too_much, {kFrameHeaderSize + 100});
  peer.ExpectFailed("stream 2 sent 65537 bytes with only 65536 of window");
  EXPECT_EQ(stream.received, "") << "nothing of a frame over the window is delivered";
}

TEST(LinkFlowTest, DataCutByReadsArrivesInPiecesAndFinAfterTheLast) {
  RawPeer peer(/*is_relay_side=*/false);
  peer.Open(2);
  TestStream& stream = *peer.handler.accepted.at(2);
  const std::string payload = PatternBytes(40 * kKiB, 3);
  peer.FrameInReads(FrameType::kData, kFlagFin, 2, payload, {4, 4000, 30000});
  EXPECT_TRUE(SameBytes(stream.received, payload));
  EXPECT_TRUE(stream.ended);
  EXPECT_EQ(peer.handler.failures, 0);
  // A second frame after FIN, cut the same way, is refused at its first piece.
  peer.FrameInReads(FrameType::kData, 0, 2, "late", {kFrameHeaderSize + 2});
  peer.ExpectFailed("DATA after FIN on stream 2");
}

TEST(LinkFlowTest, DataCutByReadsBeforeAcceptIsHeldWhole) {
  RawPeer peer(/*is_relay_side=*/false);
  peer.handler.on_open = TestLinkHandler::OnOpen::kHold;
  peer.Open(2);
  const std::string payload = PatternBytes(10 * kKiB, 4);
  peer.FrameInReads(FrameType::kData, kFlagFin, 2, payload, {kFrameHeaderSize + 1, 5000});
  ASSERT_EQ(peer.handler.held.size(), 1u);
  TestStream* stream = peer.handler.AcceptHeld(peer.link(), 2);
  ASSERT_NE(stream, nullptr);
  EXPECT_TRUE(SameBytes(stream->received, payload));
  EXPECT_TRUE(stream->ended);
  EXPECT_EQ(peer.handler.failures, 0);
}

TEST(LinkViolationTest, OneFrameLargerThanTheWindowBeforeAccept) {
  LinkOptions options;
  options.stream_window = 64 * kKiB;
  RawPeer peer(/*is_relay_side=*/false, options);
  peer.handler.on_open = TestLinkHandler::OnOpen::kHold;
  peer.Open(2);
  peer.Data(2, std::string(64 * kKiB + 1, 'a'));
  peer.ExpectFailed("with only 65536 of window");
}

TEST(LinkViolationTest, DataAfterFin) {
  uint64_t before = FrameErrors("data_after_fin");
  RawPeer peer(/*is_relay_side=*/false);
  peer.Open(2);
  peer.Data(2, "last", /*fin=*/true);
  EXPECT_TRUE(peer.handler.accepted.at(2)->ended);
  peer.Data(2, "");  // even an empty frame
  peer.ExpectFailed("DATA after FIN on stream 2");
  EXPECT_EQ(FrameErrors("data_after_fin"), before + 1);
}

TEST(LinkViolationTest, DataAfterFinBeforeAccept) {
  RawPeer peer(/*is_relay_side=*/true);
  peer.handler.on_open = TestLinkHandler::OnOpen::kHold;
  peer.Open(1);
  peer.Data(1, "early", /*fin=*/true);
  EXPECT_EQ(peer.handler.failures, 0);
  peer.Data(1, "more");
  peer.ExpectFailed("DATA after FIN on stream 1");
}

TEST(LinkViolationTest, OpenWithTheWrongParityOrAReusedId) {
  struct Case {
    bool is_relay_side;
    std::vector<uint32_t> opens;
    std::string message;
  };
  std::vector<Case> cases = {
      {false, {3}, "Open with invalid stream id 3"},  // the agent side opens odd ids itself
      {false, {0}, "Open with invalid stream id 0"},
      {true, {2}, "Open with invalid stream id 2"},  // the relay side opens even ids itself
      {true, {0}, "Open with invalid stream id 0"},
      {false, {2, 4, 2}, "Open with invalid stream id 2"},  // id still open
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    uint64_t before = FrameErrors("bad_stream_id");
    RawPeer peer(c.is_relay_side);
    for (uint32_t id : c.opens) peer.Open(id);
    peer.ExpectFailed(c.message);
    EXPECT_EQ(FrameErrors("bad_stream_id"), before + 1);
  }
}

TEST(LinkViolationTest, GarbageControlPayload) {
  uint64_t before = FrameErrors("bad_control");
  RawPeer peer(/*is_relay_side=*/true);
  peer.Frame(FrameType::kControl, 0, 0,
             "\x3a\x05"
             "ab");  // field 7, 5 bytes announced, 2 sent
  peer.ExpectFailed("control frame is not a valid Control message");
  EXPECT_EQ(FrameErrors("bad_control"), before + 1);
}

TEST(LinkViolationTest, EmptyControlMessage) {
  RawPeer peer(/*is_relay_side=*/false);
  peer.Frame(FrameType::kControl, 0, 0, "");
  peer.ExpectFailed("empty control message");
}

TEST(LinkViolationTest, MalformedFrame) {
  uint64_t before = FrameErrors("malformed");
  RawPeer peer(/*is_relay_side=*/false);
  std::string wire;
  AppendFrameHeader(wire, FrameType::kData, 0, 1, 0);
  wire[4] = 9;  // no such type
  peer.link().OnBytes(wire);
  peer.ExpectFailed("unknown frame type 9");
  EXPECT_EQ(FrameErrors("malformed"), before + 1);
}

TEST(LinkViolationTest, ZeroWindowIncrement) {
  RawPeer peer(/*is_relay_side=*/false);
  peer.Window(0, 0);
  peer.ExpectFailed("WINDOW with zero increment");
}

TEST(LinkViolationTest, StreamWindowOverflow) {
  RawPeer peer(/*is_relay_side=*/false);
  peer.Open(2);
  peer.Window(2, 0x7fffffff);  // 1 MiB + 2^31 - 1 exceeds 2^31
  peer.ExpectFailed("stream 2 window overflow");
}

TEST(LinkViolationTest, OpenResultForAStreamThatIsNotOpening) {
  {
    SCOPED_TRACE("peer-opened stream");
    RawPeer peer(/*is_relay_side=*/false);
    peer.Open(2);
    peer.OpenResult(2, true);
    peer.ExpectFailed("OpenResult for stream 2 that is not opening");
  }
  {
    SCOPED_TRACE("answered twice");
    RawPeer peer(/*is_relay_side=*/false);
    TestStream opened;
    Stream* stream = peer.link().OpenStream(link::Open(), opened);
    ASSERT_NE(stream, nullptr);
    opened.stream = stream;
    peer.OpenResult(1, true);
    EXPECT_TRUE(opened.accepted);
    peer.OpenResult(1, true);
    peer.ExpectFailed("OpenResult for stream 1 that is not opening");
    ASSERT_TRUE(opened.closed.has_value());
    EXPECT_EQ(opened.closed->code(), absl::StatusCode::kUnavailable);
  }
}

TEST(LinkViolationTest, FramesForUnknownStreamsAreIgnored) {
  // A stream may have closed on this side while the peer's frames were in flight.
  RawPeer peer(/*is_relay_side=*/false);
  peer.Data(99, "late");
  peer.Data(99, "", /*fin=*/true);
  peer.Window(99, 1000);
  peer.Frame(FrameType::kReset, 0, 99, "late reset");
  peer.OpenResult(99, false);
  EXPECT_EQ(peer.handler.failures, 0);
  EXPECT_EQ(peer.link().stream_count(), 0u);
}

}  // namespace
}  // namespace rdv::link_test
