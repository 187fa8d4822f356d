// libFuzzer target: the HTTP/1.x request and response framers must never crash, hang or leak on
// any input, split at any points. The first input byte chooses the chunk size.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "relay/http_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = data[0] % 31 + 1;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  rdv::HttpRequestFramer requests(rdv::HttpRequestFramer::Limits{4096, 50});
  bool failed = false;
  for (size_t offset = 0; offset < input.size() && !failed; offset += chunk) {
    std::string_view piece = input.substr(offset, chunk);
    // Each Feed consumes a prefix; kMessageEnd consumes nothing, so bound the turns.
    for (size_t turns = 0; turns < 4 * chunk + 16; ++turns) {
      absl::StatusOr<rdv::HttpRequestFramer::Event> event = requests.Feed(piece);
      if (!event.ok()) {
        failed = true;
        break;
      }
      piece.remove_prefix(event->consumed);
      if (event->kind == rdv::HttpRequestFramer::EventKind::kHead) {
        (void)rdv::SerializeRequestHead(requests.head(), {}, {});
      }
      if (event->kind == rdv::HttpRequestFramer::EventKind::kNeedMore || piece.empty()) break;
    }
  }

  rdv::HttpResponseFramer responses;
  responses.ExpectResponseTo("GET");
  responses.ExpectResponseTo("HEAD");
  responses.ExpectResponseTo("CONNECT");
  for (size_t offset = 0; offset < input.size(); offset += chunk) {
    if (!responses.Feed(input.substr(offset, chunk)).ok()) return 0;
  }
  (void)responses.FinishOnEof();
  return 0;
}
