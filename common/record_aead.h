// The AEAD that protects one direction of TLS 1.3 records (TlsRecordLayer): AES-128-GCM,
// AES-256-GCM or ChaCha20-Poly1305 under one key, nonce and additional data given per record.
//
// Two implementations behind one interface:
//   openssl    EVP AEAD contexts; every suite, every CPU.
//   ipsec-mb   Intel's Multi-Buffer Crypto for IPsec library (Debian's libipsec-mb), AES-GCM
//              only, chosen where the CPU has VAES and VPCLMULQDQ with AVX-512: it encrypts 16
//              or 32 bytes per instruction where OpenSSL 3.0 encrypts one block (about 3x the
//              bytes per second on such CPUs; AES-GCM is a third of a tunnel's CPU otherwise).
// Both produce the same bytes (the unit tests compare them); `Create` picks the faster one for
// the suite on this CPU unless a test asks for one by name.
#ifndef RDV_COMMON_RECORD_AEAD_H_
#define RDV_COMMON_RECORD_AEAD_H_

#include <cstddef>
#include <initializer_list>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rdv {

class RecordAead {
 public:
  static constexpr size_t kNonceSize = 12;
  static constexpr size_t kTagSize = 16;
  static constexpr size_t kMaxKeySize = 32;

  enum class Implementation { kFastest, kOpenSsl, kIpsecMb };

  // The AEAD of `cipher_nid` (NID_aes_128_gcm, NID_aes_256_gcm or NID_chacha20_poly1305), for
  // sealing when `seal`, else for opening; no key yet. kIpsecMb is Unavailable when this build
  // or this CPU has no use for it; kFastest never is.
  static absl::StatusOr<std::unique_ptr<RecordAead>> Create(
      int cipher_nid, bool seal, Implementation implementation = Implementation::kFastest);

  virtual ~RecordAead() = default;
  RecordAead(const RecordAead&) = delete;
  RecordAead& operator=(const RecordAead&) = delete;

  virtual size_t key_size() const = 0;
  // Replaces the key (key_size() bytes; the caller wipes its copy).
  virtual absl::Status SetKey(const unsigned char* key) = 0;
  // Encrypts the pieces, joined, into `out` (as many bytes as they hold) and writes the tag.
  // False when the implementation failed (never for well-formed arguments).
  virtual bool Seal(const unsigned char* nonce, const unsigned char* aad, size_t aad_size,
                    std::initializer_list<std::string_view> pieces, unsigned char* out,
                    unsigned char* tag) = 0;
  // Decrypts `size` bytes of `in` into `out`; true when `tag` authenticates them with `aad`.
  // On false, `out` holds nothing the caller may use.
  virtual bool Open(const unsigned char* nonce, const unsigned char* aad, size_t aad_size,
                    const unsigned char* in, size_t size, const unsigned char* tag,
                    unsigned char* out) = 0;

 protected:
  RecordAead() = default;
};

}  // namespace rdv

#endif  // RDV_COMMON_RECORD_AEAD_H_
