// The last step of a proxy entrypoint client whose destination is a tls or tcp service:
//   1. open a stream to the chosen agent (on the worker owning its link: hand the client there
//      once, as a socket plus the bytes already read);
//   2. wait for the agent's answer: it accepts the stream only once its target has connected;
//   3. accepted: send the success reply (SOCKS 0x00 / "200 Connection established") and splice;
//      refused: send the refusal (SOCKS 0x05 / 502) and close.
// Client bytes that arrive before the answer go to the stream at once (the agent holds them).
#ifndef RDV_RELAY_PROXY_TUNNEL_H_
#define RDV_RELAY_PROXY_TUNNEL_H_

#include <memory>
#include <string>

#include "common/tcp_connection.h"
#include "relay/directory.h"
#include "relay/proxy_refusal.h"
#include "relay/relay_worker.h"

namespace rdv {

struct ProxyDestination {
  ProxyProtocol protocol = ProxyProtocol::kSocks5;
  link::ServiceKind kind = link::TCP;  // TLS (routed by host name) or TCP (by service name)
  std::string name;                    // what to route: the requested host name
  std::string entrypoint;              // for Open: "proxy:socks5", "proxy:connect"
};

// Steps 1-3 for a client whose destination `route` (found by this worker) designates.
void StartProxyTunnel(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                      ProxyDestination destination, const RouteResult& route, std::string initial);
// Steps 1-3 for a client handed over by another worker (Handoff::Kind::kProxy): routes again.
void ResumeProxyTunnel(RelayWorker& worker, std::unique_ptr<TcpConnection> client, Handoff handoff);

// Sends `reply` (may be empty), half-closes, discards what the client still sends until it
// closes or a second passes, then closes: closing with unread input would turn into a RST that
// can destroy the reply in flight.
void CloseProxyClient(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                      std::string reply);

}  // namespace rdv

#endif  // RDV_RELAY_PROXY_TUNNEL_H_
