// In-memory fixture for the link multiplexer tests (link_test.cc, link_flow_test.cc).
//
// Two Links talk through an in-memory transport that only buffers: the test moves the bytes to
// the other side with Pump(), so every interleaving is deterministic, and a backed-up transport
// is simply bytes the test has not moved yet. A tap decodes every frame on the wire and audits
// each sender's DATA against the credit its peer has granted it.
#ifndef RDV_COMMON_LINK_TEST_SUPPORT_H_
#define RDV_COMMON_LINK_TEST_SUPPORT_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/frame.h"
#include "common/link.h"
#include "common/metrics.h"
#include "gtest/gtest.h"

namespace rdv::link_test {

inline constexpr size_t kKiB = 1024;
inline constexpr size_t kMiB = 1024 * 1024;

// absl::string_view (Debian's is not std::string_view) prints badly in gtest failures.
inline std::string Message(const absl::Status& status) { return std::string(status.message()); }

// Deterministic pseudo-random bytes, so a lost, duplicated or reordered chunk shows.
inline std::string PatternBytes(size_t size, uint32_t seed) {
  std::string out(size, '\0');
  std::mt19937 rng(seed);
  for (size_t i = 0; i < size; i += 4) {
    uint32_t value = rng();
    std::memcpy(out.data() + i, &value, std::min<size_t>(4, size - i));
  }
  return out;
}

inline uint64_t Checksum(std::string_view data) {  // FNV-1a
  uint64_t hash = 14695981039346656037ULL;
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 1099511628211ULL;
  }
  return hash;
}

// Compares large byte strings without printing megabytes on failure.
inline ::testing::AssertionResult SameBytes(std::string_view got, std::string_view want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "got " << got.size() << " bytes, want " << want.size()
                                       << "; first difference at offset " << i;
}

inline uint64_t FrameErrors(std::string_view reason) {
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
        if (h.stream_id == 0) ++link_credit_frames_;
        peer_.CreditReceived(h.stream_id, increment);
      }
    }
  }
  int frames(FrameType type) { return frames_[type]; }
  int link_credit_frames() const { return link_credit_frames_; }  // WINDOW(0)
  // Stream credit this side has returned for `stream_id` so far.
  uint64_t stream_credit_returned(uint32_t stream_id) { return stream_windows_[stream_id]; }

 private:
  CreditAudit& sender_;
  CreditAudit& peer_;
  FrameDecoder decoder_;
  std::map<FrameType, int> frames_;
  std::map<uint32_t, uint64_t> stream_windows_;
  int link_credit_frames_ = 0;
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
  std::vector<std::string> datagrams;  // DATAGRAM payloads, in arrival order

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
  void OnStreamDatagram(Stream& s, std::string_view datagram) override {
    datagrams.emplace_back(datagram);
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
    relay_->set_peer_link_window(agent_options_.link_window);
    agent_->set_peer_link_window(relay_options_.link_window);
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

inline link::Open OpenFor(std::string_view service) {
  link::Open open;
  open.mutable_service()->set_kind(link::TCP);
  open.mutable_service()->set_name(std::string(service));
  open.set_client_address("192.0.2.7:40000");
  open.set_entrypoint("tcp:2020");
  return open;
}

}  // namespace rdv::link_test

#endif  // RDV_COMMON_LINK_TEST_SUPPORT_H_
