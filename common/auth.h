// Who may do what: the link proof (HMAC over a relay nonce and the TLS channel binding), the
// grants that say which service names and ports a credential may register, the source networks
// it may connect from, and the host-name rules that registration and HTTP routing share.
#ifndef RDV_COMMON_AUTH_H_
#define RDV_COMMON_AUTH_H_

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rdv {

// ---- Link proof ----------------------------------------------------------------------------

inline constexpr std::string_view kAuthMacLabel = "rdv-auth-v1";
inline constexpr size_t kAuthMacSize = 32;
// The TLS exporter (RFC 5705, no context value) the proof binds to.
inline constexpr std::string_view kAuthExporterLabel = "EXPORTER-rdv-auth";
// The protocol version Hello carries (docs/protocol.md "Handshake").
inline constexpr uint32_t kLinkProtocolVersion = 1;
// Hello.features an agent may offer (docs/protocol.md "Handshake").
inline constexpr std::string_view kFeatureSmtpEnvelope = "smtp-envelope";
// The agent takes TunnelData offers (docs/protocol.md "Tunnel data path").
inline constexpr std::string_view kFeatureTunnelData = "tunnel-data";
// Shortest secret a credential may have; both relay and agent configs enforce it, so an agent
// learns at load time rather than from a refused link.
inline constexpr size_t kMinSecretLength = 8;

// HMAC-SHA256(secret, "rdv-auth-v1" || nonce || channel_binding), 32 raw bytes.
// The concatenation is unambiguous only because the nonce has a fixed length (32 bytes, see
// Challenge in link.proto); the channel binding (TLS exporter) is whatever follows it.
std::string ComputeAuthMac(std::string_view secret, std::string_view nonce,
                           std::string_view channel_binding);

// Recomputes the MAC and compares in constant time. A `mac` of the wrong length is false.
bool VerifyAuthMac(std::string_view secret, std::string_view nonce,
                   std::string_view channel_binding, std::string_view mac);

// ---- Host names ----------------------------------------------------------------------------

// RFC 1123 host name: 1..253 characters, dot-separated labels of 1..63 letters, digits and '-'
// not starting or ending with '-', the last label not all digits (so "1.2.3.999" is not a name).
// No trailing dot, no wildcard. Case is not checked (callers normalise).
bool IsValidHostName(std::string_view name);

// A host name or "*.<host name>" (a wildcard covering every name below the suffix).
bool IsValidHostPattern(std::string_view pattern);

// A TCP service name: 1..63 characters, a letter first, then letters, digits, '.', '_', '-'.
// Starting with a letter keeps "tcp:2020" (a port) and "tcp:db" (a name) apart in grants.
bool IsValidServiceName(std::string_view name);

// Host header -> routing key: lowercase, ":port" stripped, "[v6]:port" -> "v6", one trailing dot
// stripped. Returns "" for a malformed value (unbalanced brackets, non-numeric port, bare v6).
// The result is not validated; callers check IsValidHostName when they need a name.
std::string NormalizeHost(std::string_view host_header);

// Case-insensitive. "*.orang.com" matches "a.orang.com" and "a.b.orang.com" but neither
// "orang.com" nor "evilorang.com"; any other pattern matches only the same name.
bool WildcardMatches(std::string_view pattern, std::string_view host);

// ---- Grants --------------------------------------------------------------------------------

enum class GrantKind { kHttp, kTcp, kTls, kSmtp, kUdp, kPair, kPrivate, kConnect };

std::string_view GrantKindName(GrantKind kind);

// One "kind:pattern" entry of a credential's `grants`.
//   http:www.orang.com   exactly this host (case-insensitive)
//   http:*.orang.com     any name below orang.com, and the wildcard registrations "*.orang.com"
//                        and "*.x.orang.com" themselves; not "orang.com"
//   tcp:2020-2030        any service name, on a relay port in the range
//   tcp:2020             same, single port
//   tcp:db               the service named "db", on any port
//   tcp:*                any service name, on any port
//   tls:*.orang.com      TLS services by SNI name, patterns as for http
//   smtp:orang.com       mail domains, patterns as for http
//   udp:5353-5360        udp services, patterns as for tcp
//   pair:site-b          register and connect to the pair named "site-b" (docs/protocol.md
//                        "Tunnels"); pair:* any pair, pair:site-* any name starting "site-"
//   private:db           register the private service "db"; patterns as for pair
//   connect:db           open tunnels to the private service "db"; patterns as for pair
class Grant {
 public:
  const std::string& pattern() const { return pattern_; }
  GrantKind kind() const { return kind_; }

  // Whether a registration of `name` (a host name or "*.suffix") of `kind` (http, tls, smtp)
  // is covered.
  bool AllowsHostName(GrantKind kind, std::string_view name) const;
  bool AllowsHttpName(std::string_view name) const {
    return AllowsHostName(GrantKind::kHttp, name);
  }
  // Whether a registration of `service_name` on relay `port` of `kind` (tcp, udp) is covered.
  // Port 0 means the port is not chosen yet: allowed iff this grant names the service (or is
  // "*") or is a port range, from which the relay may then allocate (see PortRange()).
  bool AllowsPort(GrantKind kind, std::string_view service_name, uint16_t port) const;
  bool AllowsTcp(std::string_view service_name, uint16_t port) const {
    return AllowsPort(GrantKind::kTcp, service_name, port);
  }
  // Whether the tunnel name `name` (a service name) is covered for `kind` (pair, private,
  // connect): the pattern is "*", the exact name (case-sensitive), or "<prefix>*".
  bool AllowsTunnelName(GrantKind kind, std::string_view name) const;

  // For tcp/udp port grants: the inclusive range; {0, 0} for name grants.
  bool IsPortRange() const { return port_low_ != 0; }
  uint16_t port_low() const { return port_low_; }
  uint16_t port_high() const { return port_high_; }

  // "kind:pattern" as it parses back.
  std::string ToString() const;

 private:
  friend absl::StatusOr<Grant> ParseGrant(std::string_view text);

  GrantKind kind_ = GrantKind::kHttp;
  std::string pattern_;  // lowercase for host patterns
  uint16_t port_low_ = 0;
  uint16_t port_high_ = 0;
};

// Parses "kind:pattern". Errors explain what was wrong, without any location (the caller adds it).
absl::StatusOr<Grant> ParseGrant(std::string_view text);

// ---- Source networks -----------------------------------------------------------------------

// A set of CIDR blocks. An empty list contains nothing; the relay reads an empty `networks` as
// "any source", so check empty() before Contains().
class NetworkList {
 public:
  // Adds "10.0.0.0/8", "::1/128", or a bare address (/32 or /128). Host bits beyond the prefix
  // are an error ("10.1.0.0/8"), since they usually mean a typo.
  absl::Status Add(std::string_view cidr);

  static absl::StatusOr<NetworkList> Parse(const std::vector<std::string>& cidrs);

  bool empty() const { return networks_.empty(); }
  size_t size() const { return networks_.size(); }

  // AF_INET / AF_INET6 only. IPv4-mapped IPv6 addresses (::ffff:1.2.3.4) match IPv4 blocks.
  bool Contains(const sockaddr* address) const;
  // An address literal ("1.2.3.4", "::1"); anything unparsable is not contained.
  bool Contains(std::string_view ip) const;

  // The blocks as "addr/len", normalised (mapped v6 blocks become v4).
  std::vector<std::string> ToStrings() const;

 private:
  struct Network {
    bool v4 = false;
    std::array<uint8_t, 16> address{};  // v4 uses the first 4 bytes
    int prefix_length = 0;
  };
  bool ContainsAddress(bool v4, const uint8_t* bytes) const;

  std::vector<Network> networks_;
};

}  // namespace rdv

#endif  // RDV_COMMON_AUTH_H_
