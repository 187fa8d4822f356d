// The proxy entrypoint: the relay as a client's configured proxy (relay_config.h,
// ProxyEntrypointConfig; docs/configuration.md "proxy").
//
// One listener serves both protocols, told apart by the first byte:
//   0x05          SOCKS5 (RFC 1928): greeting -> (RFC 1929 credentials when users are
//                 configured) -> CONNECT request naming the virtual address;
//   "CONNECT "    an HTTP CONNECT name:port request (Proxy-Authorization Basic when users are
//                 configured);
//   anything else HTTP requests in absolute-form, served by an HttpSession in proxy mode.
// The requested name:port is routed by RouteProxyDestination(); then
//   http service -> success reply, and the tunnel's bytes are served as the HTTP entrypoint
//                   serves a connection (routing by Host per request, X-Forwarded-* added);
//   tls/tcp      -> ProxyTunnel (proxy_tunnel.h): success only once the agent's target has
//                   connected.
#ifndef RDV_RELAY_PROXY_ENTRYPOINT_H_
#define RDV_RELAY_PROXY_ENTRYPOINT_H_

#include <cstdint>
#include <memory>
#include <string_view>

#include "common/tcp_connection.h"
#include "relay/directory.h"
#include "relay/proxy_refusal.h"
#include "relay/relay_worker.h"

namespace rdv {

// Takes a client accepted on the proxy entrypoint; the worker owns the session from then on.
void ServeProxyEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client);

// Where a proxy client's "host:port" goes (the routing rule of docs/configuration.md):
//   1. an IP literal                                      -> refused, kNotAllowed;
//   2. port 443 or a port the tls entrypoint listens on   -> the `tls` service for host;
//      any other port                                     -> the `http` service for host;
//   3. otherwise the `tcp` service named host (any port);
//   4. otherwise                                          -> refused, kUnknownName.
// A name that is known but has no agent connected gives outcome kNoLink (-> kNoAgent).
struct ProxyRoute {
  bool refused = false;
  ProxyRefusal refusal = ProxyRefusal::kUnknownName;
  link::ServiceKind kind = link::HTTP;
  std::string name;  // normalized host
  RouteResult route;
};
// `worker` is the calling worker's index (links there are preferred).
ProxyRoute RouteProxyDestination(const RelayConfig& config, Directory& directory, int worker,
                                 std::string_view host, uint16_t port, std::string_view client_ip);

}  // namespace rdv

#endif  // RDV_RELAY_PROXY_ENTRYPOINT_H_
