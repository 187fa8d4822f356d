// A link: many streams multiplexed over one ordered byte transport (docs/protocol.md).
//
// The link is pure protocol logic: it never touches a socket or a clock. Bytes come in through
// OnBytes(); bytes go out through LinkTransport::Send(). That keeps it unit-testable with an
// in-memory transport and lets the same code serve agent<->relay and relay<->relay links.
//
// Flow control (per stream and per link, both credit-based):
//  * A sender may put DATA on the wire only while it holds credit for the stream AND for the link.
//  * Stream credit comes back when the receiving application has *consumed* the bytes
//    (Stream::Consumed), so a slow reader stalls only its own stream.
//  * Link credit comes back as soon as the bytes are handed to their stream, so buffered bytes of
//    a stalled stream never starve the others; the link window bounds undelivered bytes in flight.
//  * When the transport itself backs up (QueuedBytes over a watermark), DATA waits in the
//    streams' pending buffers and is sent round-robin once the transport drains.
//
// Datagrams (DATAGRAM frames, e.g. UDP payloads) ride on a stream id but outside flow control:
// Stream::SendDatagram frames one at once or drops it (counted) when the transport already holds
// more than LinkOptions::datagram_queue_limit; nothing is queued or retransmitted here.
#ifndef RDV_COMMON_LINK_H_
#define RDV_COMMON_LINK_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "common/frame.h"
#include "proto/link.pb.h"

namespace rdv {

class Link;
class Stream;

// The byte pipe under a link (a TLS connection in production).
class LinkTransport {
 public:
  virtual ~LinkTransport() = default;
  // Queues bytes for the peer; must not call back into the link synchronously.
  virtual void Send(std::string_view bytes) = 0;
  // Bytes accepted by Send that have not reached the kernel yet. Contract: once this has been
  // at or above LinkOptions::transport_high_watermark, the owner calls Link::OnTransportDrained()
  // when it drains, or DATA held back by the watermark is never sent.
  virtual size_t QueuedBytes() const = 0;
};

// Receives a stream's events. Every method may call back into the stream or link, including
// Reset(); the stream object stays valid until the callback returns.
class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  // The peer accepted a stream this side opened.
  virtual void OnStreamAccepted(Stream& stream) {}
  // Bytes from the peer. Call stream.Consumed(n) once they are written onward: that returns
  // credit to the peer.
  virtual void OnStreamData(Stream& stream, std::string_view data) = 0;
  // The peer half-closed: no more data will come.
  virtual void OnStreamEnd(Stream& stream) = 0;
  // Pending outbound data fell below the low watermark: Write() more.
  virtual void OnStreamWritable(Stream& stream) = 0;
  // One datagram from the peer (DATAGRAM frame). The default drops it, counted.
  virtual void OnStreamDatagram(Stream& stream, std::string_view datagram);
  // Final event: the stream finished cleanly (both sides ended and all data sent; status OK)
  // or died (refused, reset by the peer, link lost). The stream is gone after this returns.
  virtual void OnStreamClosed(Stream& stream, const absl::Status& status) = 0;
};

struct LinkOptions {
  bool is_relay_side = false;        // relay side opens even stream ids, the agent side odd
  uint32_t stream_window = 4 << 20;  // receive window granted to each new stream (agents; the
                                     // relay sets link.stream_window, 1 MiB by default)
  uint32_t link_window = 16 << 20;   // receive window of the whole link
  size_t max_streams = 10000;
  size_t transport_high_watermark = 1 << 20;  // stop sending DATA while the transport holds more
  size_t stream_high_watermark = 256 << 10;   // Stream::Write returns false above this
  // SendDatagram drops while the transport holds more than this. Above the DATA watermark, so
  // that bulk streams (which keep the transport filled up to it) do not starve datagrams.
  size_t datagram_queue_limit = 2 << 20;
};

// Control-plane events of a link.
class LinkHandler {
 public:
  virtual ~LinkHandler() = default;
  // A Control message other than Open/OpenResult (Hello, Challenge, Register, GoAway, ...).
  virtual void OnControl(Link& link, const link::Control& control) = 0;
  // The peer opens a stream. Call stream.Accept(handler) now or later, or stream.Refuse(reason).
  // Data the peer sends meanwhile is buffered within the stream window.
  virtual void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) = 0;
  virtual void OnPong(Link& link, uint64_t ping_payload) {}
  // A stream of `link` was removed (closed, refused or reset by either side).
  virtual void OnStreamRemoved(Link& link) {}
  // The link failed (protocol error) or was closed with Close(). Called once. The owner
  // closes the transport; the link must not be used afterwards except to be destroyed.
  virtual void OnLinkFailed(Link& link, const absl::Status& status) = 0;
};

class Stream {
 public:
  uint32_t id() const { return id_; }
  const link::Open& open() const { return open_; }
  Link& link() { return link_; }

  // Peer-opened streams: accept and start delivering data to `handler`, or refuse. `result`
  // may carry more for the peer (a tunnel's setup); its stream_id and ok are filled in here.
  void Accept(StreamHandler& handler, link::OpenResult result = {});
  void Refuse(std::string_view reason, link::OpenError error = link::OPEN_ERROR_UNSPECIFIED);
  // Peer-opened streams whose answer comes later (a relay bridging a tunnel first opens the
  // far stream): until Accept or Refuse, `handler` hears only OnStreamClosed, when the peer
  // resets the stream or the link is lost. What the peer sends meanwhile stays buffered.
  void Defer(StreamHandler& handler);
  // Streams this side opened: the peer's OpenResult, from OnStreamAccepted on (and during the
  // OnStreamClosed that reports a refusal, for its reason and error).
  const link::OpenResult& result() const { return result_; }

  // Queues bytes. Returns false when the caller should stop producing until OnStreamWritable.
  bool Write(std::string_view data);
  // Half-closes after all queued data.
  void End();
  // Aborts the stream; the peer gets a RESET with the reason. No more callbacks.
  void Reset(std::string_view reason);
  // Returns `bytes` of receive credit to the peer.
  void Consumed(size_t bytes);
  // Sends one datagram now, outside flow control (opened or accepted streams only). Returns
  // false when it was dropped (counted): stream not open, over kMaxDatagramPayload, or the
  // transport holds more than LinkOptions::datagram_queue_limit.
  bool SendDatagram(std::string_view datagram);

  size_t pending_bytes() const { return pending_.size() - pending_offset_; }
  bool write_ended() const { return end_requested_; }
  // The handler given to Accept, Defer or Link::OpenStream (nullptr before): who owns the
  // stream's far end, for control messages that name a stream (Control TunnelData).
  StreamHandler* handler() const { return handler_; }

 private:
  friend class Link;
  enum class State { kOpening, kAwaitingAccept, kOpen, kClosed };
  Stream(Link& link, uint32_t id, link::Open open, State state, uint32_t send_window,
         uint32_t recv_window)
      : link_(link),
        id_(id),
        open_(std::move(open)),
        state_(state),
        send_window_(send_window),
        recv_window_(recv_window) {}

  Link& link_;
  const uint32_t id_;
  link::Open open_;
  link::OpenResult result_;
  State state_;
  StreamHandler* handler_ = nullptr;
  int64_t send_window_;  // credit the peer gave us
  int64_t recv_window_;  // credit we gave the peer and it has not used
  uint64_t unacked_consumed_ = 0;
  std::string pending_;  // outbound bytes not yet framed
  size_t pending_offset_ = 0;
  bool end_requested_ = false;
  bool fin_sent_ = false;
  bool fin_received_ = false;
  bool blocked_by_watermark_ = false;  // Write returned false; owes an OnStreamWritable
  bool in_ready_queue_ = false;
  std::string early_data_;  // received before Accept
  bool early_fin_ = false;
};

class Link {
 public:
  Link(LinkTransport& transport, LinkHandler& handler, LinkOptions options);
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  // Bytes from the transport.
  void OnBytes(std::string_view bytes);
  // The transport drained below its watermark: resume sending DATA.
  void OnTransportDrained();

  void SendControl(const link::Control& control);
  // Opens a stream; `open.stream_id` is assigned here. Returns nullptr when the link is
  // going away or at its stream limit. Data may be written at once.
  Stream* OpenStream(link::Open open, StreamHandler& handler);
  void SendPing(uint64_t payload);
  // Announces GoAway: the peer opens no new streams here; open streams go on.
  void SendGoAway(std::string_view reason);
  // Fails every stream with `status` and reports OnLinkFailed. Idempotent.
  void Close(const absl::Status& status);

  // The open stream with this id, or nullptr (for callers that outlive a stream's callbacks).
  Stream* FindStream(uint32_t id) { return Find(id); }
  bool failed() const { return failed_; }
  bool peer_going_away() const { return peer_going_away_; }
  size_t stream_count() const { return streams_.size(); }
  // Unique among the links this process ever made: names a link after it is gone, where a
  // pointer could name a newer one.
  uint64_t serial() const { return serial_; }
  // The open streams for which `counted` is true.
  size_t CountStreams(absl::FunctionRef<bool(const Stream&)> counted) const;
  const LinkOptions& options() const { return options_; }
  // Stream window the peer grants our new streams (from its Hello/Challenge).
  void set_peer_stream_window(uint32_t window) { peer_stream_window_ = window; }
  // Link window the peer announced in its Hello/Challenge (the credit it assumes it holds); 0, or
  // anything below kMinAnnouncedLinkWindow, means unknown.
  void set_peer_link_window(uint32_t window) { peer_link_window_ = window; }
  static constexpr uint32_t kMinAnnouncedLinkWindow = 64 << 10;

 private:
  friend class Stream;
  void HandleFrame(const FrameDecoder::Frame& frame);
  void HandleControl(std::string_view payload);
  // A DATA frame, or a piece of one (the decoder yields a frame cut by the end of a read as its
  // bytes arrive): the frame is checked at its first piece and its FIN applied at its last.
  void HandleData(Stream* stream, const FrameDecoder::Frame& frame);
  void HandleWindow(uint32_t stream_id, uint32_t increment);
  void HandleReset(uint32_t stream_id, std::string_view reason);
  void HandleDatagram(uint32_t stream_id, std::string_view payload);
  void Fail(absl::Status status);

  Stream* Find(uint32_t id);
  void SendFrame(FrameType type, uint8_t flags, uint32_t stream_id, std::string_view payload);
  void ScheduleSend(Stream& stream);
  void PumpReady();
  // Sends what `stream` may send now. Returns false if blocked by the link or the transport.
  bool SendPending(Stream& stream);
  // Frames as much of `data` as the windows and the transport allow; returns bytes sent. With
  // `fin_after`, the frame carrying the last byte gets FIN.
  size_t SendData(Stream& stream, std::string_view data, bool fin_after);
  void MaybeFinish(Stream& stream);
  void Remove(Stream& stream, const absl::Status& status, bool notify);
  void ReturnLinkCredit(size_t bytes);
  static bool HasSendableWork(const Stream& stream);

  // Held by every entry point: streams removed meanwhile are freed only when the outermost
  // entry point returns, so no callback ever runs on a freed stream.
  class Busy {
   public:
    explicit Busy(Link& link) : link_(link) { ++link_.depth_; }
    ~Busy() {
      if (--link_.depth_ == 0) link_.graveyard_.clear();
    }

   private:
    Link& link_;
  };

  LinkTransport& transport_;
  LinkHandler& handler_;
  const LinkOptions options_;
  FrameDecoder decoder_{FrameDecoder::DataPayloads::kPieces};
  absl::flat_hash_map<uint32_t, std::unique_ptr<Stream>> streams_;
  std::vector<std::unique_ptr<Stream>> graveyard_;  // freed outside callbacks
  std::deque<uint32_t> ready_;                      // streams with data blocked by link/transport
  uint32_t next_stream_id_;
  uint32_t peer_stream_window_;
  uint32_t peer_link_window_ = 0;
  int64_t link_send_window_;
  uint64_t link_unacked_ = 0;
  bool failed_ = false;
  bool going_away_ = false;
  bool peer_going_away_ = false;
  const uint64_t serial_;
  int depth_ = 0;  // re-entrancy depth of public entry points
};

}  // namespace rdv

#endif  // RDV_COMMON_LINK_H_
