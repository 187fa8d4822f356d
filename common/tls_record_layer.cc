// TlsRecordLayer: RFC 8446 records over a RecordAead per direction.
//
// 1. Watch/CaptureSecrets: OpenSSL's keylog callback hands each watched connection its
//    CLIENT_/SERVER_TRAFFIC_SECRET_0; they wait in the SSL's ex_data until TakeOver.
// 2. TakeOver: checks that OpenSSL has neither read ahead nor written an application record
//    (a server sends no session tickets), derives key and IV per direction (HKDF-Expand-Label,
//    RFC 8446 §7.3) and wipes the reported secrets.
// 3. Seal: per record, nonce = IV ^ sequence, the header as AAD, the plaintext pieces and the
//    inner content type encrypted straight into the output, the tag after them.
// 4. Open: per complete record, the same in reverse into the caller's buffer; the inner content
//    type (after any zero padding) decides: data, alert or post-handshake message.
#include "common/tls_record_layer.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/tls.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr unsigned char kApplicationData = 23;
constexpr unsigned char kAlert = 21;
constexpr unsigned char kHandshake = 22;
constexpr unsigned char kNewSessionTicket = 4;
constexpr unsigned char kKeyUpdate = 24;
constexpr unsigned char kCloseNotify = 0;
constexpr unsigned char kUserCanceled = 90;
constexpr unsigned char kUnexpectedMessage = 10;
constexpr unsigned char kBadRecordMac = 20;
constexpr unsigned char kRecordOverflow = 22;
constexpr unsigned char kDecodeError = 50;
// RFC 8446 §5.2: a TLSCiphertext may carry up to 2^14 + 256 bytes.
constexpr size_t kMaxCiphertext = TlsRecordLayer::kMaxPlaintext + 256;
constexpr size_t kIvSize = 12;

// The secrets OpenSSL reported for a watched connection, until TakeOver takes them.
struct ReportedSecrets {
  std::string client;
  std::string server;
  ~ReportedSecrets() {
    OPENSSL_cleanse(client.data(), client.size());
    OPENSSL_cleanse(server.data(), server.size());
  }
};

void FreeReportedSecrets(void*, void* secrets, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<ReportedSecrets*>(secrets);
}

int SecretsIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeReportedSecrets);
  return index;
}

// "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>", both in hex; other labels are ignored.
void OnKeylogLine(const SSL* ssl, const char* line) {
  auto* secrets = static_cast<ReportedSecrets*>(SSL_get_ex_data(ssl, SecretsIndex()));
  if (secrets == nullptr) return;
  std::string_view text(line);
  std::string* target = nullptr;
  if (text.starts_with("CLIENT_TRAFFIC_SECRET_0 ")) {
    target = &secrets->client;
  } else if (text.starts_with("SERVER_TRAFFIC_SECRET_0 ")) {
    target = &secrets->server;
  } else {
    return;
  }
  size_t last_space = text.rfind(' ');
  if (last_space == std::string_view::npos) return;
  *target = absl::HexStringToBytes(AbslView(text.substr(last_space + 1)));
}

// HKDF-Expand-Label(secret, label, "", length) of RFC 8446 §7.1.
bool ExpandLabel(const EVP_MD* digest, const unsigned char* secret, size_t secret_size,
                 std::string_view label, unsigned char* out, size_t length) {
  static EVP_KDF* const kHkdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kHkdf == nullptr) return false;
  std::string info;
  info.push_back(static_cast<char>(length >> 8));
  info.push_back(static_cast<char>(length & 0xff));
  info.push_back(static_cast<char>(6 + label.size()));
  info.append("tls13 ");
  info.append(label);
  info.push_back(0);  // empty context
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kHkdf);
  if (ctx == nullptr) return false;
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                       const_cast<char*>(EVP_MD_get0_name(digest)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<unsigned char*>(secret),
                                        secret_size),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.data(), info.size()),
      OSSL_PARAM_construct_end()};
  bool ok = EVP_KDF_derive(ctx, out, length, params) == 1;
  EVP_KDF_CTX_free(ctx);
  return ok;
}

// The ciphertext length a record header announces.
size_t RecordLength(const unsigned char* header) {
  return (static_cast<size_t>(header[3]) << 8) | header[4];
}

void WriteHeader(unsigned char* header, size_t ciphertext_length) {
  header[0] = kApplicationData;  // the outer type of every protected record
  header[1] = 0x03;
  header[2] = 0x03;
  header[3] = static_cast<unsigned char>(ciphertext_length >> 8);
  header[4] = static_cast<unsigned char>(ciphertext_length & 0xff);
}

}  // namespace

char* RecordBuffer::Extend(size_t n) {
  if (capacity_ - size_ < n) reserve(std::max(size_ + n, 2 * capacity_));
  char* at = data_.get() + size_;
  size_ += n;
  return at;
}

void RecordBuffer::reserve(size_t n) {
  if (n <= capacity_) return;
  auto bigger = std::make_unique_for_overwrite<char[]>(n);
  if (size_ > 0) std::memcpy(bigger.get(), data_.get(), size_);
  data_ = std::move(bigger);
  capacity_ = n;
}

void RecordBuffer::append(const char* bytes, size_t n) {
  if (n > 0) std::memcpy(Extend(n), bytes, n);
}

void RecordBuffer::swap(RecordBuffer& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(size_, other.size_);
  std::swap(capacity_, other.capacity_);
}

void TlsRecordLayer::CaptureSecrets(SSL_CTX* ctx) {
  SSL_CTX_set_keylog_callback(ctx, OnKeylogLine);
}

void TlsRecordLayer::Watch(SSL* ssl) {
  if (SSL_get_ex_data(ssl, SecretsIndex()) == nullptr) {
    SSL_set_ex_data(ssl, SecretsIndex(), new ReportedSecrets());
  }
}

absl::StatusOr<std::unique_ptr<TlsRecordLayer>> TlsRecordLayer::TakeOver(SSL* ssl) {
  auto* secrets = static_cast<ReportedSecrets*>(SSL_get_ex_data(ssl, SecretsIndex()));
  // Whatever happens, OpenSSL's report is not kept.
  std::unique_ptr<ReportedSecrets> owned(secrets);
  SSL_set_ex_data(ssl, SecretsIndex(), nullptr);
  if (SSL_version(ssl) != TLS1_3_VERSION || !SSL_is_init_finished(ssl)) {
    return absl::FailedPreconditionError("not an established TLS 1.3 connection");
  }
  if (secrets == nullptr || secrets->client.empty() || secrets->server.empty()) {
    return absl::FailedPreconditionError(
        "the traffic secrets were not reported (Watch and CaptureSecrets before the handshake)");
  }
  if (SSL_has_pending(ssl)) {
    return absl::FailedPreconditionError("OpenSSL already holds record bytes of the peer");
  }
  if (SSL_is_server(ssl) && SSL_get_num_tickets(ssl) != 0) {
    return absl::FailedPreconditionError(
        "the server sends session tickets, records OpenSSL writes on its own");
  }
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl);
  if (suite == nullptr) return absl::FailedPreconditionError("no cipher suite negotiated");
  const bool server = SSL_is_server(ssl) == 1;
  absl::StatusOr<std::unique_ptr<TlsRecordLayer>> layer =
      FromSecrets(SSL_CIPHER_get_cipher_nid(suite), server ? secrets->server : secrets->client,
                  server ? secrets->client : secrets->server);
  if (!layer.ok() && layer.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::FailedPreconditionError(
        StrCat("cipher suite ", SSL_CIPHER_get_name(suite), ": ", layer.status().message()));
  }
  return layer;
}

absl::StatusOr<std::unique_ptr<TlsRecordLayer>> TlsRecordLayer::FromSecrets(
    int cipher_nid, std::string_view write_secret, std::string_view read_secret) {
  // RFC 8446 §B.4: the AEAD and the hash of each TLS 1.3 suite a link may use.
  const EVP_MD* digest = nullptr;
  if (cipher_nid == NID_aes_256_gcm) {
    digest = EVP_sha384();
  } else if (cipher_nid == NID_aes_128_gcm || cipher_nid == NID_chacha20_poly1305) {
    digest = EVP_sha256();
  } else {
    return absl::InvalidArgumentError("AEAD not supported");
  }
  std::unique_ptr<TlsRecordLayer> layer(new TlsRecordLayer(digest));
  if (write_secret.size() != layer->secret_size_ || read_secret.size() != layer->secret_size_) {
    return absl::InvalidArgumentError(
        StrCat("traffic secrets must be ", layer->secret_size_, " bytes"));
  }
  for (auto [direction, secret, seal] : {std::tuple(&layer->write_, write_secret, true),
                                         std::tuple(&layer->read_, read_secret, false)}) {
    absl::StatusOr<std::unique_ptr<RecordAead>> aead = RecordAead::Create(cipher_nid, seal);
    if (!aead.ok()) return aead.status();
    direction->aead = std::move(*aead);
    if (absl::Status status =
            layer->Install(*direction, reinterpret_cast<const unsigned char*>(secret.data()));
        !status.ok()) {
      return status;
    }
  }
  return layer;
}

std::unique_ptr<TlsRecordLayer> TlsRecordLayer::TakeOverOrKeepOpenSsl(SSL* ssl,
                                                                      std::string_view connection) {
  absl::StatusOr<std::unique_ptr<TlsRecordLayer>> layer = TakeOver(ssl);
  if (layer.ok()) return std::move(*layer);
  CounterOf("rdv_tls_user_space_records_declined_total",
            "TLS connections whose records stayed with OpenSSL (TlsRecordLayer declined them)")
      .Inc();
  spdlog::warn("{} TLS records stay with OpenSSL: {}", connection, layer.status().message());
  return nullptr;
}

TlsRecordLayer::TlsRecordLayer(const EVP_MD* digest)
    : digest_(digest), secret_size_(static_cast<size_t>(EVP_MD_get_size(digest))) {}

TlsRecordLayer::~TlsRecordLayer() {
  for (Direction* direction : {&read_, &write_}) {
    OPENSSL_cleanse(direction->secret, sizeof(direction->secret));
    OPENSSL_cleanse(direction->iv, sizeof(direction->iv));
  }
}

absl::Status TlsRecordLayer::Install(Direction& direction, const unsigned char* secret) {
  unsigned char key[RecordAead::kMaxKeySize];
  if (!ExpandLabel(digest_, secret, secret_size_, "key", key, direction.aead->key_size()) ||
      !ExpandLabel(digest_, secret, secret_size_, "iv", direction.iv, kIvSize)) {
    return absl::InternalError("TLS key derivation failed: " + OpenSslErrors());
  }
  absl::Status status = direction.aead->SetKey(key);
  OPENSSL_cleanse(key, sizeof(key));
  if (!status.ok()) return status;
  if (direction.secret != secret) std::memcpy(direction.secret, secret, secret_size_);
  direction.sequence = 0;
  return absl::OkStatus();
}

absl::Status TlsRecordLayer::NextKey(Direction& direction) {
  unsigned char next[EVP_MAX_MD_SIZE];
  if (!ExpandLabel(digest_, direction.secret, secret_size_, "traffic upd", next, secret_size_)) {
    return absl::InternalError("TLS key update failed: " + OpenSslErrors());
  }
  absl::Status status = Install(direction, next);
  OPENSSL_cleanse(next, sizeof(next));
  return status;
}

void TlsRecordLayer::Nonce(const Direction& direction, unsigned char* nonce) const {
  std::memcpy(nonce, direction.iv, kIvSize);
  for (int i = 0; i < 8; ++i) {
    nonce[kIvSize - 1 - i] ^= static_cast<unsigned char>(direction.sequence >> (8 * i));
  }
}

bool TlsRecordLayer::Failed(std::string message) {
  error_ = std::move(message);
  ERR_clear_error();
  return false;
}

bool TlsRecordLayer::SealInnerPlaintext(std::string_view inner, RecordBuffer& out) {
  if (inner.size() > kMaxCiphertext - kTagSize) return Failed("inner plaintext too long");
  return SealPieces(inner, {}, {}, out);
}

bool TlsRecordLayer::SealRecord(unsigned char content_type, std::string_view first,
                                std::string_view second, RecordBuffer& out) {
  return SealPieces(first, second,
                    std::string_view(reinterpret_cast<const char*>(&content_type), 1), out);
}

bool TlsRecordLayer::SealPieces(std::string_view first, std::string_view second,
                                std::string_view third, RecordBuffer& out) {
  const size_t length = first.size() + second.size() + third.size() + kTagSize;
  const size_t at = out.size();
  auto* header = reinterpret_cast<unsigned char*>(out.Extend(kHeaderSize + length));
  WriteHeader(header, length);
  unsigned char* body = header + kHeaderSize;
  unsigned char nonce[kIvSize];
  Nonce(write_, nonce);
  if (!write_.aead->Seal(nonce, header, kHeaderSize, {first, second, third}, body,
                         body + length - kTagSize)) {
    out.Truncate(at);
    return Failed("TLS record sealing failed: " + OpenSslErrors());
  }
  ++write_.sequence;
  return true;
}

bool TlsRecordLayer::SealKeyUpdate(bool request_update, RecordBuffer& out) {
  const char message[5] = {static_cast<char>(kKeyUpdate), 0, 0, 1,
                           static_cast<char>(request_update ? 1 : 0)};
  if (!SealRecord(kHandshake, std::string_view(message, sizeof(message)), {}, out)) return false;
  if (absl::Status status = NextKey(write_); !status.ok()) {
    return Failed(std::string(status.message()));
  }
  ++key_updates_sent_;
  return true;
}

bool TlsRecordLayer::Seal(std::string_view first, std::string_view second, size_t length,
                          RecordBuffer& out) {
  first = first.substr(0, std::min(first.size(), length));
  second = second.substr(0, std::min(second.size(), length - first.size()));
  size_t records = (first.size() + second.size() + kMaxPlaintext - 1) / kMaxPlaintext;
  out.reserve(out.size() + first.size() + second.size() + records * kOverhead);
  while (!first.empty() || !second.empty()) {
    if (write_.sequence >= records_per_key_ && !SealKeyUpdate(false, out)) return false;
    size_t from_first = std::min(first.size(), kMaxPlaintext);
    size_t from_second = std::min(second.size(), kMaxPlaintext - from_first);
    if (!SealRecord(kApplicationData, first.substr(0, from_first), second.substr(0, from_second),
                    out)) {
      return false;
    }
    first.remove_prefix(from_first);
    second.remove_prefix(from_second);
  }
  return true;
}

bool TlsRecordLayer::SealWholeRecords(std::string& pending, std::string_view& more,
                                      RecordBuffer& out) {
  const size_t total = pending.size() + more.size();
  if (total < kMaxPlaintext) return true;
  size_t now = total - total % kMaxPlaintext;
  if (total - now >= kSealTailAtOnce) now = total;
  if (!Seal(pending, more, now, out)) return false;
  const size_t from_pending = std::min(now, pending.size());
  pending.erase(0, from_pending);
  more.remove_prefix(now - from_pending);
  return true;
}

bool TlsRecordLayer::SealCloseNotify(RecordBuffer& out) {
  const char alert[2] = {1, static_cast<char>(kCloseNotify)};  // warning, close_notify
  return SealRecord(kAlert, std::string_view(alert, sizeof(alert)), {}, out);
}

bool TlsRecordLayer::SealAlert(unsigned char description, RecordBuffer& out) {
  const char alert[2] = {2, static_cast<char>(description)};  // fatal
  return SealRecord(kAlert, std::string_view(alert, sizeof(alert)), {}, out);
}

absl::Status TlsRecordLayer::HandlePostHandshake(std::string_view messages, RecordBuffer& reply) {
  while (!messages.empty()) {
    if (messages.size() < 4) {
      return absl::DataLossError("TLS record: truncated post-handshake message");
    }
    const auto type = static_cast<unsigned char>(messages[0]);
    const size_t length = (static_cast<size_t>(static_cast<unsigned char>(messages[1])) << 16) |
                          (static_cast<size_t>(static_cast<unsigned char>(messages[2])) << 8) |
                          static_cast<unsigned char>(messages[3]);
    if (messages.size() - 4 < length) {
      return absl::DataLossError(
          "TLS record: a post-handshake message split across records (not supported)");
    }
    std::string_view body = messages.substr(4, length);
    messages.remove_prefix(4 + length);
    if (type == kNewSessionTicket) continue;  // links and tunnels never resume
    if (type != kKeyUpdate) {
      return absl::DataLossError(
          StrCat("TLS record: unexpected post-handshake message type ", static_cast<int>(type)));
    }
    if (body.size() != 1 || static_cast<unsigned char>(body[0]) > 1) {
      return absl::DataLossError("TLS record: malformed KeyUpdate");
    }
    if (!messages.empty()) {
      return absl::DataLossError("TLS record: data after a KeyUpdate in the same record");
    }
    if (absl::Status status = NextKey(read_); !status.ok()) return status;
    ++key_updates_received_;
    if (body[0] == 1 && !SealKeyUpdate(false, reply)) return absl::InternalError(error_);
  }
  return absl::OkStatus();
}

size_t TlsRecordLayer::BytesToCompleteRecord(std::string_view start) {
  if (start.size() < kHeaderSize) return kHeaderSize - start.size();
  const size_t length = RecordLength(reinterpret_cast<const unsigned char*>(start.data()));
  return kHeaderSize + length > start.size() ? kHeaderSize + length - start.size() : 0;
}

void TlsRecordLayer::TakeRestOfRecord(std::string& held, size_t start, std::string_view& more) {
  // Twice at most: the header's missing bytes, then the body it announces.
  while (!more.empty()) {
    const size_t missing = BytesToCompleteRecord(std::string_view(held).substr(start));
    if (missing == 0) return;
    const size_t n = std::min(missing, more.size());
    held.append(more.data(), n);
    more.remove_prefix(n);
  }
}

TlsRecordLayer::Opened TlsRecordLayer::Open(std::string_view ciphertext, char* plaintext,
                                            size_t capacity, RecordBuffer& reply) {
  Opened opened;
  auto fail = [&opened](unsigned char alert, absl::Status status) {
    opened.alert = alert;
    opened.status = std::move(status);
    return opened;
  };
  while (ciphertext.size() - opened.consumed >= kHeaderSize) {
    const auto* header =
        reinterpret_cast<const unsigned char*>(ciphertext.data() + opened.consumed);
    const size_t length = RecordLength(header);
    if (header[0] != kApplicationData || header[1] != 0x03 || header[2] != 0x03) {
      return fail(kUnexpectedMessage,
                  absl::DataLossError(StrCat(
                      "TLS record: unexpected record type ", static_cast<int>(header[0]),
                      " version ", static_cast<int>(header[1]), ".", static_cast<int>(header[2]))));
    }
    if (length > kMaxCiphertext || length < 1 + kTagSize) {
      return fail(kRecordOverflow,
                  absl::DataLossError(StrCat("TLS record: bad record length ", length)));
    }
    if (ciphertext.size() - opened.consumed - kHeaderSize < length) break;  // cut short
    const size_t inner_length = length - kTagSize;
    if (capacity - opened.produced < inner_length) break;  // the caller delivers first
    auto* out = reinterpret_cast<unsigned char*>(plaintext + opened.produced);
    const unsigned char* body = header + kHeaderSize;
    unsigned char nonce[kIvSize];
    Nonce(read_, nonce);
    if (!read_.aead->Open(nonce, header, kHeaderSize, body, inner_length, body + inner_length,
                          out)) {
      return fail(kBadRecordMac,
                  absl::DataLossError(StrCat("TLS record ", read_.sequence,
                                             ": authentication failed (corrupt or forged)")));
    }
    ++read_.sequence;
    opened.consumed += kHeaderSize + length;
    // The inner content type is the last non-zero byte; zeros after it are padding.
    size_t end = inner_length;
    while (end > 0 && out[end - 1] == 0) --end;
    if (end == 0) {
      return fail(kUnexpectedMessage, absl::DataLossError("TLS record: no content type"));
    }
    const unsigned char type = out[end - 1];
    const size_t content = end - 1;
    if (type == kApplicationData) {
      opened.produced += content;
      continue;
    }
    std::string_view bytes(reinterpret_cast<const char*>(out), content);
    if (type == kAlert) {
      if (content != 2) {
        return fail(kDecodeError, absl::DataLossError("TLS record: malformed alert"));
      }
      const auto description = static_cast<unsigned char>(bytes[1]);
      if (description == kUserCanceled) continue;  // a close_notify follows
      if (description == kCloseNotify) {
        opened.peer_closed = true;
        return opened;
      }
      return fail(
          0, absl::DataLossError(StrCat("peer sent TLS alert ", static_cast<int>(description))));
    }
    if (type == kHandshake) {
      if (absl::Status status = HandlePostHandshake(bytes, reply); !status.ok()) {
        return fail(kUnexpectedMessage, status);
      }
      continue;
    }
    return fail(kUnexpectedMessage,
                absl::DataLossError(
                    StrCat("TLS record: unexpected content type ", static_cast<int>(type))));
  }
  return opened;
}

}  // namespace rdv
