// libFuzzer target: the PROXY header parser must never crash, hang or leak, must agree with
// itself on any split of its input, and what it accepts must round-trip through the encoder.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/proxy_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::optional<rdv::ProxyHeader>> whole = rdv::ParseProxyHeader(input);
  if (!whole.ok() || !whole->has_value()) return 0;
  const rdv::ProxyHeader& header = **whole;
  if (header.length == 0 || header.length > input.size()) std::abort();
  // A prefix shorter than the header never yields a header.
  absl::StatusOr<std::optional<rdv::ProxyHeader>> prefix =
      rdv::ParseProxyHeader(input.substr(0, header.length - 1));
  if (prefix.ok() && prefix->has_value()) std::abort();
  if (header.local) return 0;
  for (rdv::ProxyProtocolVersion version :
       {rdv::ProxyProtocolVersion::kV1, rdv::ProxyProtocolVersion::kV2}) {
    std::string encoded = rdv::EncodeProxyHeader(version, header.source, header.destination);
    absl::StatusOr<std::optional<rdv::ProxyHeader>> again = rdv::ParseProxyHeader(encoded);
    if (!again.ok() || !again->has_value() || (*again)->source != header.source ||
        (*again)->destination != header.destination) {
      std::abort();
    }
  }
  return 0;
}
