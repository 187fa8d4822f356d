// Tests of the link multiplexer (docs/protocol.md, "Streams" and "Flow control").
//
// Two Links talk through an in-memory transport that only buffers: the test moves the bytes to
// the other side with Pump(), so every interleaving is deterministic, and a backed-up transport
// is simply bytes the test has not moved yet. A tap decodes every frame on the wire and audits
// each sender's DATA against the credit its peer has granted it.
#include "common/link.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/frame.h"
#include "common/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;

// absl::string_view (Debian's is not std::string_view) prints badly in gtest failures.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

// Deterministic pseudo-random bytes, so a lost, duplicated or reordered chunk shows.
std::string PatternBytes(size_t size, uint32_t seed) {
  std::string out(size, '\0');
  std::mt19937 rng(seed);
  for (size_t i = 0; i < size; i += 4) {
    uint32_t value = rng();
    std::memcpy(out.data() + i, &value, std::min<size_t>(4, size - i));
  }
  return out;
}

uint64_t Checksum(std::string_view data) {  // FNV-1a
  uint64_t hash = 14695981039346656037ULL;
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash;
}

// Compares large byte strings without printing megabytes on failure.
::testing::AssertionResult SameBytes(std::string_view got, std::string_view want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "got " << got.size() << " bytes, want " << want.size()
                                       << "; first difference at offset " << i;
}

uint64_t FrameErrors(std::string_view reason) {
  return CounterOf("rdv_frame_errors_total", "Links closed for a malformed or illegal frame",
                   "reason=\"" + std::string(reason) + "\"")
      .value();
}

// ---- Test doubles ----

// One side's outbound pipe. Send() only buffers (a transport must not call back into the link),
// so QueuedBytes() is exactly what the peer has not been given yet.
class MemoryTransport : public LinkTransport {
 public:
  void Send(std::string_view bytes) override {
    buffer_.append(bytes);
    max_queued_ = std::max(max_queued_, buffer_.size());
  }
  size_t QueuedBytes() const override { return buffer_.size(); }
  std::string Take() { return std::exchange(buffer_, {}); }
  size_t max_queued() const { return max_queued_; }

 private:
  std::string buffer_;
  size_t max_queued_ = 0;
};

// Audits one sender: the DATA it puts on the wire against the WINDOW credit delivered to it.
class CreditAudit {
 public:
  CreditAudit(int64_t stream_window, int64_t link_window)
      : stream_window_(stream_window), link_window_(link_window) {}

  void DataSent(uint32_t stream_id, size_t bytes) {
    int64_t& in_flight = stream_in_flight_[stream_id];
    in_flight += static_cast<int64_t>(bytes);
    link_in_flight_ += static_cast<int64_t>(bytes);
    max_stream_in_flight_ = std::max(max_stream_in_flight_, in_flight);
    max_link_in_flight_ = std::max(max_link_in_flight_, link_in_flight_);
    EXPECT_LE(in_flight, stream_window_) << "stream " << stream_id << " exceeded its window";
    EXPECT_LE(link_in_flight_, link_window_) << "the link window was exceeded";
  }
  void CreditReceived(uint32_t stream_id, uint32_t increment) {
    if (stream_id == 0) {
      link_in_flight_ -= increment;
    } else {
      stream_in_flight_[stream_id] -= increment;
    }
  }
  int64_t stream_in_flight(uint32_t stream_id) { return stream_in_flight_[stream_id]; }
  int64_t max_stream_in_flight() const { return max_stream_in_flight_; }
  int64_t max_link_in_flight() const { return max_link_in_flight_; }

 private:
  const int64_t stream_window_;
  const int64_t link_window_;
  std::map<uint32_t, int64_t> stream_in_flight_;
  int64_t link_in_flight_ = 0;
  int64_t max_stream_in_flight_ = 0;
  int64_t max_link_in_flight_ = 0;
};

// Decodes the bytes of one direction: DATA is charged to the sender, WINDOW credits the other side.
class WireTap {
 public:
  WireTap(CreditAudit& sender, CreditAudit& peer) : sender_(sender), peer_(peer) {}

  void Observe(std::string_view bytes) {
    decoder_.Append(bytes);
    while (true) {
      FrameDecoder::Frame frame;
      absl::StatusOr<bool> next = decoder_.Next(frame);
      if (!next.ok()) {
        ADD_FAILURE() << "a Link sent a malformed frame: " << next.status();
        return;
      }
      if (!*next) return;
      const FrameHeader& h = frame.header;
      ++frames_[h.type];
      if (h.type == FrameType::kData) {
        EXPECT_LE(h.length, kMaxDataPayload);
        sender_.DataSent(h.stream_id, h.length);
      } else if (h.type == FrameType::kWindow) {
        uint32_t increment = ReadBigEndian32(frame.payload.data());
        if (h.stream_id != 0) stream_windows_[h.stream_id] += increment;
        peer_.CreditReceived(h.stream_id, increment);
      }
    }
  }
  int frames(FrameType type) { return frames_[type]; }
  // Stream credit this side has returned for `stream_id` so far.
  uint64_t stream_credit_returned(uint32_t stream_id) { return stream_windows_[stream_id]; }

 private:
  CreditAudit& sender_;
  CreditAudit& peer_;
  FrameDecoder decoder_;
  std::map<FrameType, int> frames_;
  std::map<uint32_t, uint64_t> stream_windows_;
};

// A stream endpoint driven like an application would: it records what arrives, consumes it (or
// not, to play a slow reader) and writes its payload as fast as the stream lets it.
class TestStream : public StreamHandler {
 public:
  static constexpr size_t kWriteChunk = 64 * kKiB;

  Stream* stream = nullptr;  // null once closed
  uint32_t id = 0;
  std::string received;
  bool accepted = false;
  bool ended = false;  // the peer half-closed
  std::optional<absl::Status> closed;
  int writable_events = 0;
  bool write_returned_false = false;
  bool consume = true;  // return credit as soon as data arrives
  size_t unconsumed = 0;

  // Writes `data` (then End()s if `end`) as fast as the stream allows.
  void Send(std::string data, bool end = true) {
    outbound_ = std::move(data);
    offset_ = 0;
    end_ = end;
    Feed();
  }
  size_t unsent() const { return outbound_.size() - offset_; }
  // Returns the credit held back so far and from now on consumes as data arrives.
  void ConsumeAll() {
    consume = true;
    if (stream != nullptr && unconsumed > 0) {
      size_t n = std::exchange(unconsumed, 0);
      stream->Consumed(n);
    }
  }

  void OnStreamAccepted(Stream& s) override { accepted = true; }
  void OnStreamData(Stream& s, std::string_view data) override {
    received.append(data);
    if (consume) {
      s.Consumed(data.size());
    } else {
      unconsumed += data.size();
    }
  }
  void OnStreamEnd(Stream& s) override {
    EXPECT_FALSE(ended) << "OnStreamEnd twice";
    ended = true;
  }
  void OnStreamWritable(Stream& s) override {
    ++writable_events;
    Feed();
  }
  void OnStreamClosed(Stream& s, const absl::Status& status) override {
    EXPECT_FALSE(closed.has_value()) << "OnStreamClosed twice";
    closed = status;
    stream = nullptr;
  }

 private:
  void Feed() {
    while (stream != nullptr && offset_ < outbound_.size()) {
      size_t n = std::min(kWriteChunk, outbound_.size() - offset_);
      std::string_view chunk = std::string_view(outbound_).substr(offset_, n);
      offset_ += n;  // Write queues the chunk even when it returns false
      if (!stream->Write(chunk)) {
        write_returned_false = true;
        return;
      }
    }
    if (stream != nullptr && end_ && !end_called_ && offset_ == outbound_.size()) {
      end_called_ = true;
      stream->End();
    }
  }

  std::string outbound_;
  size_t offset_ = 0;
  bool end_ = false;
  bool end_called_ = false;
};

class TestLinkHandler : public LinkHandler {
 public:
  enum class OnOpen { kAccept, kRefuse, kHold };
  OnOpen on_open = OnOpen::kAccept;
  std::string refuse_reason = "refused by the test";
  bool consume = true;                         // policy of streams this side accepts
  std::function<void(TestStream&)> on_accept;  // runs right after Accept (e.g. send a reply)

  std::map<uint32_t, std::unique_ptr<TestStream>> accepted;  // peer-opened streams, by id
  std::vector<uint32_t> held;                                // opened by the peer, undecided
  std::vector<link::Open> opens;
  std::vector<link::Control> controls;
  std::vector<uint64_t> pongs;
  int failures = 0;
  absl::Status failure;

  TestStream& AcceptStream(Stream& stream) {
    auto owned = std::make_unique<TestStream>();
    TestStream& test_stream = *owned;
    accepted[stream.id()] = std::move(owned);
    test_stream.stream = &stream;
    test_stream.id = stream.id();
    test_stream.consume = consume;
    stream.Accept(test_stream);
    if (on_accept && test_stream.stream != nullptr) on_accept(test_stream);
    return test_stream;
  }
  // Accepts a held stream later, as an agent does once its target connection is up.
  TestStream* AcceptHeld(Link& link, uint32_t id) {
    Stream* stream = link.FindStream(id);
    return stream == nullptr ? nullptr : &AcceptStream(*stream);
  }

  void OnControl(Link& link, const link::Control& control) override { controls.push_back(control); }
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override {
    opens.push_back(open);
    EXPECT_EQ(stream.id(), open.stream_id());
    switch (on_open) {
      case OnOpen::kAccept:
        AcceptStream(stream);
        return;
      case OnOpen::kRefuse:
        stream.Refuse(refuse_reason);
        return;
      case OnOpen::kHold:
        held.push_back(stream.id());
        return;
    }
  }
  void OnPong(Link& link, uint64_t payload) override { pongs.push_back(payload); }
  void OnLinkFailed(Link& link, const absl::Status& status) override {
    ++failures;
    failure = status;
  }
};

// A relay-side and an agent-side Link joined by MemoryTransports.
class LinkPair {
 public:
  explicit LinkPair(LinkOptions relay_options = {}, LinkOptions agent_options = {})
      : relay_options_(Sided(relay_options, true)),
        agent_options_(Sided(agent_options, false)),
        relay_audit_(agent_options_.stream_window, relay_options_.link_window),
        agent_audit_(relay_options_.stream_window, agent_options_.link_window),
        relay_tap_(relay_audit_, agent_audit_),
        agent_tap_(agent_audit_, relay_audit_),
        relay_(std::make_unique<Link>(relay_transport_, relay_handler, relay_options_)),
        agent_(std::make_unique<Link>(agent_transport_, agent_handler, agent_options_)) {
    // What Hello and Challenge carry.
    relay_->set_peer_stream_window(agent_options_.stream_window);
    agent_->set_peer_stream_window(relay_options_.stream_window);
  }

  Link& relay() { return *relay_; }
  Link& agent() { return *agent_; }
  MemoryTransport& relay_transport() { return relay_transport_; }
  MemoryTransport& agent_transport() { return agent_transport_; }
  CreditAudit& relay_audit() { return relay_audit_; }  // the relay as a sender
  CreditAudit& agent_audit() { return agent_audit_; }
  WireTap& relay_tap() { return relay_tap_; }  // frames the relay sent
  WireTap& agent_tap() { return agent_tap_; }

  TestStream* OpenFromRelay(link::Open open = {}) { return Open(*relay_, std::move(open)); }
  TestStream* OpenFromAgent(link::Open open = {}) { return Open(*agent_, std::move(open)); }

  // One delivery in each direction. Returns whether any byte moved.
  bool PumpOnce() {
    bool moved = Move(relay_transport_, *relay_, *agent_, relay_tap_, hold_relay_output);
    moved |= Move(agent_transport_, *agent_, *relay_, agent_tap_, hold_agent_output);
    return moved;
  }
  // Delivers until both directions are idle (or held).
  void Pump() {
    for (int round = 0; round < 1'000'000; ++round) {
      if (!PumpOnce()) return;
    }
    ADD_FAILURE() << "the link pair never went idle";
  }

  TestLinkHandler relay_handler;
  TestLinkHandler agent_handler;
  bool hold_relay_output = false;  // a backed-up transport: bytes stay queued
  bool hold_agent_output = false;

 private:
  static LinkOptions Sided(LinkOptions options, bool relay_side) {
    options.is_relay_side = relay_side;
    return options;
  }
  TestStream* Open(Link& link, link::Open open) {
    auto owned = std::make_unique<TestStream>();
    Stream* stream = link.OpenStream(std::move(open), *owned);
    if (stream == nullptr) return nullptr;
    owned->stream = stream;
    owned->id = stream->id();
    opened_.push_back(std::move(owned));
    return opened_.back().get();
  }
  static bool Move(MemoryTransport& transport, Link& from, Link& to, WireTap& tap, bool hold) {
    if (hold) return false;
    std::string bytes = transport.Take();
    if (bytes.empty()) return false;
    tap.Observe(bytes);
    to.OnBytes(bytes);
    // The bytes left the sender's queue; a real transport reports that it drained.
    if (!from.failed()) from.OnTransportDrained();
    return true;
  }

  const LinkOptions relay_options_;
  const LinkOptions agent_options_;
  CreditAudit relay_audit_;
  CreditAudit agent_audit_;
  WireTap relay_tap_;
  WireTap agent_tap_;
  MemoryTransport relay_transport_;
  MemoryTransport agent_transport_;
  std::vector<std::unique_ptr<TestStream>> opened_;
  std::unique_ptr<Link> relay_;
  std::unique_ptr<Link> agent_;
};

link::Open OpenFor(std::string_view service) {
  link::Open open;
  open.mutable_service()->set_kind(link::TCP);
  open.mutable_service()->set_name(std::string(service));
  open.set_client_address("192.0.2.7:40000");
  open.set_entrypoint("tcp:2020");
  return open;
}

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
  LinkPair pair;
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

// The link window is not negotiated (Hello and Challenge carry only the stream window), so
// traffic must flow whatever link window each side was configured with.
TEST(LinkFlowTest, LinkWindowsOfTheTwoSidesNeedNotMatch) {
  struct Case {
    uint32_t relay_window;
    uint32_t agent_window;
  };
  for (Case c : {Case{64 * kKiB, 16 * kMiB}, Case{16 * kMiB, 64 * kKiB}, Case{1 * kMiB, 64 * kMiB},
                 Case{64 * kMiB, 1 * kMiB}}) {
    SCOPED_TRACE(testing::Message() << "relay " << c.relay_window << " agent " << c.agent_window);
    LinkOptions relay_options;
    relay_options.link_window = c.relay_window;
    LinkOptions agent_options;
    agent_options.link_window = c.agent_window;
    LinkPair pair(relay_options, agent_options);
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
}  // namespace rdv
