#include "relay/client_hello.h"

#include <optional>

#include "absl/strings/ascii.h"
#include "common/auth.h"
#include "common/str_cat.h"

namespace rdv {
namespace {

constexpr uint8_t kContentTypeHandshake = 22;
constexpr uint8_t kHandshakeClientHello = 1;
constexpr uint16_t kExtensionServerName = 0;
constexpr uint8_t kNameTypeHostName = 0;
constexpr size_t kRecordHeaderBytes = 5;
constexpr size_t kMaxRecordPayload = 16384;  // 2^14 (RFC 8446 §5.1)
constexpr size_t kHandshakeHeaderBytes = 4;

// A bounds-checked reader over a byte range: every read fails (nullopt) rather than run past
// the end.
class Reader {
 public:
  explicit Reader(std::string_view data) : data_(data) {}

  std::optional<uint32_t> Uint(size_t bytes) {
    if (data_.size() < bytes) return std::nullopt;
    uint32_t value = 0;
    for (size_t i = 0; i < bytes; ++i) value = (value << 8) | static_cast<uint8_t>(data_[i]);
    data_.remove_prefix(bytes);
    return value;
  }
  std::optional<std::string_view> Bytes(size_t count) {
    if (data_.size() < count) return std::nullopt;
    std::string_view out = data_.substr(0, count);
    data_.remove_prefix(count);
    return out;
  }
  // A vector with a `length_bytes`-byte length prefix.
  std::optional<std::string_view> Vector(size_t length_bytes) {
    std::optional<uint32_t> length = Uint(length_bytes);
    if (!length) return std::nullopt;
    return Bytes(*length);
  }
  bool empty() const { return data_.empty(); }

 private:
  std::string_view data_;
};

uint8_t ByteAt(std::string_view data, size_t index) { return static_cast<uint8_t>(data[index]); }

}  // namespace

ClientHelloParser::Outcome ClientHelloParser::Fail(ErrorKind kind, std::string message) {
  error_kind_ = kind;
  error_ = std::move(message);
  outcome_ = Outcome::kError;
  return outcome_;
}

ClientHelloParser::Outcome ClientHelloParser::Feed(std::string_view data) {
  bytes_.append(data);
  if (outcome_ != Outcome::kNeedMore) return outcome_;
  ParseRecords();
  if (outcome_ == Outcome::kNeedMore && bytes_.size() > kMaxBufferedBytes) {
    return Fail(ErrorKind::kTooLarge,
                StrCat("no complete ClientHello in the first ", kMaxBufferedBytes, " bytes"));
  }
  return outcome_;
}

ClientHelloParser::Outcome ClientHelloParser::ParseRecords() {
  while (true) {
    std::string_view rest = std::string_view(bytes_).substr(record_offset_);
    // Judge the content type from the first byte, so that plain HTTP or random bytes on the
    // TLS port are refused at once.
    if (rest.empty()) return outcome_;
    uint8_t type = ByteAt(rest, 0);
    if (type != kContentTypeHandshake) {
      if (records_ == 0 && (type & 0x80) != 0) {
        // An SSL 2.0-compatible ClientHello (RFC 5246 appendix E.2) starts with a 2-byte
        // length whose high bit is set. It cannot carry extensions, hence no SNI.
        return Fail(ErrorKind::kNotTls, "SSLv2-compatible ClientHello (not supported)");
      }
      return Fail(records_ == 0 ? ErrorKind::kNotTls : ErrorKind::kMalformed,
                  StrCat("record of content type ", type,
                         " where a handshake record (22) was "
                         "expected"));
    }
    if (rest.size() >= 2 && ByteAt(rest, 1) != 3) {
      return Fail(records_ == 0 ? ErrorKind::kNotTls : ErrorKind::kMalformed,
                  StrCat("record version major ", ByteAt(rest, 1), " (expected 3)"));
    }
    if (rest.size() < kRecordHeaderBytes) return outcome_;
    size_t length = (static_cast<size_t>(ByteAt(rest, 3)) << 8) | ByteAt(rest, 4);
    if (length == 0 || length > kMaxRecordPayload) {
      return Fail(ErrorKind::kMalformed, StrCat("handshake record of ", length, " bytes"));
    }
    if (rest.size() < kRecordHeaderBytes + length) return outcome_;
    if (++records_ > kMaxRecords) {
      return Fail(ErrorKind::kTooLarge,
                  StrCat("ClientHello spread over more than ", kMaxRecords, " records"));
    }
    handshake_.append(rest.substr(kRecordHeaderBytes, length));
    record_offset_ += kRecordHeaderBytes + length;

    if (handshake_.size() < kHandshakeHeaderBytes) continue;
    if (ByteAt(handshake_, 0) != kHandshakeClientHello) {
      return Fail(ErrorKind::kMalformed, StrCat("handshake message type ", ByteAt(handshake_, 0),
                                                " where a ClientHello (1) was expected"));
    }
    size_t hello_length = (static_cast<size_t>(ByteAt(handshake_, 1)) << 16) |
                          (static_cast<size_t>(ByteAt(handshake_, 2)) << 8) | ByteAt(handshake_, 3);
    if (hello_length + kHandshakeHeaderBytes > kMaxHelloBytes) {
      return Fail(ErrorKind::kTooLarge, StrCat("ClientHello of ", hello_length, " bytes (limit ",
                                               kMaxHelloBytes - kHandshakeHeaderBytes, ")"));
    }
    if (handshake_.size() < kHandshakeHeaderBytes + hello_length) continue;
    Outcome outcome =
        ParseHello(std::string_view(handshake_).substr(kHandshakeHeaderBytes, hello_length));
    handshake_.clear();
    handshake_.shrink_to_fit();
    return outcome;
  }
}

ClientHelloParser::Outcome ClientHelloParser::ParseHello(std::string_view body) {
  Reader reader(body);
  std::optional<uint32_t> version = reader.Uint(2);
  if (!version) return Fail(ErrorKind::kMalformed, "ClientHello truncated in its version");
  // legacy_version: SSL 3.0 (0x0300) up to TLS 1.2 (0x0303); TLS 1.3 also says 0x0303.
  if ((*version >> 8) != 3) {
    return Fail(ErrorKind::kMalformed, fmt::format("ClientHello version {:#06x}", *version));
  }
  if (!reader.Bytes(32)) return Fail(ErrorKind::kMalformed, "ClientHello truncated in random");
  std::optional<std::string_view> session_id = reader.Vector(1);
  if (!session_id || session_id->size() > 32) {
    return Fail(ErrorKind::kMalformed, "bad ClientHello session id");
  }
  std::optional<std::string_view> suites = reader.Vector(2);
  if (!suites || suites->empty() || suites->size() % 2 != 0) {
    return Fail(ErrorKind::kMalformed, "bad ClientHello cipher suites");
  }
  std::optional<std::string_view> compression = reader.Vector(1);
  if (!compression || compression->empty()) {
    return Fail(ErrorKind::kMalformed, "bad ClientHello compression methods");
  }
  if (reader.empty()) {
    outcome_ = Outcome::kNoServerName;  // no extensions at all (allowed up to TLS 1.2)
    return outcome_;
  }
  std::optional<std::string_view> extensions = reader.Vector(2);
  if (!extensions || !reader.empty()) {
    return Fail(ErrorKind::kMalformed, "ClientHello extensions do not fill the message exactly");
  }
  return ParseExtensions(*extensions);
}

ClientHelloParser::Outcome ClientHelloParser::ParseExtensions(std::string_view extensions) {
  Reader reader(extensions);
  std::optional<std::string_view> server_name;
  while (!reader.empty()) {
    std::optional<uint32_t> type = reader.Uint(2);
    std::optional<std::string_view> data = type ? reader.Vector(2) : std::nullopt;
    if (!data) return Fail(ErrorKind::kMalformed, "truncated ClientHello extension");
    if (*type != kExtensionServerName) continue;
    if (server_name) {
      return Fail(ErrorKind::kMalformed, "two server_name extensions");  // RFC 8446 §4.2
    }
    server_name = data;
  }
  if (!server_name) {
    outcome_ = Outcome::kNoServerName;
    return outcome_;
  }
  return ParseServerName(*server_name);
}

ClientHelloParser::Outcome ClientHelloParser::ParseServerName(std::string_view extension) {
  // struct { NameType name_type; opaque HostName<1..2^16-1>; } ServerName;
  // struct { ServerName server_name_list<1..2^16-1> } ServerNameList;
  Reader outer(extension);
  std::optional<std::string_view> list = outer.Vector(2);
  if (!list || list->empty() || !outer.empty()) {
    return Fail(ErrorKind::kMalformed, "bad server_name list length");
  }
  Reader reader(*list);
  std::optional<std::string_view> host_name;
  while (!reader.empty()) {
    std::optional<uint32_t> name_type = reader.Uint(1);
    std::optional<std::string_view> name = name_type ? reader.Vector(2) : std::nullopt;
    if (!name) return Fail(ErrorKind::kMalformed, "truncated server_name entry");
    if (*name_type != kNameTypeHostName) continue;
    if (host_name) {
      // RFC 6066 §3: at most one name of each type.
      return Fail(ErrorKind::kMalformed, "two host_name entries in server_name");
    }
    host_name = name;
  }
  if (!host_name) {
    outcome_ = Outcome::kNoServerName;
    return outcome_;
  }
  std::string lower(*host_name);
  absl::AsciiStrToLower(&lower);
  if (!IsValidHostName(lower)) {
    std::string shown = lower.substr(0, 64);
    for (char& c : shown) {
      if (!absl::ascii_isgraph(static_cast<unsigned char>(c))) c = '?';
    }
    return Fail(ErrorKind::kBadServerName, StrCat("server name '", shown, "' is not a host name"));
  }
  server_name_ = std::move(lower);
  outcome_ = Outcome::kServerName;
  return outcome_;
}

}  // namespace rdv
