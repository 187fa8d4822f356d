// SOCKS5 (RFC 1928) and its username/password sub-negotiation (RFC 1929): pure, incremental
// parsers for what a client sends and encoders for what the server answers. No I/O.
//
// The server side of a handshake is three messages from the client, each answered:
//   1. greeting  VER=5 NMETHODS METHODS...             -> VER=5 METHOD (0xFF: none acceptable)
//   2. (method 0x02 only) VER=1 ULEN UNAME PLEN PASSWD  -> VER=1 STATUS (0 = success)
//   3. request   VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT -> VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT
//
// Each Parse* function looks at the unconsumed input and returns the length of one complete
// message at its front (filling `out`), 0 when more bytes are needed (nothing is consumed), or an
// error. Any split of the input gives the same results.
#ifndef RDV_COMMON_SOCKS5_H_
#define RDV_COMMON_SOCKS5_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rdv::socks5 {

constexpr uint8_t kVersion = 0x05;
constexpr uint8_t kAuthVersion = 0x01;  // RFC 1929 sub-negotiation version

// Authentication methods (greeting, method selection).
constexpr uint8_t kMethodNoAuth = 0x00;
constexpr uint8_t kMethodUserPass = 0x02;
constexpr uint8_t kMethodNoneAcceptable = 0xFF;

// Request commands.
constexpr uint8_t kCommandConnect = 0x01;
constexpr uint8_t kCommandBind = 0x02;
constexpr uint8_t kCommandUdpAssociate = 0x03;

enum class AddressType : uint8_t { kIpv4 = 0x01, kDomain = 0x03, kIpv6 = 0x04 };

// Reply codes (RFC 1928 section 6).
enum class Reply : uint8_t {
  kSucceeded = 0x00,
  kGeneralFailure = 0x01,
  kNotAllowed = 0x02,
  kNetworkUnreachable = 0x03,
  kHostUnreachable = 0x04,
  kConnectionRefused = 0x05,
  kTtlExpired = 0x06,
  kCommandNotSupported = 0x07,
  kAddressTypeNotSupported = 0x08,
};

struct Greeting {
  std::vector<uint8_t> methods;  // as offered, in order (at least one)
};

struct Credentials {
  std::string username;  // 0..255 bytes, not validated further
  std::string password;
};

struct Request {
  uint8_t command = 0;  // any value; the caller answers kCommandNotSupported to all but CONNECT
  AddressType address_type = AddressType::kDomain;
  // kDomain: the name exactly as sent (1..255 bytes, not validated); kIpv4: "1.2.3.4";
  // kIpv6: "2001:db8::1" (inet_ntop form, no brackets).
  std::string host;
  uint16_t port = 0;
};

// Errors: InvalidArgumentError when the message is malformed (wrong version, no methods, reserved
// byte not zero, empty domain name).
absl::StatusOr<size_t> ParseGreeting(std::string_view input, Greeting& out);
absl::StatusOr<size_t> ParseCredentials(std::string_view input, Credentials& out);
// Also UnimplementedError for an address type other than IPv4, domain or IPv6: the length of the
// request cannot be known then; answer kAddressTypeNotSupported and close.
absl::StatusOr<size_t> ParseRequest(std::string_view input, Request& out);

// The method the server selects from `greeting`: kMethodUserPass when credentials are required
// and offered, kMethodNoAuth when they are not required and that is offered, otherwise
// kMethodNoneAcceptable (the server then closes).
uint8_t ChooseMethod(const Greeting& greeting, bool require_credentials);

std::string EncodeMethodSelection(uint8_t method);
std::string EncodeAuthStatus(bool success);
// A request reply. The server (the relay's proxy entrypoint, an agent's socks5 connect listener)
// never discloses the address it uses toward the target: BND.ADDR is IPv4 0.0.0.0 and BND.PORT 0.
std::string EncodeReply(Reply reply);

// The client side, for tests and tools.
std::string EncodeGreeting(const std::vector<uint8_t>& methods);
std::string EncodeCredentials(std::string_view username, std::string_view password);
// `host` is a domain name (kDomain) or an address literal (kIpv4/kIpv6); InvalidArgumentError
// when it does not fit the type.
absl::StatusOr<std::string> EncodeRequest(uint8_t command, AddressType type, std::string_view host,
                                          uint16_t port);

}  // namespace rdv::socks5

#endif  // RDV_COMMON_SOCKS5_H_
