// RecordAead's two implementations and the choice between them.
//
// openssl:  one EVP_CIPHER_CTX keyed once per key; per record the nonce is set, the additional
//           data and each piece go through EVP_*Update, the tag is read or checked at the end.
// ipsec-mb: the key expanded once (gcm_key_data, with its hash-key powers); per record
//           init (nonce, additional data), one update per piece, finalize (tag). The library's
//           manager is only a table of functions for the CPU it was set up for: one for the
//           process, read by every thread (the GCM functions keep their state in the caller's
//           gcm_context_data).
#include "common/record_aead.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <cstring>
#include <string>

#include "common/tls.h"
#include "spdlog/spdlog.h"

#ifdef RDV_HAVE_IPSEC_MB
#include <intel-ipsec-mb.h>
#endif

namespace rdv {
namespace {

class OpenSslAead final : public RecordAead {
 public:
  OpenSslAead(const EVP_CIPHER* cipher, bool seal) : cipher_(cipher), seal_(seal) {}
  ~OpenSslAead() override { EVP_CIPHER_CTX_free(ctx_); }

  size_t key_size() const override {
    return static_cast<size_t>(EVP_CIPHER_get_key_length(cipher_));
  }

  absl::Status SetKey(const unsigned char* key) override {
    if (ctx_ == nullptr) ctx_ = EVP_CIPHER_CTX_new();
    if (ctx_ == nullptr ||
        EVP_CipherInit_ex(ctx_, cipher_, nullptr, key, nullptr, seal_ ? 1 : 0) != 1) {
      return absl::InternalError("AEAD setup failed: " + OpenSslErrors());
    }
    return absl::OkStatus();
  }

  bool Seal(const unsigned char* nonce, const unsigned char* aad, size_t aad_size,
            std::initializer_list<std::string_view> pieces, unsigned char* out,
            unsigned char* tag) override {
    int n = 0;
    bool ok = EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, nonce) == 1 &&
              EVP_EncryptUpdate(ctx_, nullptr, &n, aad, static_cast<int>(aad_size)) == 1;
    for (std::string_view piece : pieces) {
      if (!ok || piece.empty()) continue;
      ok = EVP_EncryptUpdate(ctx_, out, &n, reinterpret_cast<const unsigned char*>(piece.data()),
                             static_cast<int>(piece.size())) == 1 &&
           static_cast<size_t>(n) == piece.size();  // a stream cipher: nothing held back
      out += piece.size();
    }
    return ok && EVP_EncryptFinal_ex(ctx_, out, &n) == 1 && n == 0 &&
           EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_GET_TAG, kTagSize, tag) == 1;
  }

  bool Open(const unsigned char* nonce, const unsigned char* aad, size_t aad_size,
            const unsigned char* in, size_t size, const unsigned char* tag,
            unsigned char* out) override {
    int n = 0;
    int final_n = 0;
    bool ok = EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, nonce) == 1 &&
              EVP_DecryptUpdate(ctx_, nullptr, &n, aad, static_cast<int>(aad_size)) == 1 &&
              EVP_DecryptUpdate(ctx_, out, &n, in, static_cast<int>(size)) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_SET_TAG, kTagSize,
                                  const_cast<unsigned char*>(tag)) == 1 &&
              EVP_DecryptFinal_ex(ctx_, out + n, &final_n) == 1 &&
              static_cast<size_t>(n + final_n) == size;
    if (!ok) ERR_clear_error();
    return ok;
  }

 private:
  const EVP_CIPHER* cipher_;
  const bool seal_;
  EVP_CIPHER_CTX* ctx_ = nullptr;
};

#ifdef RDV_HAVE_IPSEC_MB

// The process's manager, set up for this CPU on first use; nullptr when the CPU lacks what makes
// the library worth it (VAES and VPCLMULQDQ, used by its AVX-512 code).
const IMB_MGR* IpsecMbManager() {
  static const IMB_MGR* const manager = []() -> const IMB_MGR* {
    IMB_MGR* m = alloc_mb_mgr(0);
    if (m == nullptr) return nullptr;
    IMB_ARCH arch = IMB_ARCH_NONE;
    init_mb_mgr_auto(m, &arch);
    constexpr uint64_t kWanted = IMB_FEATURE_VAES | IMB_FEATURE_VPCLMULQDQ;
    if (arch != IMB_ARCH_AVX512 || (m->features & kWanted) != kWanted || imb_get_errno(m) != 0) {
      free_mb_mgr(m);
      spdlog::info("AES-GCM records by OpenSSL (intel-ipsec-mb {}: no VAES with AVX-512 here)",
                   imb_get_version_str());
      return nullptr;
    }
    spdlog::info("AES-GCM records by intel-ipsec-mb {} (VAES, AVX-512)", imb_get_version_str());
    return m;
  }();
  return manager;
}

class IpsecMbGcm final : public RecordAead {
 public:
  IpsecMbGcm(const IMB_MGR* manager, bool aes256) : aes256_(aes256) {
    if (aes256) {
      pre_ = manager->gcm256_pre;
      init_ = manager->gcm256_init;
      enc_update_ = manager->gcm256_enc_update;
      enc_finalize_ = manager->gcm256_enc_finalize;
      dec_ = manager->gcm256_dec;
    } else {
      pre_ = manager->gcm128_pre;
      init_ = manager->gcm128_init;
      enc_update_ = manager->gcm128_enc_update;
      enc_finalize_ = manager->gcm128_enc_finalize;
      dec_ = manager->gcm128_dec;
    }
  }
  ~IpsecMbGcm() override { OPENSSL_cleanse(key_, sizeof(*key_)); }

  size_t key_size() const override { return aes256_ ? 32 : 16; }

  absl::Status SetKey(const unsigned char* key) override {
    pre_(key, key_);
    return absl::OkStatus();
  }

  bool Seal(const unsigned char* nonce, const unsigned char* aad, size_t aad_size,
            std::initializer_list<std::string_view> pieces, unsigned char* out,
            unsigned char* tag) override {
    gcm_context_data context;
    init_(key_, &context, nonce, aad, aad_size);
    for (std::string_view piece : pieces) {
      if (piece.empty()) continue;
      enc_update_(key_, &context, out, reinterpret_cast<const uint8_t*>(piece.data()),
                  piece.size());
      out += piece.size();
    }
    enc_finalize_(key_, &context, tag, kTagSize);
    OPENSSL_cleanse(&context, sizeof(context));
    return true;
  }

  bool Open(const unsigned char* nonce, const unsigned char* aad, size_t aad_size,
            const unsigned char* in, size_t size, const unsigned char* tag,
            unsigned char* out) override {
    gcm_context_data context;
    unsigned char computed[kTagSize];
    dec_(key_, &context, out, in, size, nonce, aad, aad_size, computed, kTagSize);
    OPENSSL_cleanse(&context, sizeof(context));
    return CRYPTO_memcmp(computed, tag, kTagSize) == 0;
  }

 private:
  // The expanded key and hash-key powers (about 1 KiB), on whole cache lines: the library reads
  // them with vector loads on every record.
  struct alignas(64) AlignedKey {
    gcm_key_data data;
  };

  const bool aes256_;
  std::unique_ptr<AlignedKey> aligned_key_ = std::make_unique<AlignedKey>();
  gcm_key_data* const key_ = &aligned_key_->data;
  aes_gcm_pre_t pre_;
  aes_gcm_init_t init_;
  aes_gcm_enc_dec_update_t enc_update_;
  aes_gcm_enc_dec_finalize_t enc_finalize_;
  aes_gcm_enc_dec_t dec_;
};

#endif  // RDV_HAVE_IPSEC_MB

bool IsAesGcm(int cipher_nid) {
  return cipher_nid == NID_aes_128_gcm || cipher_nid == NID_aes_256_gcm;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RecordAead>> RecordAead::Create(int cipher_nid, bool seal,
                                                               Implementation implementation) {
  if (!IsAesGcm(cipher_nid) && cipher_nid != NID_chacha20_poly1305) {
    return absl::InvalidArgumentError("AEAD not supported");
  }
#ifdef RDV_HAVE_IPSEC_MB
  const IMB_MGR* manager = IsAesGcm(cipher_nid) ? IpsecMbManager() : nullptr;
  if (manager != nullptr && implementation != Implementation::kOpenSsl) {
    return std::unique_ptr<RecordAead>(new IpsecMbGcm(manager, cipher_nid == NID_aes_256_gcm));
  }
#endif
  if (implementation == Implementation::kIpsecMb) {
    return absl::UnavailableError(
        "intel-ipsec-mb: not built in, not for this AEAD, or this CPU lacks VAES/AVX-512");
  }
  const EVP_CIPHER* cipher = EVP_get_cipherbynid(cipher_nid);
  if (cipher == nullptr) return absl::InternalError("AEAD not available: " + OpenSslErrors());
  return std::unique_ptr<RecordAead>(new OpenSslAead(cipher, seal));
}

}  // namespace rdv
