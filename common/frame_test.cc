// Tests of the frame codec (docs/protocol.md, "Frames"): the wire layout, incremental decoding,
// every rejection the decoder makes, and robustness against arbitrary bytes.
#include "common/frame.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

// absl::string_view (Debian's is not std::string_view) prints badly in gtest failures.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

struct DecodedFrame {
  FrameHeader header;
  std::string payload;
};

// Drains every complete frame from `decoder`. Fails the test on a decoding error.
std::vector<DecodedFrame> DrainFrames(FrameDecoder& decoder) {
  std::vector<DecodedFrame> frames;
  while (true) {
    FrameDecoder::Frame frame;
    absl::StatusOr<bool> next = decoder.Next(frame);
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok() || !*next) break;
    frames.push_back({frame.header, std::string(frame.payload)});
  }
  return frames;
}

// A raw header, bypassing AppendFrameHeader, so tests can write what an encoder never would.
std::string RawHeader(uint32_t length, uint8_t type, uint8_t flags, uint32_t stream_id) {
  std::string out;
  AppendBigEndian32(out, length);
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  AppendBigEndian32(out, stream_id);
  return out;
}

// Decodes `bytes` and returns the decoder's error (OkStatus if it decoded or wanted more).
absl::Status DecodeError(std::string_view bytes) {
  FrameDecoder decoder;
  decoder.Append(bytes);
  FrameDecoder::Frame frame;
  while (true) {
    absl::StatusOr<bool> next = decoder.Next(frame);
    if (!next.ok()) return next.status();
    if (!*next) return absl::OkStatus();
  }
}

std::string Eight(uint64_t value) {
  std::string out;
  AppendBigEndian32(out, static_cast<uint32_t>(value >> 32));
  AppendBigEndian32(out, static_cast<uint32_t>(value));
  return out;
}

TEST(BigEndianTest, RoundTripsAndIsNetworkOrder) {
  for (uint32_t value :
       {0u, 1u, 0x7fu, 0x80u, 0xffu, 0x100u, 0x12345678u, 0x80000000u, 0xfffffffeu, 0xffffffffu}) {
    std::string out;
    AppendBigEndian32(out, value);
    ASSERT_EQ(out.size(), 4u);
    EXPECT_EQ(ReadBigEndian32(out.data()), value);
  }
  std::string out;
  AppendBigEndian32(out, 0x01020304);
  EXPECT_EQ(out, std::string("\x01\x02\x03\x04", 4));
}

TEST(FrameHeaderTest, LayoutIsLengthTypeFlagsStreamId) {
  std::string out;
  AppendFrameHeader(out, FrameType::kData, kFlagFin, 0x0a0b0c0d, 0x00010203);
  ASSERT_EQ(out.size(), kFrameHeaderSize);
  EXPECT_EQ(out, std::string("\x00\x01\x02\x03"   // length
                             "\x01"               // type DATA
                             "\x01"               // flags FIN
                             "\x0a\x0b\x0c\x0d",  // stream id
                             10));
}

TEST(FrameHeaderTest, TypeValuesAreTheWireValues) {
  EXPECT_EQ(static_cast<int>(FrameType::kControl), 0);
  EXPECT_EQ(static_cast<int>(FrameType::kData), 1);
  EXPECT_EQ(static_cast<int>(FrameType::kWindow), 2);
  EXPECT_EQ(static_cast<int>(FrameType::kReset), 3);
  EXPECT_EQ(static_cast<int>(FrameType::kPing), 4);
  EXPECT_EQ(static_cast<int>(FrameType::kPong), 5);
  EXPECT_EQ(static_cast<int>(FrameType::kDatagram), 6);
  EXPECT_EQ(kFrameTypeCount, 7);
}

TEST(FrameDecoderTest, RoundTripsEveryFrameType) {
  std::string window;
  AppendBigEndian32(window, 0xdeadbeef);
  struct Case {
    FrameType type;
    uint8_t flags;
    uint32_t stream_id;
    std::string payload;
  };
  std::vector<Case> cases = {
      {FrameType::kControl, 0, 0, "\x3a\x02\x08\x01"},
      {FrameType::kControl, 0, 0, ""},
      {FrameType::kData, 0, 1, "hello"},
      {FrameType::kData, kFlagFin, 2, "bye"},
      {FrameType::kData, kFlagFin, 0xffffffff, ""},
      {FrameType::kData, 0, 3, std::string(kMaxDataPayload, 'x')},
      {FrameType::kWindow, 0, 0, window},
      {FrameType::kWindow, 0, 7, window},
      {FrameType::kReset, 0, 9, "reason"},
      {FrameType::kReset, 0, 10, ""},
      {FrameType::kPing, 0, 0, Eight(0x0123456789abcdefULL)},
      {FrameType::kPong, 0, 0, Eight(~uint64_t{0})},
      {FrameType::kDatagram, 0, 4, "dns query"},
      {FrameType::kDatagram, 0, 5, ""},
      {FrameType::kDatagram, 0, 6, std::string(kMaxDatagramPayload, 'd')},
  };
  std::string wire;
  for (const Case& c : cases) AppendFrame(wire, c.type, c.flags, c.stream_id, c.payload);

  FrameDecoder decoder;
  decoder.Append(wire);
  std::vector<DecodedFrame> frames = DrainFrames(decoder);
  ASSERT_EQ(frames.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(frames[i].header.type, cases[i].type);
    EXPECT_EQ(frames[i].header.flags, cases[i].flags);
    EXPECT_EQ(frames[i].header.stream_id, cases[i].stream_id);
    EXPECT_EQ(frames[i].header.length, cases[i].payload.size());
    EXPECT_EQ(frames[i].payload, cases[i].payload);
  }
  EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(FrameDecoderTest, AcceptsThePayloadLimitExactly) {
  std::string payload(kMaxFramePayload, '\x5a');
  payload.front() = 'a';
  payload.back() = 'z';
  std::string wire;
  AppendFrame(wire, FrameType::kReset, 0, 4, payload);
  FrameDecoder decoder;
  decoder.Append(wire);
  std::vector<DecodedFrame> frames = DrainFrames(decoder);
  ASSERT_EQ(frames.size(), 1u);
  EXPECT_EQ(frames[0].header.length, kMaxFramePayload);
  EXPECT_TRUE(frames[0].payload == payload);
}

TEST(FrameDecoderTest, DecodesByteByByte) {
  std::string wire;
  AppendFrame(wire, FrameType::kControl, 0, 0, "control");
  AppendFrame(wire, FrameType::kData, 0, 5, std::string(300, 'd'));
  AppendFrame(wire, FrameType::kData, kFlagFin, 5, "");
  std::string window;
  AppendBigEndian32(window, 65536);
  AppendFrame(wire, FrameType::kWindow, 0, 5, window);
  AppendFrame(wire, FrameType::kPing, 0, 0, Eight(42));
  AppendFrame(wire, FrameType::kReset, 0, 6, "gone");

  FrameDecoder decoder;
  std::vector<DecodedFrame> frames;
  for (size_t i = 0; i < wire.size(); ++i) {
    decoder.Append(std::string_view(wire).substr(i, 1));
    std::vector<DecodedFrame> more = DrainFrames(decoder);
    frames.insert(frames.end(), more.begin(), more.end());
  }
  ASSERT_EQ(frames.size(), 6u);
  EXPECT_EQ(frames[0].payload, "control");
  EXPECT_EQ(frames[1].payload, std::string(300, 'd'));
  EXPECT_EQ(frames[1].header.stream_id, 5u);
  EXPECT_EQ(frames[2].header.flags, kFlagFin);
  EXPECT_EQ(frames[2].payload, "");
  EXPECT_EQ(ReadBigEndian32(frames[3].payload.data()), 65536u);
  EXPECT_EQ(frames[4].payload, Eight(42));
  EXPECT_EQ(frames[5].header.type, FrameType::kReset);
  EXPECT_EQ(frames[5].payload, "gone");
  EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(FrameDecoderTest, WaitsForTheWholeHeaderAndPayload) {
  std::string wire;
  AppendFrame(wire, FrameType::kData, 0, 1, "0123456789");
  FrameDecoder decoder;
  FrameDecoder::Frame frame;
  decoder.Append(std::string_view(wire).substr(0, kFrameHeaderSize - 1));
  EXPECT_EQ(decoder.Next(frame).value(), false);
  decoder.Append(std::string_view(wire).substr(kFrameHeaderSize - 1, 1));
  EXPECT_EQ(decoder.Next(frame).value(), false);  // header complete, payload missing
  decoder.Append(std::string_view(wire).substr(kFrameHeaderSize, 9));
  EXPECT_EQ(decoder.Next(frame).value(), false);
  EXPECT_EQ(decoder.buffered(), wire.size() - 1);
  decoder.Append(std::string_view(wire).substr(kFrameHeaderSize + 9));
  ASSERT_EQ(decoder.Next(frame).value(), true);
  EXPECT_EQ(frame.payload, "0123456789");
  EXPECT_EQ(decoder.Next(frame).value(), false);
}

TEST(FrameDecoderTest, StreamsManyFramesThroughOneDecoder) {
  // Steady streaming with reads that straddle frames exercises the lazy compaction.
  std::mt19937 rng(7);
  std::string wire;
  std::vector<std::string> payloads;
  for (int i = 0; i < 2000; ++i) {
    std::string payload(rng() % 3000, static_cast<char>('a' + i % 26));
    AppendFrame(wire, FrameType::kData, 0, static_cast<uint32_t>(2 * i + 1), payload);
    payloads.push_back(std::move(payload));
  }
  FrameDecoder decoder;
  size_t offset = 0;
  size_t next = 0;
  while (offset < wire.size()) {
    size_t n = std::min<size_t>(wire.size() - offset, 1 + rng() % 9000);
    decoder.Append(std::string_view(wire).substr(offset, n));
    offset += n;
    for (const DecodedFrame& frame : DrainFrames(decoder)) {
      ASSERT_LT(next, payloads.size());
      EXPECT_EQ(frame.header.stream_id, 2 * next + 1);
      EXPECT_EQ(frame.payload, payloads[next]);
      ++next;
    }
  }
  EXPECT_EQ(next, payloads.size());
  EXPECT_EQ(decoder.buffered(), 0u);
}

// ---- DATA payloads in pieces ----

TEST(FrameDecoderPiecesTest, ADataFrameCutByTheInputIsYieldedAsItsBytesArrive) {
  std::string wire;
  std::string payload(300, 'p');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>('a' + i % 26);
  AppendFrame(wire, FrameType::kData, kFlagFin, 5, payload);
  AppendFrame(wire, FrameType::kControl, 0, 0, "control, whole");
  FrameDecoder decoder(FrameDecoder::DataPayloads::kPieces);
  FrameDecoder::Frame frame;
  const std::string_view view(wire);

  decoder.Append(view.substr(0, 100));
  ASSERT_TRUE(decoder.Next(frame).value());
  EXPECT_EQ(frame.header.type, FrameType::kData);
  EXPECT_EQ(frame.header.length, 300u);
  EXPECT_EQ(frame.offset, 0u);
  EXPECT_EQ(frame.payload, payload.substr(0, 90));
  EXPECT_EQ(frame.payload.data(), view.data() + kFrameHeaderSize) << "read in place";
  EXPECT_TRUE(frame.first_piece());
  EXPECT_FALSE(frame.last_piece());
  EXPECT_FALSE(decoder.Next(frame).value());
  EXPECT_EQ(decoder.buffered(), 0u) << "nothing of a DATA frame is copied";

  decoder.Append(view.substr(100, 150));
  ASSERT_TRUE(decoder.Next(frame).value());
  EXPECT_EQ(frame.offset, 90u);
  EXPECT_EQ(frame.payload, payload.substr(90, 150));
  EXPECT_FALSE(frame.first_piece());
  EXPECT_FALSE(frame.last_piece());
  EXPECT_FALSE(decoder.Next(frame).value());

  decoder.Append(view.substr(250, 65));  // the end of the DATA frame and part of the next
  ASSERT_TRUE(decoder.Next(frame).value());
  EXPECT_EQ(frame.offset, 240u);
  EXPECT_EQ(frame.payload, payload.substr(240));
  EXPECT_TRUE(frame.last_piece());
  EXPECT_EQ(frame.header.flags, kFlagFin);
  EXPECT_FALSE(decoder.Next(frame).value()) << "a control frame waits until it is whole";
  decoder.Append(view.substr(315));
  ASSERT_TRUE(decoder.Next(frame).value());
  EXPECT_EQ(frame.header.type, FrameType::kControl);
  EXPECT_EQ(frame.payload, "control, whole");
  EXPECT_TRUE(frame.first_piece() && frame.last_piece());
  EXPECT_FALSE(decoder.Next(frame).value());
  EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(FrameDecoderPiecesTest, ReassemblesFromReadsOfAnySize) {
  std::mt19937 rng(11);
  struct Expected {
    FrameType type;
    uint32_t stream_id;
    uint8_t flags;
    std::string payload;
  };
  std::vector<Expected> expected;
  std::string wire;
  for (int i = 0; i < 500; ++i) {
    Expected e{i % 3 == 0 ? FrameType::kReset : FrameType::kData, static_cast<uint32_t>(i + 1),
               static_cast<uint8_t>(i % 5 == 1 ? kFlagFin : 0),
               std::string(rng() % 5000, static_cast<char>('a' + i % 26))};
    if (e.type != FrameType::kData) e.flags = 0;
    AppendFrame(wire, e.type, e.flags, e.stream_id, e.payload);
    expected.push_back(std::move(e));
  }
  for (size_t max_read : {1, 7, 4096, 20000}) {
    SCOPED_TRACE(max_read);
    FrameDecoder decoder(FrameDecoder::DataPayloads::kPieces);
    std::vector<Expected> got;
    size_t offset = 0;
    while (offset < wire.size()) {
      const size_t n = std::min<size_t>(wire.size() - offset, 1 + rng() % max_read);
      const std::string_view input = std::string_view(wire).substr(offset, n);
      decoder.Append(input);
      offset += n;
      FrameDecoder::Frame frame;
      while (true) {
        absl::StatusOr<bool> next = decoder.Next(frame);
        ASSERT_TRUE(next.ok()) << next.status();
        if (!*next) break;
        if (frame.first_piece()) {
          got.push_back({frame.header.type, frame.header.stream_id, frame.header.flags, ""});
        }
        ASSERT_FALSE(got.empty());
        EXPECT_EQ(frame.offset, got.back().payload.size());
        got.back().payload.append(frame.payload);
        if (frame.header.type == FrameType::kData && !frame.payload.empty()) {
          EXPECT_TRUE(frame.payload.data() >= input.data() &&
                      frame.payload.data() + frame.payload.size() <= input.data() + input.size())
              << "DATA is read where the input put it";
        }
      }
    }
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].type, expected[i].type) << i;
      EXPECT_EQ(got[i].stream_id, expected[i].stream_id) << i;
      EXPECT_EQ(got[i].flags, expected[i].flags) << i;
      EXPECT_EQ(got[i].payload, expected[i].payload) << i;
    }
    EXPECT_EQ(decoder.buffered(), 0u);
  }
}

TEST(FrameDecoderTest, InputLeftUndecodedIsKeptInOrder) {
  std::string wire;
  AppendFrame(wire, FrameType::kReset, 0, 1, "first");
  AppendFrame(wire, FrameType::kReset, 0, 2, "second");
  FrameDecoder decoder;
  FrameDecoder::Frame frame;
  std::string first_input = wire.substr(0, wire.size() - 2);
  decoder.Append(first_input);
  ASSERT_TRUE(decoder.Next(frame).value());
  EXPECT_EQ(frame.payload, "first");
  // The caller appends before draining: the rest of its first input must survive.
  decoder.Append(std::string_view(wire).substr(wire.size() - 2));
  first_input.assign(first_input.size(), '!');  // reused, as a read buffer would be
  ASSERT_TRUE(decoder.Next(frame).value());
  EXPECT_EQ(frame.payload, "second");
  EXPECT_FALSE(decoder.Next(frame).value());
}

// ---- Rejections ----

TEST(FrameDecoderRejectTest, UnknownType) {
  for (int type : {7, 8, 0x7f, 0x80, 0xff}) {
    absl::Status status = DecodeError(RawHeader(0, static_cast<uint8_t>(type), 0, 1));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << type;
    EXPECT_THAT(Message(status), HasSubstr("unknown frame type")) << type;
  }
}

TEST(FrameDecoderRejectTest, OversizedLengthBeforeThePayloadArrives) {
  // Rejected from the header alone: a receiver must not buffer toward a huge frame.
  for (uint32_t length : {static_cast<uint32_t>(kMaxFramePayload + 1), 0x7fffffffu, 0xffffffffu}) {
    absl::Status status = DecodeError(RawHeader(length, 1, 0, 1));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << length;
    EXPECT_THAT(Message(status), HasSubstr("exceeds the limit")) << length;
  }
  // The limit itself is fine (and the decoder just waits for the payload).
  EXPECT_TRUE(DecodeError(RawHeader(kMaxFramePayload, 1, 0, 1)).ok());
}

TEST(FrameDecoderRejectTest, BadFlags) {
  struct Case {
    uint8_t type;
    uint8_t flags;
    uint32_t stream_id;
    std::string payload;
  };
  std::vector<Case> cases = {
      {1, 0x02, 1, ""},                              // unknown flag on DATA
      {1, 0x80, 1, ""},                              // unknown flag on DATA
      {1, 0x03, 1, ""},                              // FIN plus an unknown flag
      {0, kFlagFin, 0, ""},                          // FIN on CONTROL
      {2, kFlagFin, 1, std::string("\0\0\0\1", 4)},  // FIN on WINDOW
      {3, kFlagFin, 1, ""},                          // FIN on RESET
      {4, kFlagFin, 0, Eight(1)},                    // FIN on PING
      {5, kFlagFin, 0, Eight(1)},                    // FIN on PONG
      {6, kFlagFin, 1, "x"},                         // FIN on DATAGRAM
  };
  for (const Case& c : cases) {
    std::string wire =
        RawHeader(static_cast<uint32_t>(c.payload.size()), c.type, c.flags, c.stream_id) +
        c.payload;
    absl::Status status = DecodeError(wire);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
        << "type " << int{c.type} << " flags " << int{c.flags};
    EXPECT_THAT(Message(status), HasSubstr("invalid flags"));
  }
}

TEST(FrameDecoderRejectTest, DataResetAndDatagramOnStreamZero) {
  for (FrameType type : {FrameType::kData, FrameType::kReset, FrameType::kDatagram}) {
    std::string wire;
    AppendFrame(wire, type, 0, 0, "x");
    absl::Status status = DecodeError(wire);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(status), HasSubstr("on stream 0"));
  }
  std::string fin;
  AppendFrame(fin, FrameType::kData, kFlagFin, 0, "");
  EXPECT_THAT(Message(DecodeError(fin)), HasSubstr("on stream 0"));
}

TEST(FrameDecoderRejectTest, LinkFramesOnANonZeroStream) {
  std::vector<std::pair<FrameType, std::string>> cases = {
      {FrameType::kControl, std::string("\x3a\x00", 2)},
      {FrameType::kPing, Eight(1)},
      {FrameType::kPong, Eight(1)},
  };
  for (const auto& [type, payload] : cases) {
    for (uint32_t stream_id : {1u, 2u, 0xffffffffu}) {
      std::string wire;
      AppendFrame(wire, type, 0, stream_id, payload);
      absl::Status status = DecodeError(wire);
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(Message(status), HasSubstr("must be 0"));
    }
  }
}

TEST(FrameDecoderRejectTest, WindowPayloadMustBeFourBytes) {
  for (size_t size : {0, 1, 3, 5, 8, 100}) {
    std::string wire;
    AppendFrame(wire, FrameType::kWindow, 0, 1, std::string(size, '\1'));
    absl::Status status = DecodeError(wire);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << size;
    EXPECT_THAT(Message(status), HasSubstr("must be 4")) << size;
  }
}

TEST(FrameDecoderRejectTest, PingAndPongPayloadMustBeEightBytes) {
  for (FrameType type : {FrameType::kPing, FrameType::kPong}) {
    for (size_t size : {0, 1, 4, 7, 9, 16}) {
      std::string wire;
      AppendFrame(wire, type, 0, 0, std::string(size, '\1'));
      absl::Status status = DecodeError(wire);
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << size;
      EXPECT_THAT(Message(status), HasSubstr("must be 8")) << size;
    }
  }
}

TEST(FrameDecoderRejectTest, RejectsFromTheHeaderWithoutWaitingForThePayload) {
  // A WINDOW announcing 100 payload bytes is refused as soon as its header is complete.
  FrameDecoder decoder;
  std::string header = RawHeader(100, 2, 0, 1);  // Append reads in place: keep it alive
  decoder.Append(header);
  FrameDecoder::Frame frame;
  EXPECT_FALSE(decoder.Next(frame).ok());
}

TEST(FrameDecoderRejectTest, ErrorAfterGoodFramesAndErrorIsSticky) {
  std::string wire;
  AppendFrame(wire, FrameType::kData, 0, 1, "ok");
  wire += RawHeader(0, 9, 0, 1);
  FrameDecoder decoder;
  decoder.Append(wire);
  FrameDecoder::Frame frame;
  ASSERT_EQ(decoder.Next(frame).value(), true);
  EXPECT_EQ(frame.payload, "ok");
  EXPECT_FALSE(decoder.Next(frame).ok());
  // The decoder does not skip past the bad frame: the link is over.
  std::string zeros(20, '\0');
  decoder.Append(zeros);
  EXPECT_FALSE(decoder.Next(frame).ok());
}

// ---- Robustness ----

TEST(FrameDecoderFuzzTest, RandomBytesNeverCrash) {
  // Deterministic and bounded. Every frame the decoder yields must satisfy the format rules.
  std::mt19937 rng(20240601);
  int errors = 0;
  int frames = 0;
  for (int round = 0; round < 3000; ++round) {
    FrameDecoder decoder;
    int chunks = 1 + static_cast<int>(rng() % 8);
    bool failed = false;
    for (int c = 0; c < chunks && !failed; ++c) {
      std::string bytes(rng() % 64, '\0');
      for (char& b : bytes) b = static_cast<char>(rng());
      // Bias some headers toward plausible values so decoding gets past the first checks.
      if (bytes.size() >= kFrameHeaderSize && rng() % 2 == 0) {
        bytes[0] = bytes[1] = bytes[2] = 0;
        bytes[3] = static_cast<char>(rng() % 24);
        bytes[4] = static_cast<char>(rng() % 7);
        bytes[5] = static_cast<char>(rng() % 4 == 0 ? 1 : 0);
        if (rng() % 2 == 0) bytes[6] = bytes[7] = bytes[8] = bytes[9] = 0;
      }
      decoder.Append(bytes);
      while (true) {
        FrameDecoder::Frame frame;
        absl::StatusOr<bool> next = decoder.Next(frame);
        if (!next.ok()) {
          ++errors;
          failed = true;
          break;
        }
        if (!*next) break;
        ++frames;
        const FrameHeader& h = frame.header;
        ASSERT_LT(static_cast<uint8_t>(h.type), kFrameTypeCount);
        ASSERT_LE(h.length, kMaxFramePayload);
        ASSERT_EQ(frame.payload.size(), h.length);
        ASSERT_TRUE(h.flags == 0 || (h.flags == kFlagFin && h.type == FrameType::kData));
        if (h.type == FrameType::kData || h.type == FrameType::kReset) {
          ASSERT_NE(h.stream_id, 0u);
        }
        if (h.type == FrameType::kControl || h.type == FrameType::kPing ||
            h.type == FrameType::kPong) {
          ASSERT_EQ(h.stream_id, 0u);
        }
        if (h.type == FrameType::kWindow) {
          ASSERT_EQ(h.length, 4u);
        }
        if (h.type == FrameType::kPing || h.type == FrameType::kPong) {
          ASSERT_EQ(h.length, 8u);
        }
      }
    }
  }
  // The generator must reach both outcomes, or the test proves little.
  EXPECT_GT(errors, 100);
  EXPECT_GT(frames, 100);
}

TEST(FrameDecoderFuzzTest, RandomValidFramesSurviveRandomSplits) {
  std::mt19937 rng(99);
  for (int round = 0; round < 200; ++round) {
    std::string wire;
    std::vector<DecodedFrame> expected;
    int count = 1 + static_cast<int>(rng() % 20);
    for (int i = 0; i < count; ++i) {
      DecodedFrame f;
      switch (rng() % 6) {
        case 0:
          f.header.type = FrameType::kControl;
          f.payload.assign(rng() % 200, 'c');
          break;
        case 1:
          f.header.type = FrameType::kData;
          f.header.stream_id = 1 + rng() % 1000;
          f.header.flags = rng() % 2 ? kFlagFin : 0;
          f.payload.assign(rng() % 5000, static_cast<char>(rng()));
          break;
        case 2:
          f.header.type = FrameType::kWindow;
          f.header.stream_id = rng() % 3;
          AppendBigEndian32(f.payload, static_cast<uint32_t>(rng()));
          break;
        case 3:
          f.header.type = FrameType::kReset;
          f.header.stream_id = 1 + rng() % 1000;
          f.payload.assign(rng() % 40, 'r');
          break;
        case 4:
          f.header.type = FrameType::kPing;
          f.payload = Eight(rng());
          break;
        default:
          f.header.type = FrameType::kPong;
          f.payload = Eight(rng());
          break;
      }
      f.header.length = static_cast<uint32_t>(f.payload.size());
      AppendFrame(wire, f.header.type, f.header.flags, f.header.stream_id, f.payload);
      expected.push_back(std::move(f));
    }
    FrameDecoder decoder;
    std::vector<DecodedFrame> got;
    size_t offset = 0;
    while (offset < wire.size()) {
      size_t n = std::min<size_t>(wire.size() - offset, 1 + rng() % 700);
      decoder.Append(std::string_view(wire).substr(offset, n));
      offset += n;
      std::vector<DecodedFrame> more = DrainFrames(decoder);
      got.insert(got.end(), more.begin(), more.end());
    }
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].header.type, expected[i].header.type);
      EXPECT_EQ(got[i].header.flags, expected[i].header.flags);
      EXPECT_EQ(got[i].header.stream_id, expected[i].header.stream_id);
      EXPECT_EQ(got[i].payload, expected[i].payload);
    }
  }
}

}  // namespace
}  // namespace rdv
