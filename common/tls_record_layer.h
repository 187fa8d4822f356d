// TLS 1.3 application records sealed and opened in user space once OpenSSL has finished the
// handshake: the work kernel TLS would take over, on kernels without it (and without OpenSSL's
// record buffers in between). OpenSSL keeps the handshake, the certificates and the exporter; the
// byte path loses two copies per direction:
//
//   seal  plaintext pieces -> AEAD straight into the caller's output buffer (no copy into
//         OpenSSL's write buffer, none out of it)
//   open  ciphertext where it was read -> AEAD straight into the caller's plaintext buffer (no
//         copy into OpenSSL's read buffer, none out of it)
//
// Records are RFC 8446 §5.2 TLSCiphertext: outer type application_data, version 0x0303, the AEAD
// of the negotiated suite (AES-128-GCM, AES-256-GCM or ChaCha20-Poly1305), nonce = IV XOR the
// record's sequence number, the 5-byte header as additional data (RecordAead: OpenSSL's, or
// intel-ipsec-mb's AES-GCM where the CPU has VAES). Post-handshake messages are
// handled: NewSessionTicket is ignored, KeyUpdate moves the read key (and answers with our own
// when the peer asks), close_notify ends the stream, any other alert fails it. The sealing side
// moves to a new key itself every kRecordsPerKey records (RFC 8446 §5.5 limits AES-GCM keys).
//
// Used where both ends are Rendezvous (links and end-to-end tunnels): the peer may still run
// OpenSSL's own record layer, the bytes on the wire are the same.
//
// How it gets the keys: Watch() before the handshake makes OpenSSL report this connection's
// application traffic secrets (the keylog callback that CaptureSecrets() installs on the context);
// TakeOver() after the handshake derives the keys and forgets the secrets' copies in OpenSSL's
// report. It declines (nullptr) unless OpenSSL has sent and read no application record yet.
#ifndef RDV_COMMON_TLS_RECORD_LAYER_H_
#define RDV_COMMON_TLS_RECORD_LAYER_H_

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/record_aead.h"

namespace rdv {

// Sealed records on their way to a socket: a byte buffer that grows without zero-filling first
// (resizing a std::string would write every byte of a record twice) and is reused between
// flushes. Container-like, so that it reads like the std::string it replaces.
class RecordBuffer {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t capacity() const { return capacity_; }
  const char* data() const { return data_.get(); }
  operator std::string_view() const { return {data_.get(), size_}; }
  void clear() { size_ = 0; }
  // `n` more bytes at the end, uninitialized, for the caller to fill.
  char* Extend(size_t n);
  void Truncate(size_t n) { size_ = std::min(size_, n); }
  void reserve(size_t n);
  void append(const char* bytes, size_t n);
  void swap(RecordBuffer& other) noexcept;

 private:
  std::unique_ptr<char[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

class TlsRecordLayer {
 public:
  static constexpr size_t kMaxPlaintext = 16 * 1024;  // per record (RFC 8446 §5.1)
  static constexpr size_t kHeaderSize = 5;
  static constexpr size_t kTagSize = 16;
  // Output space one record may need while it is opened (its content, type and padding).
  static constexpr size_t kMaxOpenedPerRecord = kMaxPlaintext + 256;
  static constexpr size_t kSealTailAtOnce = 4 * 1024;
  // Sealed bytes per record beyond its plaintext: header, inner content type, tag.
  static constexpr size_t kOverhead = kHeaderSize + 1 + kTagSize;
  // Records sealed under one key before the sealing side moves on (below RFC 8446 §5.5's 2^24.5
  // for AES-GCM).
  static constexpr uint64_t kRecordsPerKey = uint64_t{1} << 24;

  // Installs the secret-reporting callback on `ctx` (once per context; connections that did not
  // call Watch() are not recorded).
  static void CaptureSecrets(SSL_CTX* ctx);
  // Before the handshake of `ssl`: keep its application traffic secrets for TakeOver().
  static void Watch(SSL* ssl);
  // After SSL_do_handshake returned 1 on a watched connection: the record layer for everything
  // that follows, or an error saying why OpenSSL keeps the records (nothing of the connection
  // changed then). The SSL stays with the caller for the exporter and the peer's certificate;
  // SSL_read/SSL_write must not be called on it afterwards.
  static absl::StatusOr<std::unique_ptr<TlsRecordLayer>> TakeOver(SSL* ssl);
  // The layer for the traffic secrets of a suite's AEAD (NID_aes_128_gcm, NID_aes_256_gcm or
  // NID_chacha20_poly1305; the secrets are the hash's size). TakeOver's second half; tests and
  // the fuzzer build ends that talk to each other with it.
  static absl::StatusOr<std::unique_ptr<TlsRecordLayer>> FromSecrets(int cipher_nid,
                                                                     std::string_view write_secret,
                                                                     std::string_view read_secret);
  // TakeOver, or nullptr when it declined, counted and logged for `connection` (such as
  // "link"): the connection then goes on with OpenSSL's records.
  static std::unique_ptr<TlsRecordLayer> TakeOverOrKeepOpenSsl(SSL* ssl,
                                                               std::string_view connection);
  ~TlsRecordLayer();
  TlsRecordLayer(const TlsRecordLayer&) = delete;
  TlsRecordLayer& operator=(const TlsRecordLayer&) = delete;

  // Seals the first `length` bytes of `first` followed by `second` as records of up to
  // kMaxPlaintext, appended to `out`. False (with `error()` set) only when the AEAD fails.
  bool Seal(std::string_view first, std::string_view second, size_t length, RecordBuffer& out);
  bool Seal(std::string_view plaintext, RecordBuffer& out) {
    return Seal(plaintext, {}, plaintext.size(), out);
  }
  // For a writer that coalesces small pieces into records until it flushes: once `pending` and
  // `more` hold a whole record, seals the whole records (and a tail of kSealTailAtOnce or more:
  // a short record costs less than copying it) and removes what it sealed from both. What is
  // left of `more` is for the caller to append to `pending`.
  bool SealWholeRecords(std::string& pending, std::string_view& more, RecordBuffer& out);
  // Seals `inner` exactly as TLSInnerPlaintext (content, content type byte, zero padding: the
  // caller writes all three), appended to `out`. For tests and the fuzzer, which make records a
  // well-behaved peer never sends.
  bool SealInnerPlaintext(std::string_view inner, RecordBuffer& out);
  // close_notify, sealed and appended to `out`.
  bool SealCloseNotify(RecordBuffer& out);
  // A fatal alert (Opened::alert after a bad record), sealed and appended to `out`.
  bool SealAlert(unsigned char description, RecordBuffer& out);

  struct Opened {
    size_t consumed = 0;       // ciphertext bytes taken from the front of the input
    size_t produced = 0;       // application bytes written to the output
    bool peer_closed = false;  // close_notify: nothing follows
    // Not OK: a forged or corrupt record, an alert, a message that has no place here. The
    // connection is unusable then; the `produced` bytes before the bad record are the peer's.
    absl::Status status;
    // The alert to send the peer before closing (RFC 8446 §6.2); 0 when the peer sent one.
    unsigned char alert = 0;
  };
  // Opens the complete records at the front of `ciphertext` while their plaintext fits in
  // `plaintext` (at most `capacity` bytes; kMaxOpenedPerRecord or more ensures progress). A
  // record cut short, or one that does not fit, stays unconsumed. Records to send back (our
  // KeyUpdate when the peer asked for one) are appended to `reply`.
  Opened Open(std::string_view ciphertext, char* plaintext, size_t capacity, RecordBuffer& reply);

  // How many more bytes the record that `start` begins needs before Open can take it: what its
  // header lacks while the header is cut, then the rest of its body; 0 once it is whole.
  static size_t BytesToCompleteRecord(std::string_view start);
  // Moves from the front of `more` to the end of `held` what the record starting at `start` in
  // `held` lacks (all of `more` when that is not enough).
  static void TakeRestOfRecord(std::string& held, size_t start, std::string_view& more);

  // For tests: move the sealing key after `records` records instead of kRecordsPerKey.
  void set_records_per_key(uint64_t records) { records_per_key_ = records; }
  uint64_t key_updates_sent() const { return key_updates_sent_; }
  uint64_t key_updates_received() const { return key_updates_received_; }
  const std::string& error() const { return error_; }

 private:
  // One direction: its AEAD, static IV, current traffic secret and sequence number.
  struct Direction {
    std::unique_ptr<RecordAead> aead;
    unsigned char iv[12] = {};
    unsigned char secret[EVP_MAX_MD_SIZE] = {};
    uint64_t sequence = 0;
  };

  explicit TlsRecordLayer(const EVP_MD* digest);
  absl::Status Install(Direction& direction, const unsigned char* secret);
  absl::Status NextKey(Direction& direction);
  void Nonce(const Direction& direction, unsigned char* nonce) const;
  bool SealRecord(unsigned char content_type, std::string_view first, std::string_view second,
                  RecordBuffer& out);
  // One record whose inner plaintext is the three pieces joined.
  bool SealPieces(std::string_view first, std::string_view second, std::string_view third,
                  RecordBuffer& out);
  bool SealKeyUpdate(bool request_update, RecordBuffer& out);
  absl::Status HandlePostHandshake(std::string_view messages, RecordBuffer& reply);
  bool Failed(std::string message);

  const EVP_MD* digest_;
  size_t secret_size_;
  Direction read_;
  Direction write_;
  uint64_t records_per_key_ = kRecordsPerKey;
  uint64_t key_updates_sent_ = 0;
  uint64_t key_updates_received_ = 0;
  std::string error_;
};

}  // namespace rdv

#endif  // RDV_COMMON_TLS_RECORD_LAYER_H_
