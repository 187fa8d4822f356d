#include "common/tls.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/escaping.h"
#include "common/metrics.h"
#include "common/str_cat.h"

namespace rdv {
namespace {

constexpr size_t kMaxRecordPlaintext = TlsRecordLayer::kMaxPlaintext;
// Small flushes in a row after which an idle link gives its bulk-sized write buffer back.
constexpr int kSmallFlushesBeforeRelease = 16;
// AES-128-GCM first: as strong as links need and markedly cheaper per byte than AES-256 on
// AES-NI machines; both ends prefer it, ChaCha20 remains for CPUs without AES instructions.
constexpr const char* kLinkCipherSuites =
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
// Decrypted records of this thread's sessions, handed on a chunk at a time; a socket that cannot
// take its frames at once keeps referencing them (LendableBuffer).
constexpr size_t kReadChunk = 1024 * 1024;
thread_local LendableBuffer tls_read_buffer(kReadChunk);

int SelectAlpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
               unsigned int inlen, void*) {
  static const unsigned char kWire[] = {5, 'r', 'd', 'v', '/', '1'};
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, outlen, kWire, sizeof(kWire), in, inlen) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

absl::Status GenerateSelfSigned(const std::string& cert_path, const std::string& key_path,
                                const std::string& common_name) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (key == nullptr) return absl::InternalError("EC key generation failed: " + OpenSslErrors());
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof(serial));
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 10L * 365 * 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  X509_set_issuer_name(cert, name);
  absl::Status status = absl::OkStatus();
  if (X509_sign(cert, key, EVP_sha256()) == 0) {
    status = absl::InternalError("signing the certificate failed: " + OpenSslErrors());
  }
  if (status.ok()) {
    mode_t old_mask = umask(077);
    FILE* kf = std::fopen(key_path.c_str(), "w");
    FILE* cf = std::fopen(cert_path.c_str(), "w");
    umask(old_mask);
    if (kf == nullptr || cf == nullptr ||
        PEM_write_PrivateKey(kf, key, nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
        PEM_write_X509(cf, cert) != 1) {
      status = absl::InternalError(StrCat("cannot write ", cert_path, " / ", key_path));
    }
    if (kf) std::fclose(kf);
    if (cf) std::fclose(cf);
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  return status;
}

}  // namespace

// A BIO that reads ciphertext straight from the socket's read buffer, and collects the records
// OpenSSL writes so that one loop iteration's records reach the socket in one write (FlushNow).
int TlsSession::BioWrite(BIO* bio, const char* data, int length) {
  auto* self = static_cast<TlsSession*>(BIO_get_data(bio));
  if (self == nullptr || self->closed_) return -1;
  self->cipher_out_.append(data, static_cast<size_t>(length));
  self->ScheduleFlush();
  return length;
}

int TlsSession::BioRead(BIO* bio, char* out, int length) {
  auto* self = static_cast<TlsSession*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (self == nullptr || self->input_.empty()) {
    BIO_set_retry_read(bio);
    return -1;
  }
  size_t n = std::min(self->input_.size(), static_cast<size_t>(length));
  std::memcpy(out, self->input_.data(), n);
  self->input_.remove_prefix(n);
  return static_cast<int>(n);
}

BIO_METHOD* NewBufferBioMethod(const char* name, int (*write)(BIO*, const char*, int),
                               int (*read)(BIO*, char*, int)) {
  BIO_METHOD* method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, name);
  BIO_meth_set_write(method, write);
  BIO_meth_set_read(method, read);
  BIO_meth_set_ctrl(method, [](BIO*, int command, long, void*) -> long {
    return command == BIO_CTRL_FLUSH ? 1 : 0;
  });
  return method;
}

BIO_METHOD* TlsSession::SocketBioMethod() {
  static BIO_METHOD* method = NewBufferBioMethod("rdv-socket", BioWrite, BioRead);
  return method;
}

std::string OpenSslErrors() {
  std::string out;
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown TLS error" : out;
}

std::string CertificateFingerprint(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  X509_digest(cert, EVP_sha256(), md, &len);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(md), len));
}

absl::StatusOr<ServerTlsIdentity> CreateLinkServerContext(const std::string& cert_file,
                                                          const std::string& key_file,
                                                          const std::string& state_dir,
                                                          const std::string& common_name) {
  ServerTlsIdentity identity;
  std::string cert_path = cert_file;
  std::string key_path = key_file;
  if (cert_path.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(state_dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          StrCat("cannot create state_dir ", state_dir, ": ", ec.message()));
    }
    cert_path = state_dir + "/relay-cert.pem";
    key_path = state_dir + "/relay-key.pem";
    if (!std::filesystem::exists(cert_path) || !std::filesystem::exists(key_path)) {
      if (absl::Status s = GenerateSelfSigned(cert_path, key_path, common_name); !s.ok()) return s;
      identity.generated = true;
    }
  }
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  identity.ctx.reset(ctx);
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_alpn_select_cb(ctx, SelectAlpn, nullptr);
  SSL_CTX_set_ciphersuites(ctx, kLinkCipherSuites);
  TlsRecordLayer::CaptureSecrets(ctx);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_path.c_str()) != 1) {
    return absl::InvalidArgumentError(
        StrCat("cannot load certificate ", cert_path, ": ", OpenSslErrors()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_path.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        StrCat("cannot load private key ", key_path, ": ", OpenSslErrors()));
  }
  identity.fingerprint_hex = CertificateFingerprint(SSL_CTX_get0_certificate(ctx));
  return identity;
}

absl::StatusOr<SslCtxPtr> CreateLinkClientContext(const std::string& ca_file) {
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);
  static const unsigned char kWire[] = {5, 'r', 'd', 'v', '/', '1'};
  SSL_CTX_set_alpn_protos(ctx.get(), kWire, sizeof(kWire));
  SSL_CTX_set_ciphersuites(ctx.get(), kLinkCipherSuites);
  TlsRecordLayer::CaptureSecrets(ctx.get());
  if (!ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          StrCat("cannot load relay CA ", ca_file, ": ", OpenSslErrors()));
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  } else {
    // Pinned fingerprint: checked by TlsSession after the handshake.
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  }
  return ctx;
}

// ---- TlsSession ----

std::unique_ptr<TlsSession> TlsSession::Create(std::unique_ptr<TcpConnection> tcp, SSL_CTX* ctx,
                                               bool is_server, LoopTasks& tasks,
                                               std::string server_name,
                                               std::string expected_fingerprint,
                                               bool require_link_alpn) {
  SSL* ssl = SSL_new(ctx);
  if (is_server) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    if (!server_name.empty()) {
      SSL_set_tlsext_host_name(ssl, server_name.c_str());
      if (expected_fingerprint.empty()) SSL_set1_host(ssl, server_name.c_str());
    }
  }
  // Links (both ends ours) hand their records to TlsRecordLayer after the handshake.
  if (require_link_alpn) TlsRecordLayer::Watch(ssl);
  std::unique_ptr<TlsSession> session(
      new TlsSession(std::move(tcp), ssl, tasks, std::move(expected_fingerprint)));
  session->require_link_alpn_ = require_link_alpn;
  return session;
}

TlsSession::TlsSession(std::unique_ptr<TcpConnection> tcp, SSL* ssl, LoopTasks& tasks,
                       std::string expected_fingerprint)
    : tcp_(std::move(tcp)),
      ssl_(ssl),
      tasks_(tasks),
      expected_fingerprint_(std::move(expected_fingerprint)) {
  BIO* bio = BIO_new(SocketBioMethod());
  BIO_set_data(bio, this);
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_, bio, bio);
}

TlsSession::~TlsSession() {
  Close();
  SSL_free(ssl_);
}

void TlsSession::Start(Handler& handler) {
  handler_ = &handler;
  tcp_->Start(*this);
  if (!handshake_done_) {
    DriveHandshake();
  } else if (!carry_.empty()) {
    OnRead({});  // an adopted session: decrypt what the previous loop had read
  }
}

absl::StatusOr<TlsSession::Detached> TlsSession::Detach() {
  if (closed_) return absl::FailedPreconditionError("TLS session closed");
  if (!handshake_done_) return absl::FailedPreconditionError("TLS handshake not finished");
  if (records_ != nullptr) {
    return absl::FailedPreconditionError("a link's TLS session does not move between loops");
  }
  FlushNow();
  if (closed_ || !plain_out_.empty() || !cipher_out_.empty() || tcp_->queued_bytes() != 0) {
    return absl::UnavailableError("TLS session still has bytes queued");
  }
  absl::StatusOr<int> fd = tcp_->DetachFd();
  if (!fd.ok()) return fd.status();
  if (scheduled_) tasks_.Cancel(this);
  scheduled_ = false;
  BIO_set_data(SSL_get_rbio(ssl_), nullptr);
  Detached detached{*fd, ssl_, std::move(carry_)};
  ssl_ = nullptr;
  closed_ = true;
  handler_ = nullptr;
  return detached;
}

std::unique_ptr<TlsSession> TlsSession::Adopt(std::unique_ptr<TcpConnection> tcp, Detached detached,
                                              LoopTasks& tasks) {
  // The constructor gives the SSL a socket BIO of this session (freeing the old one).
  std::unique_ptr<TlsSession> session(new TlsSession(std::move(tcp), detached.ssl, tasks, ""));
  session->require_link_alpn_ = false;
  session->handshake_done_ = true;
  session->carry_ = std::move(detached.carry);
  return session;
}

void TlsSession::Close() {
  if (scheduled_) tasks_.Cancel(this);
  scheduled_ = false;
  closed_ = true;
  handler_ = nullptr;
  tcp_->Close();
}

void TlsSession::Fail(const absl::Status& status) {
  if (closed_) return;
  Handler* handler = handler_;
  Close();
  if (handler) handler->OnTlsClosed(status);
}

void TlsSession::DriveHandshake() {
  int rc = SSL_do_handshake(ssl_);
  if (closed_) return;
  if (rc == 1) {
    handshake_done_ = true;
    if (!expected_fingerprint_.empty() && peer_fingerprint() != expected_fingerprint_) {
      Fail(absl::PermissionDeniedError(StrCat("relay certificate fingerprint ", peer_fingerprint(),
                                              " does not match the pinned ",
                                              expected_fingerprint_)));
      return;
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl_, &alpn, &alpn_len);
    if (require_link_alpn_ &&
        std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != kLinkAlpn) {
      Fail(absl::PermissionDeniedError("peer did not negotiate ALPN rdv/1"));
      return;
    }
    if (require_link_alpn_) records_ = TlsRecordLayer::TakeOverOrKeepOpenSsl(ssl_, "link");
    if (handler_) handler_->OnTlsReady();
    return;
  }
  int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
  Fail(absl::UnavailableError(StrCat("TLS handshake failed: ", OpenSslErrors())));
}

void TlsSession::OnRead(std::string_view data) {
  if (closed_) return;
  if (records_ != nullptr && !carry_.empty()) {
    // The record cut by the previous read: only its rest is copied to it; what follows is opened
    // where the socket read it.
    TlsRecordLayer::TakeRestOfRecord(carry_, 0, data);
    std::string held = std::exchange(carry_, std::string());
    OpenRecords(held);  // keeps it in `carry_` again while it is still cut short
    if (!closed_ && !data.empty()) OpenRecords(data);
    return;
  }
  // OpenSSL pulls ciphertext from `input_` through BioRead. A record cut by the end of this read
  // stays in OpenSSL's own buffer; `carry_` only holds bytes left when reading stopped early.
  std::string held;
  if (!carry_.empty()) {
    held.swap(carry_);
    held.append(data);
    data = held;
  }
  input_ = data;
  if (!handshake_done_) {
    DriveHandshake();
    if (closed_) return;
    if (!handshake_done_) {
      if (!input_.empty()) carry_.assign(input_);
      input_ = {};
      return;
    }
  }
  if (records_ != nullptr) {
    std::string_view rest = std::exchange(input_, std::string_view());
    OpenRecords(rest);
    return;
  }
  // Decrypt several records before handing them on, so the handler sees (and writes onward)
  // large chunks rather than one 16 KiB record at a time.
  char* buffer = nullptr;
  size_t filled = 0;
  auto deliver = [&] { Deliver(buffer, filled); };
  while (!closed_) {
    if (filled == 0) buffer = tls_read_buffer.Data();
    int n = SSL_read(ssl_, buffer + filled, static_cast<int>(kReadChunk - filled));
    if (n > 0) {
      filled += static_cast<size_t>(n);
      if (kReadChunk - filled < kMaxRecordPlaintext) deliver();
      continue;
    }
    // Read the error before delivering: the handler may write, which resets OpenSSL's state.
    int err = SSL_get_error(ssl_, n);
    std::string errors = err == SSL_ERROR_WANT_READ ? "" : OpenSslErrors();
    deliver();
    if (closed_) return;
    if (err == SSL_ERROR_WANT_READ) break;
    if (err == SSL_ERROR_ZERO_RETURN) {
      Fail(absl::CancelledError("peer closed the TLS session"));
      return;
    }
    Fail(absl::DataLossError(StrCat("TLS error: ", errors)));
    return;
  }
  if (!closed_ && !input_.empty()) carry_.assign(input_);
  input_ = {};
  // Idle links dominate a relay's memory: after a small read (control traffic, pings) give the
  // 17 KiB record buffer back; OpenSSL allocates it again when traffic comes. Bulk reads keep it.
  if (!closed_ && data.size() < 4096) SSL_free_buffers(ssl_);
}

void TlsSession::Deliver(const char* buffer, size_t& filled) {
  if (filled > 0 && handler_ && !closed_) {
    // The frames' payloads for one socket leave in one write when the handler is done.
    std::string_view plaintext(buffer, filled);
    WriteBatch batch(plaintext, tls_read_buffer.Owner());
    handler_->OnTlsData(plaintext);
  }
  filled = 0;
}

void TlsSession::OpenRecords(std::string_view data) {
  // Records are opened where the socket read them, into the thread's plaintext buffer, several
  // at a time; only a record cut by the end of the read is copied (to `carry_`).
  char* buffer = nullptr;
  size_t filled = 0;
  auto deliver = [&] { Deliver(buffer, filled); };
  while (!closed_) {
    if (kReadChunk - filled < TlsRecordLayer::kMaxOpenedPerRecord) deliver();
    if (closed_) return;
    if (filled == 0) buffer = tls_read_buffer.Data();
    const size_t sealed_before = cipher_out_.size();
    TlsRecordLayer::Opened opened =
        records_->Open(data, buffer + filled, kReadChunk - filled, cipher_out_);
    if (cipher_out_.size() > sealed_before) ScheduleFlush();  // our KeyUpdate answer
    data.remove_prefix(opened.consumed);
    filled += opened.produced;
    if (!opened.status.ok() || opened.peer_closed) {
      deliver();  // what came before the bad record or the close is the peer's
      if (opened.alert != 0 && !closed_ && records_->SealAlert(opened.alert, cipher_out_)) {
        plain_out_.clear();  // nothing after the alert
        FlushNow();
      }
      if (closed_) return;
      if (opened.peer_closed) {
        Fail(absl::CancelledError("peer closed the TLS session"));
      } else {
        Fail(absl::DataLossError(StrCat("TLS error: ", opened.status.message())));
      }
      return;
    }
    if (opened.consumed == 0) break;  // the rest is a record cut short
  }
  deliver();
  if (!closed_ && !data.empty()) carry_.assign(data);
}

void TlsSession::OnEof() {
  Fail(handshake_done_ ? absl::CancelledError("connection closed by peer")
                       : absl::UnavailableError("connection closed during the TLS handshake"));
}

void TlsSession::OnError(const absl::Status& status) { Fail(status); }

void TlsSession::OnDrained() {
  if (!closed_ && handler_) handler_->OnTlsDrained();
}

void TlsSession::Send(std::string_view plaintext) {
  if (closed_) return;
  if (handshake_done_ && records_ != nullptr) {
    // Whole records are sealed straight from what waits and the caller's bytes; only a small
    // tail is copied to wait for the end-of-iteration flush.
    const size_t sealed_before = cipher_out_.size();
    if (!records_->SealWholeRecords(plain_out_, plaintext, cipher_out_)) {
      Fail(absl::InternalError(records_->error()));
      return;
    }
    if (cipher_out_.size() > sealed_before) ScheduleFlush();
  } else if (handshake_done_ && plain_out_.size() + plaintext.size() >= kMaxRecordPlaintext) {
    // Enough for full records: top up what is pending to one record, then encrypt whole records
    // straight from the caller's bytes; only the tail waits for the end-of-iteration flush.
    size_t top_up =
        plain_out_.size() < kMaxRecordPlaintext ? kMaxRecordPlaintext - plain_out_.size() : 0;
    top_up = std::min(top_up, plaintext.size());
    plain_out_.append(plaintext.substr(0, top_up));
    plaintext.remove_prefix(top_up);
    if (!WriteRecords(plain_out_)) return;
    plain_out_.clear();
    size_t whole = plaintext.size() - plaintext.size() % kMaxRecordPlaintext;
    if (!WriteRecords(plaintext.substr(0, whole))) return;
    plaintext.remove_prefix(whole);
  }
  if (plaintext.empty()) return;
  plain_out_.append(plaintext);
  ScheduleFlush();
}

void TlsSession::ScheduleFlush() {
  if (scheduled_ || closed_) return;
  scheduled_ = true;
  tasks_.Schedule(this);
}

bool TlsSession::WriteRecords(std::string_view plaintext) {
  if (records_ != nullptr) {
    if (records_->Seal(plaintext, cipher_out_)) return true;
    Fail(absl::InternalError(records_->error()));
    return false;
  }
  while (!plaintext.empty()) {
    size_t n = std::min(kMaxRecordPlaintext, plaintext.size());
    int rc = SSL_write(ssl_, plaintext.data(), static_cast<int>(n));
    if (closed_) return false;  // the socket failed underneath
    if (rc <= 0) {
      Fail(absl::DataLossError(StrCat("TLS write failed: ", OpenSslErrors())));
      return false;
    }
    plaintext.remove_prefix(static_cast<size_t>(rc));
  }
  return true;
}

void TlsSession::FlushNow() {
  scheduled_ = false;
  if (closed_) return;
  if (handshake_done_ && !plain_out_.empty()) {
    if (!WriteRecords(plain_out_)) return;
    plain_out_.clear();
  }
  if (cipher_out_.empty()) return;
  tcp_->Write(cipher_out_);
  size_t flushed = cipher_out_.size();
  cipher_out_.clear();
  // Keep a bulk-sized buffer while bulk data flows: growing it afresh every iteration costs a
  // reallocation per doubling and a page fault per 4 KiB, which showed as the largest single
  // cost of a bulk stream. Give it back once the link has gone quiet, after a run of small
  // flushes (control traffic, pings), so that idle links stay small.
  if (flushed > kMaxRecordPlaintext * 4) {
    small_flushes_ = 0;
  } else if (cipher_out_.capacity() > kMaxRecordPlaintext * 4 &&
             ++small_flushes_ >= kSmallFlushesBeforeRelease) {
    small_flushes_ = 0;
    RecordBuffer().swap(cipher_out_);
  }
  // The kernel took everything at once: no write callback will report the drain, so report it
  // here (a link holding DATA back for the watermark resumes on it).
  if (!closed_ && tcp_->queued_bytes() == 0 && handler_) handler_->OnTlsDrained();
}

std::string TlsSession::ExportKeyingMaterial(std::string_view label) const {
  unsigned char out[32];
  if (SSL_export_keying_material(ssl_, out, sizeof(out), label.data(), label.size(), nullptr, 0,
                                 0) != 1) {
    return "";
  }
  return std::string(reinterpret_cast<char*>(out), sizeof(out));
}

std::string TlsSession::peer_fingerprint() const {
  X509* cert = SSL_get0_peer_certificate(ssl_);
  return cert ? CertificateFingerprint(cert) : "";
}

}  // namespace rdv
