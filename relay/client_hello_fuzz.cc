// libFuzzer target: the ClientHello parser must never crash, read out of bounds, buffer without
// bound or change its mind, on any input split at any points. The first input byte chooses the
// chunk size; the decision must match the one made on the whole input at once whenever the input
// fits the parser's buffer limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "relay/client_hello.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = data[0] % 31 + 1;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  rdv::ClientHelloParser pieces;
  rdv::ClientHelloParser::Outcome last = rdv::ClientHelloParser::Outcome::kNeedMore;
  for (size_t offset = 0; offset < input.size(); offset += chunk) {
    rdv::ClientHelloParser::Outcome now = pieces.Feed(input.substr(offset, chunk));
    // Once decided, the decision stays.
    if (last != rdv::ClientHelloParser::Outcome::kNeedMore && now != last) std::abort();
    last = now;
    if (now == rdv::ClientHelloParser::Outcome::kNeedMore &&
        pieces.bytes().size() > rdv::ClientHelloParser::kMaxBufferedBytes) {
      std::abort();
    }
  }
  if (pieces.outcome() == rdv::ClientHelloParser::Outcome::kServerName &&
      pieces.server_name().empty()) {
    std::abort();
  }
  if (input.size() <= rdv::ClientHelloParser::kMaxBufferedBytes) {
    rdv::ClientHelloParser whole;
    whole.Feed(input);
    if (whole.outcome() != pieces.outcome() || whole.server_name() != pieces.server_name()) {
      std::abort();
    }
  }
  if (pieces.bytes() != input) std::abort();
  return 0;
}
