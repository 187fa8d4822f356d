// Reads the server name (SNI, RFC 6066) from the first bytes a TLS client sends, without
// terminating TLS: the tls entrypoint routes on it and forwards the bytes untouched.
//
// The parser is incremental: Feed() takes the bytes read from the socket in order, keeps them
// (the caller forwards them once routed), and answers as soon as it can decide. Each byte is
// examined once, however the ClientHello is cut into TCP segments or TLS records.
//
//   1. record layer: 5-byte headers, content type handshake(22) only, version 3.x, 1..2^14
//      bytes of payload each; the payloads are joined into one handshake byte stream
//   2. handshake: the first message must be a ClientHello whose length fits kMaxHelloBytes
//   3. ClientHello body: version, random, session id, cipher suites, compression methods,
//      extensions; every length is checked against what contains it
//   4. server_name extension: the first host_name entry, lowercased, must be an RFC 1123 host name
//
// Bytes after the ClientHello (the rest of its last record, later records) are kept but not
// examined.
#ifndef RDV_RELAY_CLIENT_HELLO_H_
#define RDV_RELAY_CLIENT_HELLO_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace rdv {

class ClientHelloParser {
 public:
  // The largest ClientHello handshake message accepted (header included). Real ones are well
  // under 2 KiB, even with post-quantum key shares and many extensions.
  static constexpr size_t kMaxHelloBytes = 16384;
  // The most records a ClientHello may be spread over, which bounds the record overhead.
  static constexpr size_t kMaxRecords = 64;
  // Never more than this is buffered before a decision.
  static constexpr size_t kMaxBufferedBytes = kMaxHelloBytes + kMaxRecords * 5;

  enum class Outcome {
    kNeedMore,      // feed more bytes
    kServerName,    // server_name() holds the requested name
    kNoServerName,  // a complete, well-formed ClientHello without a server_name extension
    kError,         // error() says what is wrong; the connection is not TLS we can route
  };
  enum class ErrorKind {
    kNone,
    kNotTls,         // the first bytes are not a TLS handshake record (or are SSLv2)
    kMalformed,      // a length, type or version that no valid ClientHello has
    kTooLarge,       // over kMaxHelloBytes / kMaxRecords
    kBadServerName,  // well formed, but the server name is not a valid host name
  };

  // Appends `data` to what was read before and parses as far as possible. Once the outcome is
  // not kNeedMore it stays the same; later calls only append the bytes.
  Outcome Feed(std::string_view data);

  Outcome outcome() const { return outcome_; }
  ErrorKind error_kind() const { return error_kind_; }
  const std::string& error() const { return error_; }
  // Lowercase; valid when outcome() is kServerName.
  const std::string& server_name() const { return server_name_; }
  // Everything fed so far, in order.
  const std::string& bytes() const { return bytes_; }
  std::string TakeBytes() { return std::move(bytes_); }

 private:
  Outcome Fail(ErrorKind kind, std::string message);
  Outcome ParseRecords();
  Outcome ParseHello(std::string_view body);
  Outcome ParseExtensions(std::string_view extensions);
  Outcome ParseServerName(std::string_view extension);

  std::string bytes_;         // every byte fed
  size_t record_offset_ = 0;  // in bytes_: the start of the next record not yet consumed
  size_t records_ = 0;        // records consumed
  std::string handshake_;     // joined handshake payloads of the records consumed
  Outcome outcome_ = Outcome::kNeedMore;
  ErrorKind error_kind_ = ErrorKind::kNone;
  std::string error_;
  std::string server_name_;
};

}  // namespace rdv

#endif  // RDV_RELAY_CLIENT_HELLO_H_
