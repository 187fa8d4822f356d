// PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a private server the
// address of the original client, which it would otherwise see as the agent.
#ifndef RDV_COMMON_PROXY_PROTOCOL_H_
#define RDV_COMMON_PROXY_PROTOCOL_H_

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

}  // namespace rdv

#endif  // RDV_COMMON_PROXY_PROTOCOL_H_
