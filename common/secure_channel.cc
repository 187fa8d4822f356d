// SecureChannel: OpenSSL's handshake over a BIO of our own that reads `cipher_in_` and appends
// to `cipher_out_` (no memory-BIO copies or allocations per record); after it, TlsRecordLayer
// seals and opens the records between the caller's buffers and ours (both ends are Rendezvous).
// Should it decline, OpenSSL keeps them through the same BIO.
//
// 1. OnCiphertext hands the pipe's bytes to OpenSSL in place (`cipher_in_` keeps only what it
//    left, or what arrives while Pump runs), Send appends plaintext to `plain_out_`, Close asks
//    for close_notify; each then calls Pump(). Queue encrypts whole records of a large piece
//    straight from the caller's bytes and keeps them for the next Flush.
// 2. Pump drives the handshake, decrypts what `cipher_in_` holds (OnPlaintext, in chunks of
//    many records), encrypts all pending plaintext in 16 KiB records, and hands the records to
//    SendCiphertext in one piece
// 3. a call arriving while Pump runs (the handler answering from inside a callback, or a peer
//    wired back to back) only queues its work: the running Pump picks it up, so callbacks never
//    nest and OpenSSL is never entered twice
//
// The handler must not destroy the channel from inside one of its callbacks (defer it).
#include "common/secure_channel.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "common/str_cat.h"
#include "common/tcp_connection.h"
#include "common/tls.h"
#include "common/tls_record_layer.h"

namespace rdv {
namespace {

constexpr std::string_view kPairIdLabel = "rdv-pair-id-v1";
constexpr std::string_view kTunnelPskLabel = "rdv-tunnel-psk-v1";
constexpr std::string_view kPskIdentity = "rdv-tunnel";
constexpr size_t kPskSize = 32;
constexpr size_t kMaxRecordPlaintext = TlsRecordLayer::kMaxPlaintext;
// Plaintext handed to OnPlaintext at once: many records, so that the consumer (a nested link)
// sees whole frames rather than 16 KiB pieces.
constexpr size_t kPlaintextChunk = 256 * 1024;
constexpr const char* kPskCipherSuite = "TLS_AES_128_GCM_SHA256";
// Certificate mode: as for links (AES-128-GCM first).
constexpr const char* kCertificateCipherSuites =
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
constexpr unsigned char kAlpnWire[] = {5, 'r', 'd', 'v', '/', '1'};

std::string HmacSha256(std::string_view key, std::string_view message) {
  // HMAC() treats a null key as "no key given"; an empty key must still be a key.
  static const unsigned char kEmptyKey[1] = {0};
  const void* key_data = key.empty() ? static_cast<const void*>(kEmptyKey) : key.data();
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_length = 0;
  if (HMAC(EVP_sha256(), key_data, static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac,
           &mac_length) == nullptr) {
    return std::string();
  }
  return std::string(reinterpret_cast<const char*>(mac), mac_length);
}

int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kAlpnWire, sizeof(kAlpnWire), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

// "AB:cd:..." or "ABcd..." -> "abcd...".
std::string CanonicalFingerprint(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == ':') continue;
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

bool IsHex64(std::string_view text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool FileReadable(const std::string& path) {
  FILE* file = std::fopen(path.c_str(), "r");
  if (file == nullptr) return false;
  std::fclose(file);
  return true;
}

class SecureChannelImpl : public SecureChannel {
 public:
  SecureChannelImpl(const SecureChannelOptions& options, Handler& handler)
      : options_(options), handler_(handler) {}

  ~SecureChannelImpl() override {
    if (ssl_ != nullptr) SSL_free(ssl_);  // frees both BIOs
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    if (psk_session_ != nullptr) SSL_SESSION_free(psk_session_);
  }

  absl::Status Init();

  void Start() override {
    if (started_ || closed_) return;
    started_ = true;
    Pump();
  }

  void OnCiphertext(std::string_view bytes) override {
    if (closed_ || bytes.empty()) return;
    if (started_ && !pumping_ && records_ != nullptr && cipher_in_offset_ < cipher_in_.size()) {
      // The start of a record cut by the previous read waits in `cipher_in_`: only the rest of
      // that record is copied to it; what follows is read where it is, below.
      CompleteHeldRecord(bytes);
      if (closed_ || bytes.empty()) return;
    }
    if (started_ && !pumping_ && cipher_in_offset_ == cipher_in_.size()) {
      // Nothing held back: OpenSSL reads the caller's bytes where they are, and only what it
      // leaves (the start of a record cut by the pipe) is copied.
      cipher_in_.clear();
      cipher_in_offset_ = 0;
      borrowed_in_ = bytes;
      new_input_ = true;
      Pump();
      KeepBorrowedRest();
      return;
    }
    // Never refused: the buffer grows. No OpenSSL call is running while a callback runs, so
    // appending here is safe even from inside one.
    if (cipher_in_offset_ == cipher_in_.size()) {
      cipher_in_.clear();
    } else if (cipher_in_offset_ > 0) {
      cipher_in_.erase(0, cipher_in_offset_);  // the tail of a record cut by the pipe
    }
    cipher_in_offset_ = 0;
    cipher_in_.append(bytes);
    new_input_ = true;
    Pump();
  }

  void Send(std::string_view plaintext) override {
    Queue(plaintext);
    Flush();
  }

  void Queue(std::string_view plaintext) override {
    if (closed_ || close_requested_) return;
    if (records_ != nullptr) {
      // Whole records are sealed straight from what waits and the caller's bytes, behind the
      // records already sealed; they leave at the next Flush.
      if (!records_->SealWholeRecords(plain_out_, plaintext, cipher_out_)) {
        Fail(absl::InternalError(records_->error()));
        return;
      }
    } else if (secured_ && !pumping_ && !flushing_ &&
               plain_out_.size() + plaintext.size() >= 2 * kMaxRecordPlaintext) {
      // Enough for whole records: top what waits up to one, then encrypt whole records from
      // the caller's bytes; only the tail is copied. The records wait for Flush like the
      // plaintext would have, so that they still leave in one SendCiphertext.
      size_t top_up =
          std::min(plaintext.size(), kMaxRecordPlaintext - plain_out_.size() % kMaxRecordPlaintext);
      plain_out_.append(plaintext.substr(0, top_up));
      plaintext.remove_prefix(top_up);
      if (!EncryptPlaintext(plain_out_)) return;
      plain_out_.clear();
      size_t whole = plaintext.size() - plaintext.size() % kMaxRecordPlaintext;
      if (!EncryptPlaintext(plaintext.substr(0, whole))) return;
      plaintext.remove_prefix(whole);
    }
    plain_out_.append(plaintext);
  }

  void Flush() override {
    if (closed_) return;
    if (secured_ && !pumping_ && !flushing_) {
      // The rest becomes records behind those Queue encrypted, and all leave in one piece.
      if (!EncryptPlaintext(plain_out_)) return;
      plain_out_.clear();
      FlushCiphertext();
    } else if (!plain_out_.empty()) {
      Pump();  // or, from inside a callback, the running Pump takes it
    }
  }

  size_t queued() const override { return plain_out_.size() + cipher_out_.size(); }

  void Close() override {
    if (closed_ || close_requested_) return;
    close_requested_ = true;
    if (!secured_) {
      closed_ = true;  // nothing secured yet: abandon the handshake, silently
      return;
    }
    Pump();
  }

  bool secured() const override { return secured_ && !closed_; }
  bool user_space_records() const override { return records_ != nullptr; }

 private:
  static int PskUseSession(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* id_length,
                           SSL_SESSION** session);
  static int PskFindSession(SSL* ssl, const unsigned char* identity, size_t identity_length,
                            SSL_SESSION** session);
  static int VerifyCertificate(X509_STORE_CTX* store, void* arg);
  static BIO_METHOD* PipeBioMethod();
  static int BioWrite(BIO* bio, const char* data, int length);
  static int BioRead(BIO* bio, char* out, int length);

  void Pump();
  bool HasWork() const;
  void DriveHandshake();
  void ReadRecords();
  void OpenRecords();  // ReadRecords once TlsRecordLayer has the records
  void WriteRecords();
  // SSL_write of `plaintext` in records into `cipher_out_`; false (the channel failed) on error.
  bool EncryptPlaintext(std::string_view plaintext);
  // After a Pump over borrowed bytes: keeps what OpenSSL left of them, ahead of anything that
  // arrived meanwhile.
  void KeepBorrowedRest();
  // Moves from the front of `bytes` to `cipher_in_` what the record held there lacks, and opens
  // it.
  void CompleteHeldRecord(std::string_view& bytes);
  void FlushCiphertext();
  void Fail(absl::Status status);
  absl::Status HandshakeError(int ssl_error);

  SecureChannelOptions options_;
  Handler& handler_;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  SSL_SESSION* psk_session_ = nullptr;
  std::unique_ptr<TlsRecordLayer> records_;  // after the handshake
  std::string cipher_in_;  // ciphertext from the pipe; OpenSSL reads it from the offset
  size_t cipher_in_offset_ = 0;
  std::string_view borrowed_in_;  // the caller's ciphertext during OnCiphertext, read first
  RecordBuffer cipher_out_;       // sealed records, waiting for FlushCiphertext
  RecordBuffer cipher_flushing_;  // the records being handed to SendCiphertext
  bool flushing_ = false;
  LendableBuffer plain_in_{kPlaintextChunk};  // allocated once secured
  std::string plain_out_;                     // plaintext waiting for the handshake or for Pump
  std::string verify_failure_;                // why our certificate check refused the peer
  bool started_ = false;
  bool pumping_ = false;
  bool new_input_ = false;  // ciphertext arrived since the running Pump last read
  bool secured_ = false;
  bool close_requested_ = false;
  bool close_sent_ = false;
  bool closed_ = false;  // OnChannelClosed ran (or is running): nothing more happens
};

absl::Status SecureChannelImpl::Init() {
  const bool psk_mode = !options_.psk.empty();
  if (psk_mode) {
    if (options_.psk.size() != kPskSize) {
      return absl::InvalidArgumentError(
          StrCat("tunnel PSK must be ", kPskSize, " bytes, got ", options_.psk.size()));
    }
  } else if (options_.is_client) {
    options_.peer_fingerprint = CanonicalFingerprint(options_.peer_fingerprint);
    if (options_.peer_fingerprint.empty() == options_.peer_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "certificate mode needs exactly one of peer_fingerprint or peer_ca_file");
    }
    if (!options_.peer_fingerprint.empty() && !IsHex64(options_.peer_fingerprint)) {
      return absl::InvalidArgumentError(
          StrCat("peer_fingerprint must be 64 hex digits (SHA-256), got '",
                 options_.peer_fingerprint, "'"));
    }
    if (!options_.peer_ca_file.empty() && !FileReadable(options_.peer_ca_file)) {
      return absl::InvalidArgumentError(StrCat("cannot read CA file ", options_.peer_ca_file));
    }
  } else {
    if (options_.certificate_file.empty() || options_.key_file.empty()) {
      return absl::InvalidArgumentError(
          "certificate mode needs certificate_file and key_file on the serving end");
    }
  }

  ctx_ = SSL_CTX_new(options_.is_client ? TLS_client_method() : TLS_server_method());
  if (ctx_ == nullptr) return absl::InternalError("SSL_CTX_new failed: " + OpenSslErrors());
  SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx_, TLS1_3_VERSION);
  SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx_, SSL_OP_NO_TICKET);
  if (!options_.is_client) SSL_CTX_set_num_tickets(ctx_, 0);
  TlsRecordLayer::CaptureSecrets(ctx_);
  if (SSL_CTX_set_ciphersuites(ctx_, psk_mode ? kPskCipherSuite : kCertificateCipherSuites) != 1) {
    return absl::InternalError("cannot set TLS 1.3 cipher suites: " + OpenSslErrors());
  }
  if (options_.is_client) {
    SSL_CTX_set_alpn_protos(ctx_, kAlpnWire, sizeof(kAlpnWire));
    // Every certificate the server presents goes through VerifyCertificate: in PSK mode a
    // certificate means the server did not take our PSK, which is refused; otherwise the pin or
    // the CA decides.
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    SSL_CTX_set_cert_verify_callback(ctx_, VerifyCertificate, this);
    if (!psk_mode && !options_.peer_ca_file.empty() &&
        SSL_CTX_load_verify_locations(ctx_, options_.peer_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          StrCat("cannot load CA file ", options_.peer_ca_file, ": ", OpenSslErrors()));
    }
  } else {
    SSL_CTX_set_alpn_select_cb(ctx_, SelectAlpn, nullptr);
    if (!psk_mode) {
      if (SSL_CTX_use_certificate_chain_file(ctx_, options_.certificate_file.c_str()) != 1) {
        return absl::InvalidArgumentError(
            StrCat("cannot load certificate ", options_.certificate_file, ": ", OpenSslErrors()));
      }
      if (SSL_CTX_use_PrivateKey_file(ctx_, options_.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        return absl::InvalidArgumentError(
            StrCat("cannot load private key ", options_.key_file, ": ", OpenSslErrors()));
      }
      if (SSL_CTX_check_private_key(ctx_) != 1) {
        return absl::InvalidArgumentError(StrCat("private key ", options_.key_file,
                                                 " does not match certificate ",
                                                 options_.certificate_file));
      }
    }
  }

  ssl_ = SSL_new(ctx_);
  if (ssl_ == nullptr) return absl::InternalError("SSL_new failed: " + OpenSslErrors());
  SSL_set_app_data(ssl_, this);
  TlsRecordLayer::Watch(ssl_);
  BIO* bio = BIO_new(PipeBioMethod());
  if (bio == nullptr) return absl::InternalError("BIO_new failed: " + OpenSslErrors());
  BIO_set_data(bio, this);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_, bio, bio);  // one BIO for both directions, owned by ssl_

  if (psk_mode) {
    const unsigned char kAes128GcmSha256[] = {0x13, 0x01};
    const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl_, kAes128GcmSha256);
    psk_session_ = SSL_SESSION_new();
    if (cipher == nullptr || psk_session_ == nullptr ||
        SSL_SESSION_set1_master_key(psk_session_,
                                    reinterpret_cast<const unsigned char*>(options_.psk.data()),
                                    options_.psk.size()) != 1 ||
        SSL_SESSION_set_cipher(psk_session_, cipher) != 1 ||
        SSL_SESSION_set_protocol_version(psk_session_, TLS1_3_VERSION) != 1) {
      return absl::InternalError("cannot build the PSK session: " + OpenSslErrors());
    }
    if (options_.is_client) {
      SSL_set_psk_use_session_callback(ssl_, PskUseSession);
    } else {
      SSL_set_psk_find_session_callback(ssl_, PskFindSession);
    }
  }
  if (options_.is_client) {
    SSL_set_connect_state(ssl_);
  } else {
    SSL_set_accept_state(ssl_);
  }
  return absl::OkStatus();
}

int SecureChannelImpl::PskUseSession(SSL* ssl, const EVP_MD* md, const unsigned char** id,
                                     size_t* id_length, SSL_SESSION** session) {
  auto* self = static_cast<SecureChannelImpl*>(SSL_get_app_data(ssl));
  const SSL_CIPHER* cipher = SSL_SESSION_get0_cipher(self->psk_session_);
  // After a HelloRetryRequest OpenSSL asks again with the negotiated hash; offer the PSK only
  // when it fits.
  if (md != nullptr && md != SSL_CIPHER_get_handshake_digest(cipher)) {
    *session = nullptr;
    return 1;
  }
  SSL_SESSION_up_ref(self->psk_session_);  // OpenSSL frees what it is given
  *session = self->psk_session_;
  *id = reinterpret_cast<const unsigned char*>(kPskIdentity.data());
  *id_length = kPskIdentity.size();
  return 1;
}

int SecureChannelImpl::PskFindSession(SSL* ssl, const unsigned char* identity,
                                      size_t identity_length, SSL_SESSION** session) {
  auto* self = static_cast<SecureChannelImpl*>(SSL_get_app_data(ssl));
  if (std::string_view(reinterpret_cast<const char*>(identity), identity_length) != kPskIdentity) {
    *session = nullptr;  // unknown identity: no PSK, and with no certificate the handshake fails
    return 1;
  }
  SSL_SESSION_up_ref(self->psk_session_);
  *session = self->psk_session_;
  return 1;
}

int SecureChannelImpl::VerifyCertificate(X509_STORE_CTX* store, void* arg) {
  auto* self = static_cast<SecureChannelImpl*>(arg);
  if (!self->options_.psk.empty()) {
    self->verify_failure_ =
        "the peer presented a certificate instead of accepting the pre-shared key (is it "
        "configured for certificate mode?)";
    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);  // alert bad_certificate
    return 0;
  }
  X509* leaf = X509_STORE_CTX_get0_cert(store);
  if (!self->options_.peer_fingerprint.empty()) {
    std::string actual = leaf ? CertificateFingerprint(leaf) : std::string();
    if (actual != self->options_.peer_fingerprint) {
      self->verify_failure_ =
          StrCat("peer certificate fingerprint ", actual, " does not match the pinned ",
                 self->options_.peer_fingerprint);
      X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);  // alert bad_certificate
      return 0;
    }
    return 1;
  }
  if (X509_verify_cert(store) == 1) return 1;
  self->verify_failure_ =
      StrCat("peer certificate not accepted by CA file ", self->options_.peer_ca_file, ": ",
             X509_verify_cert_error_string(X509_STORE_CTX_get_error(store)));
  return 0;
}

BIO_METHOD* SecureChannelImpl::PipeBioMethod() {
  static BIO_METHOD* method = NewBufferBioMethod("rdv-pipe", BioWrite, BioRead);
  return method;
}

int SecureChannelImpl::BioWrite(BIO* bio, const char* data, int length) {
  auto* self = static_cast<SecureChannelImpl*>(BIO_get_data(bio));
  self->cipher_out_.append(data, static_cast<size_t>(length));
  return length;
}

int SecureChannelImpl::BioRead(BIO* bio, char* out, int length) {
  auto* self = static_cast<SecureChannelImpl*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (!self->borrowed_in_.empty()) {
    size_t n = std::min(self->borrowed_in_.size(), static_cast<size_t>(length));
    std::memcpy(out, self->borrowed_in_.data(), n);
    self->borrowed_in_.remove_prefix(n);
    return static_cast<int>(n);
  }
  size_t available = self->cipher_in_.size() - self->cipher_in_offset_;
  if (available == 0) {
    BIO_set_retry_read(bio);  // nothing yet means "wait for more", not end of file
    return -1;
  }
  size_t n = std::min(available, static_cast<size_t>(length));
  std::memcpy(out, self->cipher_in_.data() + self->cipher_in_offset_, n);
  self->cipher_in_offset_ += n;
  return static_cast<int>(n);
}

bool SecureChannelImpl::HasWork() const {
  if (closed_ || !started_) return false;
  if (new_input_) return true;
  if (!secured_) return false;
  return !plain_out_.empty() || (close_requested_ && !close_sent_);
}

void SecureChannelImpl::Pump() {
  if (pumping_ || !started_ || closed_) return;  // the running Pump picks the new work up
  pumping_ = true;
  do {
    new_input_ = false;
    if (!secured_) {
      DriveHandshake();
      if (closed_) break;
      if (!secured_) continue;  // more handshake bytes may have arrived during a callback
    }
    ReadRecords();
    if (closed_) break;
    WriteRecords();
    if (closed_) break;
    if (close_requested_ && !close_sent_ && plain_out_.empty()) {
      close_sent_ = true;
      if (records_ != nullptr) {
        records_->SealCloseNotify(cipher_out_);
      } else {
        SSL_shutdown(ssl_);
      }
      FlushCiphertext();
    }
  } while (HasWork());
  pumping_ = false;
}

void SecureChannelImpl::DriveHandshake() {
  int rc = SSL_do_handshake(ssl_);
  int ssl_error = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
  // Flush first: a failing end's alert must still reach the peer so that it fails too.
  FlushCiphertext();
  if (closed_) return;
  if (rc != 1) {
    if (ssl_error == SSL_ERROR_WANT_READ || ssl_error == SSL_ERROR_WANT_WRITE) return;
    Fail(HandshakeError(ssl_error));
    return;
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_length = 0;
  SSL_get0_alpn_selected(ssl_, &alpn, &alpn_length);
  if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_length) != kLinkAlpn) {
    Fail(
        absl::PermissionDeniedError("TLS handshake failed: the peer did not negotiate ALPN rdv/1"));
    return;
  }
  if (!options_.psk.empty() && SSL_session_reused(ssl_) != 1) {
    Fail(absl::PermissionDeniedError(
        "TLS handshake failed: the pre-shared key was not used by the peer"));
    return;
  }
  records_ = TlsRecordLayer::TakeOverOrKeepOpenSsl(ssl_, "tunnel");
  secured_ = true;
  handler_.OnSecured();
}

absl::Status SecureChannelImpl::HandshakeError(int ssl_error) {
  // Walk the error queue once, keeping the text and spotting the reasons that mean "the two ends
  // do not trust each other" rather than "the bytes were not TLS".
  const bool psk_mode = !options_.psk.empty();
  std::string errors;
  bool psk_refused = false;
  bool certificate_refused = false;
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    switch (ERR_GET_REASON(code)) {
      case SSL_R_BINDER_DOES_NOT_VERIFY:  // the server computed a different binder
      case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
      case SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER:  // what OpenSSL 3 sends for a bad binder
        psk_refused = psk_mode;
        break;
      case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
      case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
      case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
      case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
        certificate_refused = true;
        break;
      default:
        break;
    }
    char text[256];
    ERR_error_string_n(code, text, sizeof(text));
    if (!errors.empty()) errors += "; ";
    errors += text;
  }
  if (errors.empty()) errors = StrCat("SSL error ", ssl_error);
  std::string why;
  if (!verify_failure_.empty()) {
    why = verify_failure_;
  } else if (psk_refused) {
    why = "the pre-shared keys differ (the two ends hold different secrets?)";
  } else if (certificate_refused && psk_mode) {
    why = "the peer refused the handshake (is it configured for certificate mode?)";
  } else if (certificate_refused) {
    why = "the peer did not accept our certificate (pin or CA)";
  } else {
    return absl::UnavailableError(StrCat("TLS handshake failed: ", errors));
  }
  return absl::PermissionDeniedError(StrCat("TLS handshake failed: ", why, " (", errors, ")"));
}

void SecureChannelImpl::OpenRecords() {
  // Records are opened where they are (the caller's borrowed bytes, then `cipher_in_`) into
  // `plain_in_`, several at a time.
  char* buffer = nullptr;
  size_t filled = 0;
  auto deliver = [&] {
    FlushCiphertext();  // our KeyUpdate answer, if any
    if (filled > 0 && !closed_) {
      // A socket that cannot take the plaintext at once keeps referencing it (lent).
      std::string_view plaintext(buffer, filled);
      WriteBatch batch(plaintext, plain_in_.Owner());
      handler_.OnPlaintext(plaintext);
    }
    filled = 0;
  };
  while (!closed_) {
    if (filled == 0) buffer = plain_in_.Data();  // memory no socket still references
    if (kPlaintextChunk - filled < TlsRecordLayer::kMaxOpenedPerRecord) {
      deliver();
      continue;
    }
    const bool borrowed = !borrowed_in_.empty();
    std::string_view input =
        borrowed ? borrowed_in_ : std::string_view(cipher_in_).substr(cipher_in_offset_);
    TlsRecordLayer::Opened opened =
        records_->Open(input, buffer + filled, kPlaintextChunk - filled, cipher_out_);
    if (borrowed) {
      borrowed_in_.remove_prefix(opened.consumed);
    } else {
      cipher_in_offset_ += opened.consumed;
    }
    filled += opened.produced;
    if (!opened.status.ok() || opened.peer_closed) {
      deliver();  // what came before the bad record or the close is the peer's
      if (opened.alert != 0 && !closed_ && records_->SealAlert(opened.alert, cipher_out_)) {
        FlushCiphertext();
      }
      Fail(opened.peer_closed
               ? absl::OkStatus()
               : absl::DataLossError(StrCat("TLS record error: ", opened.status.message())));
      return;
    }
    if (opened.consumed > 0) continue;
    if (borrowed && cipher_in_offset_ < cipher_in_.size()) {
      // The record cut at the end of the borrowed bytes goes on in what arrived meanwhile.
      KeepBorrowedRest();
      continue;
    }
    break;
  }
  deliver();
}

void SecureChannelImpl::ReadRecords() {
  if (records_ != nullptr) {
    OpenRecords();
    return;
  }
  char* buffer = nullptr;
  size_t filled = 0;
  // Several records go to the handler at once; the buffer is refilled only after it returned.
  auto deliver = [&] {
    // Post-handshake messages may have produced output (a KeyUpdate answer).
    FlushCiphertext();
    if (filled > 0 && !closed_) {
      std::string_view plaintext(buffer, filled);
      // One write per socket for the handler's frames; what a socket cannot take stays lent.
      WriteBatch batch(plaintext, plain_in_.Owner());
      handler_.OnPlaintext(plaintext);
    }
    filled = 0;
  };
  while (!closed_) {
    if (filled == 0) buffer = plain_in_.Data();
    int n = SSL_read(ssl_, buffer + filled, static_cast<int>(kPlaintextChunk - filled));
    if (n > 0) {
      filled += static_cast<size_t>(n);
      if (kPlaintextChunk - filled < kMaxRecordPlaintext) deliver();
      continue;
    }
    int ssl_error = SSL_get_error(ssl_, n);
    bool wait = ssl_error == SSL_ERROR_WANT_READ || ssl_error == SSL_ERROR_WANT_WRITE;
    // Read the error queue before the handler runs (it may call into OpenSSL); plaintext
    // decrypted before a close_notify or a bad record is still the peer's, so it goes first.
    std::string errors = wait || ssl_error == SSL_ERROR_ZERO_RETURN ? "" : OpenSslErrors();
    deliver();
    if (wait || closed_) return;
    if (ssl_error == SSL_ERROR_ZERO_RETURN) {
      Fail(absl::OkStatus());  // close_notify
      return;
    }
    FlushCiphertext();  // our alert, if any
    Fail(absl::DataLossError(StrCat("TLS record error: ", errors)));
    return;
  }
}

void SecureChannelImpl::WriteRecords() {
  // All pending plaintext becomes records first, then goes out in one SendCiphertext.
  if (!EncryptPlaintext(plain_out_)) return;
  plain_out_.clear();
  FlushCiphertext();
}

bool SecureChannelImpl::EncryptPlaintext(std::string_view plaintext) {
  if (records_ != nullptr && !closed_) {
    if (records_->Seal(plaintext, cipher_out_)) return true;
    Fail(absl::InternalError(records_->error()));
    return false;
  }
  while (!closed_ && !plaintext.empty()) {
    size_t n = std::min(plaintext.size(), kMaxRecordPlaintext);
    int written = SSL_write(ssl_, plaintext.data(), static_cast<int>(n));
    if (written <= 0) {
      int ssl_error = SSL_get_error(ssl_, written);
      Fail(absl::InternalError(StrCat("TLS write failed (", ssl_error, "): ", OpenSslErrors())));
      return false;
    }
    plaintext.remove_prefix(static_cast<size_t>(written));
  }
  return !closed_;
}

void SecureChannelImpl::CompleteHeldRecord(std::string_view& bytes) {
  TlsRecordLayer::TakeRestOfRecord(cipher_in_, cipher_in_offset_, bytes);
  new_input_ = true;
  Pump();
}

void SecureChannelImpl::KeepBorrowedRest() {
  std::string_view rest = std::exchange(borrowed_in_, std::string_view());
  if (closed_ || rest.empty()) return;
  std::string arrived = cipher_in_.substr(cipher_in_offset_);
  cipher_in_.assign(rest.data(), rest.size());
  cipher_in_.append(arrived);
  cipher_in_offset_ = 0;
}

void SecureChannelImpl::FlushCiphertext() {
  // Records written while the handler runs (it may call back in) are picked up by this loop,
  // so that they leave in order and the buffer being handed on is never appended to.
  if (flushing_) return;
  flushing_ = true;
  while (!closed_ && !cipher_out_.empty()) {
    cipher_flushing_.swap(cipher_out_);  // both keep their capacity from record to record
    handler_.SendCiphertext(cipher_flushing_);
    cipher_flushing_.clear();
  }
  flushing_ = false;
}

void SecureChannelImpl::Fail(absl::Status status) {
  if (closed_) return;
  closed_ = true;
  plain_out_.clear();
  ERR_clear_error();
  handler_.OnChannelClosed(status);
}

}  // namespace

std::string PairId(std::string_view secret, std::string_view name) {
  std::string message = StrCat(kPairIdLabel, std::string_view("\0", 1), name);
  return absl::BytesToHexString(HmacSha256(secret, message)).substr(0, 32);
}

std::string TunnelPsk(std::string_view secret, std::string_view kind, std::string_view name) {
  std::string message =
      StrCat(kTunnelPskLabel, std::string_view("\0", 1), kind, std::string_view("\0", 1), name);
  return HmacSha256(secret, message);
}

absl::StatusOr<std::unique_ptr<SecureChannel>> SecureChannel::Create(
    const SecureChannelOptions& options, Handler& handler) {
  auto channel = std::make_unique<SecureChannelImpl>(options, handler);
  if (absl::Status status = channel->Init(); !status.ok()) {
    ERR_clear_error();
    return status;
  }
  return channel;
}

}  // namespace rdv
