// PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a private server the
// address of the original client, which it would otherwise see as the agent.
#ifndef RDV_COMMON_PROXY_PROTOCOL_H_
#define RDV_COMMON_PROXY_PROTOCOL_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rdv {

enum class ProxyProtocolVersion { kV1, kV2 };

// `source` is the client ("1.2.3.4:5678" or "[2001:db8::1]:5678"), `destination` the relay
// address it connected to. Mixed families are sent as IPv6 (IPv4-mapped). Addresses that do not
// parse give the spec's "unknown" form (v1 "PROXY UNKNOWN", v2 LOCAL), which servers accept and
// treat as a direct connection.
std::string EncodeProxyHeader(ProxyProtocolVersion version, std::string_view source,
                              std::string_view destination);

// A PROXY header a load balancer in front of the relay sent first on a connection.
struct ProxyHeader {
  // LOCAL (v2) or UNKNOWN (v1): the connection is the balancer's own (a health check); keep
  // the socket's addresses.
  bool local = false;
  std::string source;       // "ip:port" / "[ip6]:port" of the original client
  std::string destination;  // the address the client connected to
  size_t length = 0;        // bytes the header took; the client's data follows
};

// The longest header accepted: a v1 line is at most 107 bytes; v2 carries TLVs after the
// addresses, which are skipped but bounded.
inline constexpr size_t kMaxProxyHeaderBytes = 1024;

// Parses a v1 or v2 header at the start of `data`. nullopt: not enough bytes yet (the caller
// reads more, up to kMaxProxyHeaderBytes). An error says what is wrong, e.g. "PROXY v1: bad
// source port". Non-TCP v2 families (UDP, unix) are reported as local.
absl::StatusOr<std::optional<ProxyHeader>> ParseProxyHeader(std::string_view data);

}  // namespace rdv

#endif  // RDV_COMMON_PROXY_PROTOCOL_H_
