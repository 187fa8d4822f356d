// Frame layer of the link protocol (docs/protocol.md, "Frames").
//
//   0                   4        5        6                  10
//   +-------------------+--------+--------+------------------+-------------...
//   | payload length    | type   | flags  | stream id        | payload
//   | u32 big-endian    | u8     | u8     | u32 big-endian   | (length bytes)
//
// The decoder is incremental: it takes whatever the transport delivered and yields complete
// frames; a frame that violates the format is an error that ends the link.
#ifndef RDV_COMMON_FRAME_H_
#define RDV_COMMON_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rdv {

enum class FrameType : uint8_t {
  kControl = 0,  // protobuf rdv.link.Control, stream id 0
  kData = 1,     // raw bytes of a stream; flag kFin = sender half-closed
  kWindow = 2,   // u32 credit increment; stream id 0 = the link's window
  kReset = 3,    // abort a stream; payload = UTF-8 reason
  kPing = 4,     // 8 opaque bytes, echoed in kPong
  kPong = 5,
  kDatagram = 6,  // one whole datagram of a flow (stream); no flow control, may be dropped
};
inline constexpr uint8_t kFrameTypeCount = 7;

inline constexpr uint8_t kFlagFin = 0x01;

inline constexpr size_t kFrameHeaderSize = 10;
// Largest payload a receiver accepts. Senders cut DATA at kMaxDataPayload.
inline constexpr size_t kMaxFramePayload = 1 << 20;
inline constexpr size_t kMaxDataPayload = 64 * 1024;
// Largest DATAGRAM payload (the largest UDP payload over IPv4). Larger ones are dropped.
inline constexpr size_t kMaxDatagramPayload = 65507;

struct FrameHeader {
  uint32_t length = 0;
  FrameType type = FrameType::kControl;
  uint8_t flags = 0;
  uint32_t stream_id = 0;
};

// Appends a header for a frame of `payload_length` bytes to `out`.
void AppendFrameHeader(std::string& out, FrameType type, uint8_t flags, uint32_t stream_id,
                       size_t payload_length);
// Appends a whole frame.
void AppendFrame(std::string& out, FrameType type, uint8_t flags, uint32_t stream_id,
                 std::string_view payload);

class FrameDecoder {
 public:
  // How DATA payloads are yielded. kWhole: each frame once, complete. kPieces: a DATA frame cut
  // by the end of the input is yielded piece by piece as its bytes arrive, each piece where the
  // transport delivered it, so a receiver that passes stream bytes on never copies them to
  // reassemble a frame. Other frame types are always whole.
  enum class DataPayloads { kWhole, kPieces };

  struct Frame {
    FrameHeader header;        // header.length is the whole payload's length
    std::string_view payload;  // valid until the next call to Next() or Append()
    // Where `payload` starts in the frame's payload: 0 but for later pieces of a DATA frame.
    uint32_t offset = 0;
    bool first_piece() const { return offset == 0; }
    bool last_piece() const { return offset + payload.size() == header.length; }
  };

  explicit FrameDecoder(DataPayloads data = DataPayloads::kWhole) : pieces_(data) {}

  // Adds bytes received from the transport. The decoder reads them in place: `bytes` must stay
  // valid until Next() has returned false (or an error); only an incomplete frame at the end is
  // copied (for kPieces, only an incomplete header or non-DATA frame), so a stream of whole
  // frames is decoded without copying.
  void Append(std::string_view bytes);
  // Yields the next complete frame or DATA piece (true), nothing yet (false), or an error
  // describing the violation (unknown type, oversized length, bad flags). Call until it yields
  // nothing.
  absl::StatusOr<bool> Next(Frame& frame);
  // Bytes held for an incomplete frame plus unread appended input.
  size_t buffered() const { return partial_.size() + input_.size(); }

 private:
  // Checks a header; `p` points at kFrameHeaderSize bytes.
  static absl::StatusOr<FrameHeader> ParseHeader(const char* p);
  // Moves input into `partial_` until it holds `target` bytes (or input runs out).
  void FillPartial(size_t target);
  // kPieces: a DATA frame whose header was read, yielded from its first piece on.
  bool StartPieces(const FrameHeader& header, Frame& frame);
  // kPieces: the next piece of the DATA frame in progress, from `input_`.
  bool NextPiece(Frame& frame);

  const DataPayloads pieces_;
  std::string partial_;        // an incomplete frame carried over between Append() calls
  bool partial_done_ = false;  // partial_ held the frame returned last; clear on next call
  std::string_view input_;     // appended bytes not yet decoded
  std::string undrained_;      // input kept when Append came before Next drained it
  FrameHeader piece_header_;   // kPieces: the DATA frame in progress
  uint32_t piece_offset_ = 0;  // its payload bytes yielded so far
  uint32_t piece_left_ = 0;    // and still to come
};

uint32_t ReadBigEndian32(const char* p);
void AppendBigEndian32(std::string& out, uint32_t value);

}  // namespace rdv

#endif  // RDV_COMMON_FRAME_H_
