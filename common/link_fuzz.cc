// libFuzzer target: a link fed arbitrary bytes from its peer (frames, control messages, flow
// control) must fail cleanly or carry on; never crash, hang or leak. Streams the peer opens are
// accepted and their data consumed at once, so flow-control paths are exercised too.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/link.h"

namespace {

class NullTransport : public rdv::LinkTransport {
 public:
  void Send(std::string_view bytes) override { sent_ += bytes.size(); }
  size_t QueuedBytes() const override { return 0; }

 private:
  size_t sent_ = 0;
};

class Sink : public rdv::StreamHandler {
 public:
  void OnStreamData(rdv::Stream& stream, std::string_view data) override {
    stream.Consumed(data.size());
    stream.Write(data.substr(0, 16));  // answer a little, to drive the send side
  }
  void OnStreamEnd(rdv::Stream& stream) override { stream.End(); }
  void OnStreamWritable(rdv::Stream&) override {}
  void OnStreamClosed(rdv::Stream&, const absl::Status&) override {}
};

class Handler : public rdv::LinkHandler {
 public:
  void OnControl(rdv::Link&, const rdv::link::Control&) override {}
  void OnStreamOpen(rdv::Link&, rdv::Stream& stream, const rdv::link::Open& open) override {
    if (open.stream_id() % 3 == 0) {
      stream.Refuse("fuzz");
    } else {
      stream.Accept(sink_);
    }
  }
  void OnLinkFailed(rdv::Link&, const absl::Status&) override {}

 private:
  Sink sink_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = data[0] % 64 + 1;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  NullTransport transport;
  Handler handler;
  rdv::LinkOptions options;
  options.is_relay_side = (data[0] & 0x80) != 0;
  options.stream_window = 64 * 1024;
  options.link_window = 256 * 1024;
  options.max_streams = 64;
  rdv::Link link(transport, handler, options);
  for (size_t offset = 0; offset < input.size() && !link.failed(); offset += chunk) {
    link.OnBytes(input.substr(offset, chunk));
  }
  link.Close(absl::CancelledError("fuzz input ended"));
  return 0;
}
