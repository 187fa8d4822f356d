// libFuzzer target: the SOCKS5 parsers must never crash, hang or leak on any input, and must
// agree with themselves at every split. The input is run through the server-side handshake
// order (greeting, RFC 1929 credentials, request) as one byte stream, fed in chunks whose size
// the first input byte chooses; each parser is also run on the whole input alone.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/socks5.h"

namespace {

// Feeds `input` to `parse` growing by `chunk` bytes until a message or an error; returns how many
// bytes the message took (0: incomplete or error). A complete message must parse identically
// from the whole input.
template <typename Message, typename Parse>
size_t Incremental(std::string_view input, size_t chunk, Parse parse, bool& failed) {
  for (size_t have = std::min(chunk, input.size());; have = std::min(have + chunk, input.size())) {
    Message message;
    absl::StatusOr<size_t> consumed = parse(input.substr(0, have), message);
    if (!consumed.ok()) {
      failed = true;
      return 0;
    }
    if (*consumed > have) abort();
    if (*consumed > 0) {
      Message again;
      absl::StatusOr<size_t> whole = parse(input, again);
      if (!whole.ok() || *whole != *consumed) abort();
      return *consumed;
    }
    if (have == input.size()) return 0;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = data[0] % 17 + 1;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  rdv::socks5::Greeting greeting;
  rdv::socks5::Credentials credentials;
  rdv::socks5::Request request;
  (void)rdv::socks5::ParseGreeting(input, greeting);
  (void)rdv::socks5::ParseCredentials(input, credentials);
  absl::StatusOr<size_t> alone = rdv::socks5::ParseRequest(input, request);
  if (alone.ok() && *alone > 0) {
    // Whatever parses re-encodes to the same bytes (domain and address types round-trip).
    absl::StatusOr<std::string> wire = rdv::socks5::EncodeRequest(
        request.command, request.address_type, request.host, request.port);
    if (!wire.ok() || *wire != input.substr(0, *alone)) abort();
  }

  bool failed = false;
  size_t used =
      Incremental<rdv::socks5::Greeting>(input, chunk, rdv::socks5::ParseGreeting, failed);
  if (used == 0) return 0;
  input.remove_prefix(used);
  if (!input.empty() && input[0] == rdv::socks5::kAuthVersion) {
    used =
        Incremental<rdv::socks5::Credentials>(input, chunk, rdv::socks5::ParseCredentials, failed);
    if (used == 0) return 0;
    input.remove_prefix(used);
  }
  (void)Incremental<rdv::socks5::Request>(input, chunk, rdv::socks5::ParseRequest, failed);
  (void)rdv::socks5::EncodeReply(rdv::socks5::Reply::kSucceeded);
  return 0;
}
