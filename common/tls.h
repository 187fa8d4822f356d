// TLS 1.3 for links: contexts for both ends, certificate generation and pinning, and a TLS
// session layered on a TcpConnection through memory BIOs.
//
// Write path: Send() appends plaintext; once per loop iteration (uv_check) the session encrypts
// everything pending in records of up to 16 KiB. That coalesces the many small frames a link
// produces; bulk data fills whole records at once and is encrypted from the caller's bytes.
// OpenSSL runs the handshake through a BIO of our own; on links both ends are ours, and the
// records after it are sealed and opened by TlsRecordLayer, straight between the socket's
// buffers and the caller's (no copies through OpenSSL's record buffers).
#ifndef RDV_COMMON_TLS_H_
#define RDV_COMMON_TLS_H_

#include <openssl/ssl.h>
#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/loop_tasks.h"
#include "common/tcp_connection.h"
#include "common/tls_record_layer.h"

namespace rdv {

inline constexpr std::string_view kLinkAlpn = "rdv/1";

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;

// Loads cert/key from files, or (when both paths are empty) loads or generates a self-signed
// pair in `state_dir`. Returns a server context that speaks only TLS 1.3 with ALPN rdv/1.
struct ServerTlsIdentity {
  SslCtxPtr ctx;
  std::string fingerprint_hex;  // SHA-256 of the certificate DER, lowercase hex
  bool generated = false;
};
absl::StatusOr<ServerTlsIdentity> CreateLinkServerContext(const std::string& cert_file,
                                                          const std::string& key_file,
                                                          const std::string& state_dir,
                                                          const std::string& common_name);

// Client context verifying the relay either by CA file or by pinned SHA-256 fingerprint.
absl::StatusOr<SslCtxPtr> CreateLinkClientContext(const std::string& ca_file);

std::string CertificateFingerprint(X509* cert);

class TlsSession : public TcpConnection::Handler, public LoopTasks::Client {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    virtual void OnTlsReady() = 0;
    virtual void OnTlsData(std::string_view plaintext) = 0;
    // The session ended (peer closed, TLS or socket error). Called once.
    virtual void OnTlsClosed(const absl::Status& status) = 0;
    virtual void OnTlsDrained() {}
  };

  // `expected_fingerprint`: client side pin ("" = rely on the CA verification of the context).
  // `require_link_alpn`: fail the handshake unless ALPN rdv/1 was negotiated (links); false for
  // other protocols on TLS (SMTP STARTTLS).
  static std::unique_ptr<TlsSession> Create(std::unique_ptr<TcpConnection> tcp, SSL_CTX* ctx,
                                            bool is_server, LoopTasks& tasks,
                                            std::string server_name,
                                            std::string expected_fingerprint,
                                            bool require_link_alpn = true);
  ~TlsSession() override;

  // A server session moving to another loop (an SMTP client after STARTTLS): its socket, its
  // OpenSSL state and ciphertext read but not yet decrypted.
  struct Detached {
    int fd = -1;
    SSL* ssl = nullptr;  // owned by whoever holds the Detached; SSL_free when not adopted
    std::string carry;
  };
  // Flushes what is pending and gives up the socket and the TLS state; the session is closed
  // afterwards (without notifying the handler). Fails, changing nothing but the flush, while
  // bytes are still queued for the socket.
  absl::StatusOr<Detached> Detach();
  // Continues a detached, established session on `tcp` (the adopted fd) and this loop's `tasks`.
  static std::unique_ptr<TlsSession> Adopt(std::unique_ptr<TcpConnection> tcp, Detached detached,
                                           LoopTasks& tasks);

  void Start(Handler& handler);
  void Send(std::string_view plaintext);
  size_t QueuedBytes() const {
    return plain_out_.size() + cipher_out_.size() + tcp_->queued_bytes();
  }
  void PauseReading() { tcp_->PauseReading(); }
  void ResumeReading() { tcp_->ResumeReading(); }
  void Close();
  bool closed() const { return closed_; }
  // True once the records are sealed and opened by TlsRecordLayer rather than OpenSSL.
  bool user_space_records() const { return records_ != nullptr; }
  TcpConnection& tcp() { return *tcp_; }
  // RFC 5705 exporter bound to this session (for channel-bound authentication).
  std::string ExportKeyingMaterial(std::string_view label) const;
  std::string peer_fingerprint() const;

  // TcpConnection::Handler
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;
  void OnDrained() override;
  // LoopTasks::Client
  void FlushNow() override;

 private:
  TlsSession(std::unique_ptr<TcpConnection> tcp, SSL* ssl, LoopTasks& tasks,
             std::string expected_fingerprint);
  void DriveHandshake();
  void OpenRecords(std::string_view data);  // OnRead once TlsRecordLayer has the records
  // Hands the first `filled` bytes of `buffer` (the thread's plaintext buffer) to the handler;
  // zeroes `filled`.
  void Deliver(const char* buffer, size_t& filled);
  bool WriteRecords(std::string_view plaintext);  // false: the session failed
  void ScheduleFlush();
  static BIO_METHOD* SocketBioMethod();
  static int BioWrite(BIO* bio, const char* data, int length);
  static int BioRead(BIO* bio, char* out, int length);
  void Fail(const absl::Status& status);

  std::unique_ptr<TcpConnection> tcp_;
  SSL* ssl_;
  std::unique_ptr<TlsRecordLayer> records_;  // links, after the handshake
  std::string_view input_;                   // ciphertext of the current read, consumed by BioRead
  std::string carry_;                        // ciphertext left over when reading stopped early
  LoopTasks& tasks_;
  std::string expected_fingerprint_;
  Handler* handler_ = nullptr;
  std::string plain_out_;    // plaintext waiting to be sealed
  RecordBuffer cipher_out_;  // sealed records waiting for FlushNow
  int small_flushes_ = 0;    // small flushes in a row, while cipher_out_ is bulk-sized
  bool require_link_alpn_ = true;
  bool handshake_done_ = false;
  bool closed_ = false;
  bool scheduled_ = false;
};

std::string OpenSslErrors();

// A BIO method (built once per call site and kept) whose `write` and `read` move bytes through
// the caller's own buffers; BIO_CTRL_FLUSH succeeds, other controls are not supported.
BIO_METHOD* NewBufferBioMethod(const char* name, int (*write)(BIO*, const char*, int),
                               int (*read)(BIO*, char*, int));

}  // namespace rdv

#endif  // RDV_COMMON_TLS_H_
