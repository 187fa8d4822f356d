// Tests of DATAGRAM frames on a link (docs/protocol.md, "Datagrams"): whole datagrams both ways
// on a stream id, outside flow control, dropped and counted (never queued, never a link error)
// when the transport is congested, oversize, or the flow is unknown.
#include <string>
#include <utility>

#include "common/link.h"
#include "common/link_test_support.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv::link_test {
namespace {

uint64_t Dropped(std::string_view reason) {
  return CounterOf("rdv_link_datagrams_dropped_total",
                   "Datagrams a link dropped instead of sending or delivering them",
                   "reason=\"" + std::string(reason) + "\"")
      .value();
}

link::Open UdpOpen() {
  link::Open open = OpenFor("dns");
  open.mutable_service()->set_kind(link::UDP);
  open.set_entrypoint("udp:5353");
  return open;
}

TEST(LinkDatagramTest, RoundTripBothWaysWithBoundariesKept) {
  LinkPair pair;
  TestStream* relay_side = pair.OpenFromRelay(UdpOpen());
  ASSERT_NE(relay_side, nullptr);
  // Sent right after Open, before OpenResult: the acceptor sees Open first on the ordered link.
  std::string big = PatternBytes(kMaxDatagramPayload, 7);
  EXPECT_TRUE(relay_side->stream->SendDatagram("query-1"));
  EXPECT_TRUE(relay_side->stream->SendDatagram(""));
  EXPECT_TRUE(relay_side->stream->SendDatagram(big));
  pair.Pump();
  ASSERT_EQ(pair.agent_handler.accepted.count(2), 1u);
  TestStream& agent_side = *pair.agent_handler.accepted[2];
  ASSERT_EQ(agent_side.datagrams.size(), 3u);
  EXPECT_EQ(agent_side.datagrams[0], "query-1");
  EXPECT_EQ(agent_side.datagrams[1], "");
  EXPECT_TRUE(SameBytes(agent_side.datagrams[2], big));
  EXPECT_TRUE(agent_side.received.empty());  // datagrams are not stream bytes

  EXPECT_TRUE(agent_side.stream->SendDatagram("answer-1"));
  pair.Pump();
  ASSERT_EQ(relay_side->datagrams.size(), 1u);
  EXPECT_EQ(relay_side->datagrams[0], "answer-1");
  EXPECT_EQ(pair.relay_tap().frames(FrameType::kDatagram), 3);
  EXPECT_EQ(pair.agent_tap().frames(FrameType::kDatagram), 1);
  // Outside flow control: no credit was charged, so no WINDOW came back for the stream.
  EXPECT_EQ(pair.agent_tap().stream_credit_returned(2), 0u);
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkDatagramTest, OversizeIsDroppedAndCountedOnSend) {
  LinkPair pair;
  TestStream* flow = pair.OpenFromRelay(UdpOpen());
  uint64_t before = Dropped("oversize");
  EXPECT_FALSE(flow->stream->SendDatagram(std::string(kMaxDatagramPayload + 1, 'x')));
  EXPECT_EQ(Dropped("oversize"), before + 1);
  pair.Pump();
  EXPECT_TRUE(pair.agent_handler.accepted[2]->datagrams.empty());
  EXPECT_EQ(pair.relay_tap().frames(FrameType::kDatagram), 0);
}

TEST(LinkDatagramTest, OversizeFromThePeerIsDroppedNotFatal) {
  LinkPair pair;
  pair.OpenFromRelay(UdpOpen());
  pair.Pump();
  uint64_t before = Dropped("oversize");
  std::string wire;
  AppendFrame(wire, FrameType::kDatagram, 0, 2, std::string(kMaxDatagramPayload + 1, 'x'));
  pair.agent().OnBytes(wire);
  EXPECT_EQ(Dropped("oversize"), before + 1);
  EXPECT_FALSE(pair.agent().failed());
  EXPECT_TRUE(pair.agent_handler.accepted[2]->datagrams.empty());
}

TEST(LinkDatagramTest, DroppedWhenTheTransportIsCongested) {
  LinkOptions options;
  options.datagram_queue_limit = 64 * kKiB;
  LinkPair pair(options);
  TestStream* flow = pair.OpenFromRelay(UdpOpen());
  pair.Pump();
  pair.hold_relay_output = true;  // the transport stops draining
  uint64_t before = Dropped("congested");
  std::string datagram(1000, 'd');
  int sent = 0;
  for (int i = 0; i < 500; ++i) sent += flow->stream->SendDatagram(datagram) ? 1 : 0;
  // Queued bytes never grow past the limit plus one datagram and its header.
  EXPECT_LE(pair.relay_transport().QueuedBytes(),
            options.datagram_queue_limit + datagram.size() + kFrameHeaderSize);
  EXPECT_GT(sent, 0);
  EXPECT_LT(sent, 500);
  EXPECT_EQ(Dropped("congested"), before + static_cast<uint64_t>(500 - sent));
  pair.hold_relay_output = false;
  pair.Pump();
  EXPECT_EQ(pair.agent_handler.accepted[2]->datagrams.size(), static_cast<size_t>(sent));
  // Drained: datagrams flow again.
  EXPECT_TRUE(flow->stream->SendDatagram(datagram));
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkDatagramTest, BulkDataDoesNotStarveDatagrams) {
  // DATA fills the transport only up to its high watermark; the datagram limit is above it.
  LinkPair pair;
  TestStream* bulk = pair.OpenFromRelay();
  TestStream* flow = pair.OpenFromRelay(UdpOpen());
  pair.Pump();
  pair.hold_relay_output = true;
  bulk->Send(PatternBytes(8 * kMiB, 3), /*end=*/false);
  EXPECT_GE(pair.relay_transport().QueuedBytes(), LinkOptions{}.transport_high_watermark);
  EXPECT_TRUE(flow->stream->SendDatagram("still gets through"));
  pair.hold_relay_output = false;
  pair.Pump();
  ASSERT_EQ(pair.agent_handler.accepted.count(4), 1u);
  EXPECT_EQ(pair.agent_handler.accepted[4]->datagrams.size(), 1u);
}

TEST(LinkDatagramTest, UnknownFlowIsDroppedAndCountedWithoutEndingTheLink) {
  LinkPair pair;
  TestStream* flow = pair.OpenFromRelay(UdpOpen());
  pair.Pump();
  uint64_t before = Dropped("unknown_flow");
  std::string wire;
  AppendFrame(wire, FrameType::kDatagram, 0, 98, "stray");
  pair.agent().OnBytes(wire);
  EXPECT_EQ(Dropped("unknown_flow"), before + 1);
  EXPECT_FALSE(pair.agent().failed());
  // The link still works.
  EXPECT_TRUE(flow->stream->SendDatagram("after"));
  pair.Pump();
  EXPECT_EQ(pair.agent_handler.accepted[2]->datagrams.size(), 1u);
}

TEST(LinkDatagramTest, DatagramsAfterResetAreDroppedAsUnknownFlow) {
  LinkPair pair;
  TestStream* flow = pair.OpenFromRelay(UdpOpen());
  pair.Pump();
  TestStream& agent_side = *pair.agent_handler.accepted[2];
  // The relay expires the session while the agent's reply is in flight.
  EXPECT_TRUE(agent_side.stream->SendDatagram("late reply"));
  std::exchange(flow->stream, nullptr)->Reset("idle");  // the Stream is gone after this
  uint64_t before = Dropped("unknown_flow");
  pair.Pump();
  EXPECT_EQ(Dropped("unknown_flow"), before + 1);
  ASSERT_TRUE(agent_side.closed.has_value());  // the RESET freed the agent's side
  EXPECT_EQ(pair.relay_handler.failures + pair.agent_handler.failures, 0);
}

TEST(LinkDatagramTest, NotDeliveredBeforeAccept) {
  LinkPair pair;
  pair.agent_handler.on_open = TestLinkHandler::OnOpen::kHold;
  TestStream* flow = pair.OpenFromRelay(UdpOpen());
  EXPECT_TRUE(flow->stream->SendDatagram("early"));
  uint64_t before = Dropped("not_accepted");
  pair.Pump();
  EXPECT_EQ(Dropped("not_accepted"), before + 1);
  TestStream* agent_side = pair.agent_handler.AcceptHeld(pair.agent(), 2);
  ASSERT_NE(agent_side, nullptr);
  EXPECT_TRUE(agent_side->datagrams.empty());
  EXPECT_TRUE(flow->stream->SendDatagram("after accept"));
  pair.Pump();
  EXPECT_EQ(agent_side->datagrams.size(), 1u);
}

}  // namespace
}  // namespace rdv::link_test
