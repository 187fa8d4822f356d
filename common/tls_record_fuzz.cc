// libFuzzer target: TlsRecordLayer::Open must never crash, hang, leak or write past its output
// on any input, authenticated or not. The first input byte chooses the mode:
//   even  the rest is a list of inner plaintexts (a length byte, then that many bytes), each
//         sealed by a writer with the reader's secrets, so that the parsing after authentication
//         (padding, content types, alerts, post-handshake messages, key updates) sees anything;
//   odd   the rest goes to Open as it is (record headers, lengths, forged records).
// The second byte chooses the size of the pieces the bytes arrive in.
#include <openssl/obj_mac.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/tls_record_layer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using rdv::RecordBuffer;
  using rdv::TlsRecordLayer;
  if (size < 2) return 0;
  const std::string one(32, '\x11');
  const std::string two(32, '\x22');
  auto writer = TlsRecordLayer::FromSecrets(NID_aes_128_gcm, one, two);
  auto reader = TlsRecordLayer::FromSecrets(NID_aes_128_gcm, two, one);
  if (!writer.ok() || !reader.ok()) abort();
  std::string_view input(reinterpret_cast<const char*>(data) + 2, size - 2);
  std::string wire;
  if (data[0] % 2 == 0) {
    while (!input.empty()) {
      size_t length = std::min<size_t>(static_cast<unsigned char>(input[0]), input.size() - 1);
      RecordBuffer sealed;
      if (!(*writer)->SealInnerPlaintext(input.substr(1, length), sealed)) abort();
      wire.append(std::string_view(sealed));
      input.remove_prefix(1 + length);
    }
  } else {
    wire.assign(input);
  }
  const size_t step = static_cast<size_t>(data[1]) + 1;
  std::string pending;
  std::string plaintext(TlsRecordLayer::kMaxOpenedPerRecord, '\0');
  RecordBuffer reply;
  for (size_t at = 0; at < wire.size(); at += step) {
    pending.append(wire, at, step);
    for (;;) {
      TlsRecordLayer::Opened opened =
          (*reader)->Open(pending, plaintext.data(), plaintext.size(), reply);
      if (opened.consumed > pending.size() || opened.produced > plaintext.size()) abort();
      if (!opened.status.ok() || opened.peer_closed) return 0;
      pending.erase(0, opened.consumed);
      if (opened.consumed == 0) break;
    }
  }
  return 0;
}
