#include "common/frame.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace rdv {

uint32_t ReadBigEndian32(const char* p) {
  auto b = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
}

void AppendBigEndian32(std::string& out, uint32_t value) {
  char b[4] = {static_cast<char>(value >> 24), static_cast<char>(value >> 16),
               static_cast<char>(value >> 8), static_cast<char>(value)};
  out.append(b, 4);
}

void AppendFrameHeader(std::string& out, FrameType type, uint8_t flags, uint32_t stream_id,
                       size_t payload_length) {
  AppendBigEndian32(out, static_cast<uint32_t>(payload_length));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  AppendBigEndian32(out, stream_id);
}

void AppendFrame(std::string& out, FrameType type, uint8_t flags, uint32_t stream_id,
                 std::string_view payload) {
  AppendFrameHeader(out, type, flags, stream_id, payload.size());
  out.append(payload);
}

void FrameDecoder::Append(std::string_view bytes) {
  if (!input_.empty()) {
    // The previous input was not drained by Next(): keep it, it is about to go out of scope.
    std::string joined(input_);
    joined.append(bytes);
    undrained_ = std::move(joined);
    input_ = undrained_;
    return;
  }
  input_ = bytes;
}

void FrameDecoder::FillPartial(size_t target) {
  size_t take = std::min(target - partial_.size(), input_.size());
  partial_.append(input_.substr(0, take));
  input_.remove_prefix(take);
}

absl::StatusOr<FrameHeader> FrameDecoder::ParseHeader(const char* p) {
  FrameHeader header;
  header.length = ReadBigEndian32(p);
  uint8_t type = static_cast<uint8_t>(p[4]);
  header.flags = static_cast<uint8_t>(p[5]);
  header.stream_id = ReadBigEndian32(p + 6);
  if (type >= kFrameTypeCount) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown frame type %d", type));
  }
  header.type = static_cast<FrameType>(type);
  if (header.length > kMaxFramePayload) {
    return absl::InvalidArgumentError(absl::StrFormat("frame length %u exceeds the limit of %u",
                                                      header.length,
                                                      static_cast<uint32_t>(kMaxFramePayload)));
  }
  if (header.flags & ~kFlagFin || (header.flags && header.type != FrameType::kData)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("invalid flags 0x%02x on frame type %d", header.flags, type));
  }
  bool needs_stream = header.type == FrameType::kData || header.type == FrameType::kReset ||
                      header.type == FrameType::kDatagram;
  if (needs_stream && header.stream_id == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("frame type %d on stream 0", type));
  }
  bool link_only = header.type == FrameType::kControl || header.type == FrameType::kPing ||
                   header.type == FrameType::kPong;
  if (link_only && header.stream_id != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("frame type %d on stream %u (must be 0)", type, header.stream_id));
  }
  if (header.type == FrameType::kWindow && header.length != 4) {
    return absl::InvalidArgumentError(
        absl::StrFormat("window frame with %u payload bytes (must be 4)", header.length));
  }
  if ((header.type == FrameType::kPing || header.type == FrameType::kPong) && header.length != 8) {
    return absl::InvalidArgumentError(
        absl::StrFormat("ping/pong frame with %u payload bytes (must be 8)", header.length));
  }
  return header;
}

absl::StatusOr<bool> FrameDecoder::Next(Frame& frame) {
  if (partial_done_) {
    partial_.clear();
    partial_done_ = false;
  }
  frame.offset = 0;
  if (piece_left_ > 0) return NextPiece(frame);
  const bool pieces = pieces_ == DataPayloads::kPieces;
  if (!partial_.empty()) {
    // Finish the frame that straddled the previous input.
    if (partial_.size() < kFrameHeaderSize) FillPartial(kFrameHeaderSize);
    if (partial_.size() < kFrameHeaderSize) return false;
    absl::StatusOr<FrameHeader> header = ParseHeader(partial_.data());
    if (!header.ok()) return header.status();
    if (pieces && header->type == FrameType::kData && header->length > 0 &&
        partial_.size() == kFrameHeaderSize) {
      partial_.clear();
      return StartPieces(*header, frame);
    }
    FillPartial(kFrameHeaderSize + header->length);
    if (partial_.size() < kFrameHeaderSize + header->length) return false;
    frame.header = *header;
    frame.payload = std::string_view(partial_).substr(kFrameHeaderSize, header->length);
    partial_done_ = true;
    return true;
  }
  if (input_.size() < kFrameHeaderSize) {
    if (input_.empty()) return false;
    partial_.assign(input_);
    input_ = {};
    return false;
  }
  absl::StatusOr<FrameHeader> header = ParseHeader(input_.data());
  if (!header.ok()) return header.status();
  if (input_.size() < kFrameHeaderSize + header->length) {
    if (pieces && header->type == FrameType::kData) {
      input_.remove_prefix(kFrameHeaderSize);
      return StartPieces(*header, frame);
    }
    partial_.assign(input_);
    input_ = {};
    return false;
  }
  frame.header = *header;
  frame.payload = input_.substr(kFrameHeaderSize, header->length);
  input_.remove_prefix(kFrameHeaderSize + header->length);
  return true;
}

bool FrameDecoder::StartPieces(const FrameHeader& header, Frame& frame) {
  piece_header_ = header;
  piece_left_ = header.length;
  return NextPiece(frame);
}

bool FrameDecoder::NextPiece(Frame& frame) {
  const size_t take = std::min<size_t>(piece_left_, input_.size());
  if (take == 0) return false;
  frame.header = piece_header_;
  frame.offset = piece_offset_;
  frame.payload = input_.substr(0, take);
  input_.remove_prefix(take);
  piece_left_ -= static_cast<uint32_t>(take);
  piece_offset_ = piece_left_ > 0 ? piece_offset_ + static_cast<uint32_t>(take) : 0;
  return true;
}

}  // namespace rdv
