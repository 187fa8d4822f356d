// What the proxy entrypoint answers when it cannot (or may not) reach the requested virtual
// address, per protocol, and the counter every refusal increments:
//   rdv_proxy_refused_total{reason="..."}.
#ifndef RDV_RELAY_PROXY_REFUSAL_H_
#define RDV_RELAY_PROXY_REFUSAL_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace rdv {

// How a proxy client asked for its destination.
enum class ProxyProtocol : uint8_t {
  kSocks5 = 1,       // SOCKS5 CONNECT
  kHttpConnect = 2,  // HTTP CONNECT name:port
  kHttpForward = 3,  // HTTP absolute-form request (answers are HTTP responses)
};

enum class ProxyRefusal {
  kMalformed,           // SOCKS 0x01 (or close) / HTTP 400
  kAuth,                // SOCKS method 0xFF or RFC 1929 failure / HTTP 407
  kUnsupportedCommand,  // SOCKS 0x07 (BIND, UDP ASSOCIATE) / HTTP 400
  kAddressType,         // SOCKS 0x08
  kNotAllowed,          // an IP literal, not a virtual address: SOCKS 0x02 / HTTP 403
  kUnknownName,         // no service by that name: SOCKS 0x04 / HTTP 404
  kNoAgent,             // known name, no agent link can take a stream: SOCKS 0x03 / HTTP 503
  kTargetRefused,       // the agent could not connect its target: SOCKS 0x05 / HTTP 502
  kTimeout,             // the handshake did not complete in time: close / HTTP 408
};

// Label value of the reason ("auth", "unknown_name", ...).
std::string_view ProxyRefusalName(ProxyRefusal refusal);
// Counts the refusal and logs it once at info level.
void NoteProxyRefusal(ProxyProtocol protocol, ProxyRefusal refusal, std::string_view peer,
                      std::string_view detail);
// Counts a client that chose `protocol` (rdv_proxy_requests_total{protocol}).
void NoteProxyRequest(ProxyProtocol protocol);

// The bytes that tell the client its tunnel is open: SOCKS reply 0x00 / "200 Connection
// established".
std::string ProxySuccessReply(ProxyProtocol protocol);
// The bytes that tell the client why not ("" when the protocol has nothing to say: just close).
std::string ProxyRefusalReply(ProxyProtocol protocol, ProxyRefusal refusal,
                              std::string_view detail);

}  // namespace rdv

#endif  // RDV_RELAY_PROXY_REFUSAL_H_
