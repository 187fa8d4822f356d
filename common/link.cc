#include "common/link.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/strings/str_format.h"
#include "common/metrics.h"
#include "common/str_cat.h"

namespace rdv {
namespace {

Counter& FrameErrors(std::string_view reason) {
  return CounterOf("rdv_frame_errors_total", "Links closed for a malformed or illegal frame",
                   StrCat("reason=\"", reason, "\""));
}

// A peer that did not announce its link window (older versions) may hold any credit from 16 KiB
// up, so link credit goes back to it at least every 16 KiB: batching by a quarter of our own
// window alone deadlocked a peer configured with a window under a quarter of ours (e.g. a relay
// with link_window 1 MiB facing an agent with the 16 MiB default). A peer that announced its
// window gets credit back every quarter of it, which on a bulk stream is one WINDOW(0) per 4 MiB
// rather than one per read: each is a record, a write and a wakeup at the sender.
constexpr size_t kMaxLinkCreditBatch = 16 << 10;

// Link::serial(): links are made on several threads (relay workers).
std::atomic<uint64_t> next_serial{1};

Gauge& StreamsActive() {
  static Gauge& gauge = GaugeOf("rdv_streams_active", "Streams open on this process's links");
  return gauge;
}

Counter& LateFrames() {
  return CounterOf("rdv_frames_for_closed_streams_total",
                   "Frames that arrived for a stream already closed on this side");
}

Counter& DatagramsDropped(std::string_view reason) {
  return CounterOf("rdv_link_datagrams_dropped_total",
                   "Datagrams a link dropped instead of sending or delivering them",
                   StrCat("reason=\"", reason, "\""));
}

}  // namespace

void StreamHandler::OnStreamDatagram(Stream& stream, std::string_view datagram) {
  DatagramsDropped("unhandled").Inc();
}

// ---- Stream ----

void Stream::Accept(StreamHandler& handler, link::OpenResult result_to_send) {
  Link::Busy busy(link_);
  if (state_ != State::kAwaitingAccept) return;
  state_ = State::kOpen;
  handler_ = &handler;
  link::Control control;
  auto* result = control.mutable_open_result();
  *result = std::move(result_to_send);
  result->set_stream_id(id_);
  result->set_ok(true);
  link_.SendControl(control);
  // Deliver what arrived before the accept.
  if (!early_data_.empty()) {
    std::string data = std::move(early_data_);
    early_data_.clear();
    handler_->OnStreamData(*this, data);
  }
  if (state_ == State::kOpen && early_fin_) {
    fin_received_ = true;
    handler_->OnStreamEnd(*this);
    link_.MaybeFinish(*this);
  }
}

void Stream::Refuse(std::string_view reason, link::OpenError error) {
  Link::Busy busy(link_);
  if (state_ != State::kAwaitingAccept) return;
  link::Control control;
  auto* result = control.mutable_open_result();
  result->set_stream_id(id_);
  result->set_ok(false);
  result->set_reason(std::string(reason));
  result->set_error(error);
  link_.SendControl(control);
  link_.Remove(*this, absl::OkStatus(), /*notify=*/false);
}

void Stream::Defer(StreamHandler& handler) {
  if (state_ == State::kAwaitingAccept) handler_ = &handler;
}

bool Stream::Write(std::string_view data) {
  Link::Busy busy(link_);
  if (state_ == State::kClosed || end_requested_) return false;
  if (pending_bytes() == 0 && link_.ready_.empty()) {
    // Nothing queued ahead: frame straight from the caller's bytes, buffer only the rest.
    data.remove_prefix(link_.SendData(*this, data, /*fin_after=*/false));
  }
  if (!data.empty()) {
    pending_.append(data);
    link_.ScheduleSend(*this);
  }
  if (pending_bytes() >= link_.options_.stream_high_watermark) {
    blocked_by_watermark_ = true;
    return false;
  }
  return true;
}

void Stream::End() {
  Link::Busy busy(link_);
  if (state_ == State::kClosed || end_requested_) return;
  end_requested_ = true;
  link_.ScheduleSend(*this);
}

void Stream::Reset(std::string_view reason) {
  Link::Busy busy(link_);
  if (state_ == State::kClosed) return;
  link_.SendFrame(FrameType::kReset, 0, id_, reason);
  link_.Remove(*this, absl::OkStatus(), /*notify=*/false);
}

void Stream::Consumed(size_t bytes) {
  Link::Busy busy(link_);
  if (state_ == State::kClosed || fin_received_) return;
  unacked_consumed_ += bytes;
  // Batch credit: one WINDOW per quarter window keeps frame overhead low without starving.
  if (unacked_consumed_ >= link_.options_.stream_window / 4) {
    std::string payload;
    AppendBigEndian32(payload, static_cast<uint32_t>(unacked_consumed_));
    recv_window_ += static_cast<int64_t>(unacked_consumed_);
    unacked_consumed_ = 0;
    link_.SendFrame(FrameType::kWindow, 0, id_, payload);
  }
}

bool Stream::SendDatagram(std::string_view datagram) {
  Link::Busy busy(link_);
  if (link_.failed_ || (state_ != State::kOpen && state_ != State::kOpening)) {
    DatagramsDropped("not_open").Inc();
    return false;
  }
  if (datagram.size() > kMaxDatagramPayload) {
    DatagramsDropped("oversize").Inc();
    return false;
  }
  if (link_.transport_.QueuedBytes() > link_.options_.datagram_queue_limit) {
    DatagramsDropped("congested").Inc();
    return false;
  }
  link_.SendFrame(FrameType::kDatagram, 0, id_, datagram);
  return true;
}

// ---- Link ----

Link::Link(LinkTransport& transport, LinkHandler& handler, LinkOptions options)
    : transport_(transport),
      handler_(handler),
      options_(options),
      next_stream_id_(options.is_relay_side ? 2 : 1),
      peer_stream_window_(options.stream_window),
      link_send_window_(options.link_window),
      serial_(next_serial.fetch_add(1, std::memory_order_relaxed)) {}

Link::~Link() {
  // Streams are owned here; their handlers were told by Close() if the owner called it.
}

void Link::OnBytes(std::string_view bytes) {
  if (failed_) return;
  Busy busy(*this);
  decoder_.Append(bytes);
  while (!failed_) {
    FrameDecoder::Frame frame;
    absl::StatusOr<bool> next = decoder_.Next(frame);
    if (!next.ok()) {
      FrameErrors("malformed").Inc();
      Fail(next.status());
      break;
    }
    if (!*next) break;
    HandleFrame(frame);
  }
}

void Link::HandleFrame(const FrameDecoder::Frame& frame) {
  const FrameHeader& h = frame.header;
  switch (h.type) {
    case FrameType::kControl:
      HandleControl(frame.payload);
      return;
    case FrameType::kData:
      HandleData(Find(h.stream_id), frame);
      return;
    case FrameType::kWindow:
      HandleWindow(h.stream_id, ReadBigEndian32(frame.payload.data()));
      return;
    case FrameType::kReset:
      HandleReset(h.stream_id, frame.payload);
      return;
    case FrameType::kPing:
      SendFrame(FrameType::kPong, 0, 0, frame.payload);
      return;
    case FrameType::kDatagram:
      HandleDatagram(h.stream_id, frame.payload);
      return;
    case FrameType::kPong: {
      uint64_t value = (uint64_t{ReadBigEndian32(frame.payload.data())} << 32) |
                       ReadBigEndian32(frame.payload.data() + 4);
      handler_.OnPong(*this, value);
      return;
    }
  }
}

void Link::HandleControl(std::string_view payload) {
  link::Control control;
  if (!control.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    FrameErrors("bad_control").Inc();
    Fail(absl::InvalidArgumentError("control frame is not a valid Control message"));
    return;
  }
  switch (control.body_case()) {
    case link::Control::kOpen: {
      const link::Open& open = control.open();
      uint32_t id = open.stream_id();
      bool peer_parity = options_.is_relay_side ? (id % 2 == 1) : (id % 2 == 0 && id != 0);
      if (!peer_parity || streams_.contains(id)) {
        FrameErrors("bad_stream_id").Inc();
        Fail(absl::InvalidArgumentError(absl::StrFormat("Open with invalid stream id %u", id)));
        return;
      }
      auto stream =
          std::unique_ptr<Stream>(new Stream(*this, id, open, Stream::State::kAwaitingAccept,
                                             peer_stream_window_, options_.stream_window));
      Stream& ref = *stream;
      streams_.emplace(id, std::move(stream));
      StreamsActive().Inc();
      if (going_away_ || streams_.size() > options_.max_streams) {
        ref.Refuse(going_away_ ? "link is going away" : "too many streams on this link");
        return;
      }
      handler_.OnStreamOpen(*this, ref, open);
      return;
    }
    case link::Control::kOpenResult: {
      const link::OpenResult& result = control.open_result();
      Stream* stream = Find(result.stream_id());
      if (stream == nullptr) {
        LateFrames().Inc();
        return;
      }
      if (stream->state_ != Stream::State::kOpening) {
        FrameErrors("unexpected_open_result").Inc();
        Fail(absl::InvalidArgumentError(
            absl::StrFormat("OpenResult for stream %u that is not opening", result.stream_id())));
        return;
      }
      stream->result_ = result;
      if (!result.ok()) {
        Remove(*stream, absl::UnavailableError(result.reason()), /*notify=*/true);
        return;
      }
      stream->state_ = Stream::State::kOpen;
      stream->handler_->OnStreamAccepted(*stream);
      return;
    }
    case link::Control::kGoAway:
      peer_going_away_ = true;
      handler_.OnControl(*this, control);
      return;
    case link::Control::BODY_NOT_SET:
      FrameErrors("bad_control").Inc();
      Fail(absl::InvalidArgumentError("empty control message"));
      return;
    default:
      handler_.OnControl(*this, control);
      return;
  }
}

void Link::HandleData(Stream* stream, const FrameDecoder::Frame& frame) {
  const uint32_t stream_id = frame.header.stream_id;
  const std::string_view payload = frame.payload;
  // Link credit returns on receipt (see the header): the stream window bounds buffering.
  ReturnLinkCredit(payload.size());
  if (stream == nullptr) {
    if (frame.first_piece()) LateFrames().Inc();  // the rest of a frame follows its stream
    return;
  }
  if (frame.first_piece()) {
    if (stream->fin_received_ ||
        (stream->state_ == Stream::State::kAwaitingAccept && stream->early_fin_)) {
      FrameErrors("data_after_fin").Inc();
      Fail(absl::InvalidArgumentError(absl::StrFormat("DATA after FIN on stream %u", stream_id)));
      return;
    }
    const size_t length = frame.header.length;
    if (static_cast<int64_t>(length) > stream->recv_window_) {
      FrameErrors("flow_control").Inc();
      Fail(absl::InvalidArgumentError(
          absl::StrFormat("stream %u sent %zu bytes with only %lld of window", stream_id, length,
                          static_cast<long long>(stream->recv_window_))));
      return;
    }
    stream->recv_window_ -= static_cast<int64_t>(length);
  }
  const bool fin = frame.last_piece() && (frame.header.flags & kFlagFin);
  if (stream->state_ == Stream::State::kAwaitingAccept) {
    stream->early_data_.append(payload);
    stream->early_fin_ = fin;
    return;
  }
  if (!payload.empty()) stream->handler_->OnStreamData(*stream, payload);
  if (fin && stream->state_ != Stream::State::kClosed) {
    stream->fin_received_ = true;
    stream->handler_->OnStreamEnd(*stream);
    MaybeFinish(*stream);
  }
}

void Link::HandleWindow(uint32_t stream_id, uint32_t increment) {
  if (increment == 0) {
    FrameErrors("zero_window").Inc();
    Fail(absl::InvalidArgumentError("WINDOW with zero increment"));
    return;
  }
  if (stream_id == 0) {
    link_send_window_ += increment;
    PumpReady();
    return;
  }
  Stream* stream = Find(stream_id);
  if (stream == nullptr) return;  // closed meanwhile
  stream->send_window_ += increment;
  if (stream->send_window_ > (int64_t{1} << 31)) {
    FrameErrors("window_overflow").Inc();
    Fail(absl::InvalidArgumentError(absl::StrFormat("stream %u window overflow", stream_id)));
    return;
  }
  ScheduleSend(*stream);
}

void Link::HandleReset(uint32_t stream_id, std::string_view reason) {
  Stream* stream = Find(stream_id);
  if (stream == nullptr) return;
  Remove(*stream, absl::AbortedError(reason.empty() ? "reset by peer" : StrCat("reset: ", reason)),
         /*notify=*/stream->handler_ != nullptr);
}

void Link::HandleDatagram(uint32_t stream_id, std::string_view payload) {
  // A lost datagram is the application's problem, never the link's: every case here drops.
  Stream* stream = Find(stream_id);
  if (stream == nullptr) {
    DatagramsDropped("unknown_flow").Inc();
    return;
  }
  if (stream->handler_ == nullptr || stream->state_ == Stream::State::kAwaitingAccept) {
    DatagramsDropped("not_accepted").Inc();
    return;
  }
  if (payload.size() > kMaxDatagramPayload) {
    DatagramsDropped("oversize").Inc();
    return;
  }
  stream->handler_->OnStreamDatagram(*stream, payload);
}

void Link::SendControl(const link::Control& control) {
  if (failed_) return;
  std::string payload;
  control.SerializeToString(&payload);
  SendFrame(FrameType::kControl, 0, 0, payload);
}

Stream* Link::OpenStream(link::Open open, StreamHandler& handler) {
  Busy busy(*this);
  if (failed_ || going_away_ || peer_going_away_ || streams_.size() >= options_.max_streams) {
    return nullptr;
  }
  uint32_t id = next_stream_id_;
  next_stream_id_ += 2;
  open.set_stream_id(id);
  auto stream = std::unique_ptr<Stream>(new Stream(*this, id, open, Stream::State::kOpening,
                                                   peer_stream_window_, options_.stream_window));
  stream->handler_ = &handler;
  Stream* raw = stream.get();
  streams_.emplace(id, std::move(stream));
  StreamsActive().Inc();
  link::Control control;
  *control.mutable_open() = std::move(open);
  SendControl(control);
  return raw;
}

void Link::SendPing(uint64_t payload) {
  std::string bytes;
  AppendBigEndian32(bytes, static_cast<uint32_t>(payload >> 32));
  AppendBigEndian32(bytes, static_cast<uint32_t>(payload));
  SendFrame(FrameType::kPing, 0, 0, bytes);
}

void Link::SendGoAway(std::string_view reason) {
  Busy busy(*this);
  if (going_away_) return;
  going_away_ = true;
  link::Control control;
  control.mutable_go_away()->set_reason(std::string(reason));
  SendControl(control);
}

void Link::Close(const absl::Status& status) {
  Busy busy(*this);
  Fail(status);
}

void Link::Fail(absl::Status status) {
  if (failed_) return;
  failed_ = true;
  std::vector<Stream*> open;
  open.reserve(streams_.size());
  for (auto& [id, stream] : streams_) open.push_back(stream.get());
  for (Stream* stream : open) {
    Remove(*stream, absl::UnavailableError(StrCat("link lost: ", status.message())),
           /*notify=*/stream->handler_ != nullptr);
  }
  ready_.clear();
  handler_.OnLinkFailed(*this, status);
}

size_t Link::CountStreams(absl::FunctionRef<bool(const Stream&)> counted) const {
  size_t n = 0;
  for (const auto& [id, stream] : streams_) {
    if (counted(*stream)) ++n;
  }
  return n;
}

Stream* Link::Find(uint32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

void Link::SendFrame(FrameType type, uint8_t flags, uint32_t stream_id, std::string_view payload) {
  if (failed_) return;
  std::string header;
  header.reserve(kFrameHeaderSize);
  AppendFrameHeader(header, type, flags, stream_id, payload.size());
  transport_.Send(header);
  if (!payload.empty()) transport_.Send(payload);
}

void Link::ScheduleSend(Stream& stream) {
  if (failed_ || stream.state_ == Stream::State::kClosed) return;
  if (!ready_.empty() || !SendPending(stream)) {
    if (!stream.in_ready_queue_ && HasSendableWork(stream)) {
      stream.in_ready_queue_ = true;
      ready_.push_back(stream.id_);
    }
  }
}

void Link::OnTransportDrained() {
  Busy busy(*this);
  PumpReady();
}

bool Link::HasSendableWork(const Stream& stream) {
  if (stream.state_ == Stream::State::kClosed) return false;
  if (stream.pending_bytes() > 0) return stream.send_window_ > 0;
  return stream.end_requested_ && !stream.fin_sent_;
}

void Link::PumpReady() {
  // Round-robin: each ready stream sends what it can; one blocked by the link or transport
  // goes back to the front and pumping stops.
  size_t rounds = ready_.size();
  while (!ready_.empty() && rounds-- > 0 && !failed_) {
    uint32_t id = ready_.front();
    ready_.pop_front();
    Stream* stream = Find(id);
    if (stream == nullptr) continue;
    stream->in_ready_queue_ = false;
    if (!SendPending(*stream)) {
      if (HasSendableWork(*stream)) {
        stream->in_ready_queue_ = true;
        ready_.push_front(id);
      }
      break;
    }
  }
}

size_t Link::SendData(Stream& stream, std::string_view data, bool fin_after) {
  size_t sent = 0;
  while (sent < data.size()) {
    if (link_send_window_ <= 0 || stream.send_window_ <= 0 ||
        transport_.QueuedBytes() >= options_.transport_high_watermark) {
      break;
    }
    size_t n = std::min<size_t>({data.size() - sent, kMaxDataPayload,
                                 static_cast<size_t>(stream.send_window_),
                                 static_cast<size_t>(link_send_window_)});
    bool last = fin_after && sent + n == data.size();
    SendFrame(FrameType::kData, last ? kFlagFin : 0, stream.id_, data.substr(sent, n));
    if (last) stream.fin_sent_ = true;
    sent += n;
    stream.send_window_ -= static_cast<int64_t>(n);
    link_send_window_ -= static_cast<int64_t>(n);
  }
  return sent;
}

bool Link::SendPending(Stream& stream) {
  bool blocked_by_link = false;
  if (stream.pending_bytes() > 0) {
    std::string_view pending = std::string_view(stream.pending_).substr(stream.pending_offset_);
    stream.pending_offset_ += SendData(stream, pending, stream.end_requested_);
    if (stream.pending_offset_ == stream.pending_.size()) {
      stream.pending_.clear();
      stream.pending_offset_ = 0;
    } else {
      if (stream.pending_offset_ > (256 << 10)) {
        stream.pending_.erase(0, stream.pending_offset_);
        stream.pending_offset_ = 0;
      }
      // Stopped by the link or the transport (the caller queues the stream), unless its own
      // window ran out (then the peer's WINDOW frame reschedules it).
      blocked_by_link = stream.send_window_ > 0;
    }
  }
  if (stream.pending_bytes() == 0 && stream.end_requested_ && !stream.fin_sent_) {
    SendFrame(FrameType::kData, kFlagFin, stream.id_, {});
    stream.fin_sent_ = true;
  }
  if (stream.blocked_by_watermark_ && stream.pending_bytes() < options_.stream_high_watermark / 2 &&
      stream.handler_) {
    stream.blocked_by_watermark_ = false;
    stream.handler_->OnStreamWritable(stream);
  }
  MaybeFinish(stream);
  return !blocked_by_link;
}

void Link::MaybeFinish(Stream& stream) {
  if (stream.state_ == Stream::State::kClosed) return;
  if (stream.fin_sent_ && stream.fin_received_ && stream.pending_bytes() == 0) {
    Remove(stream, absl::OkStatus(), /*notify=*/true);
  }
}

void Link::Remove(Stream& stream, const absl::Status& status, bool notify) {
  if (stream.state_ == Stream::State::kClosed) return;
  stream.state_ = Stream::State::kClosed;
  // A refused or reset stream's unconsumed receive window is the peer's to forget; the link
  // credit for it was already returned on receipt.
  auto it = streams_.find(stream.id_);
  std::unique_ptr<Stream> owned = std::move(it->second);
  streams_.erase(it);
  StreamsActive().Dec();
  StreamHandler* handler = stream.handler_;
  stream.handler_ = nullptr;
  graveyard_.push_back(std::move(owned));
  handler_.OnStreamRemoved(*this);
  if (notify && handler) handler->OnStreamClosed(stream, status);
}

void Link::ReturnLinkCredit(size_t bytes) {
  link_unacked_ += bytes;
  const size_t batch = peer_link_window_ >= kMinAnnouncedLinkWindow
                           ? std::min(options_.link_window, peer_link_window_) / 4
                           : std::min<size_t>(options_.link_window / 4, kMaxLinkCreditBatch);
  if (link_unacked_ > 0 && link_unacked_ >= batch) {
    std::string payload;
    AppendBigEndian32(payload, static_cast<uint32_t>(link_unacked_));
    link_unacked_ = 0;
    SendFrame(FrameType::kWindow, 0, 0, payload);
  }
}

}  // namespace rdv
