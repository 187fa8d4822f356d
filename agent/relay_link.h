// One link from the agent to a relay, redialed forever.
//
// 1. dial, TLS verifying the relay, authenticate, keep alive, redial: LinkClient
//    (common/link_client.h)
// 2. Register every service; log each Registered / refusal
// 3. serve Opens: connect to the target (with a timeout), accept and splice, or refuse with
//    the connect error so the relay can tell its client; udp flows go to AgentUdpFlows; tunnel
//    streams (pair, private) become the serving end of a Tunnel (agent/tunnel.h); connect
//    entries open their tunnels on a ready link (LinkClient::ready_link)
// 4. a relay's data path offer (TunnelData) goes to the Tunnel on the named stream, which dials
//    the relay's address again (agent/tunnel.h, docs/protocol.md "Tunnel data path")
#ifndef RDV_AGENT_RELAY_LINK_H_
#define RDV_AGENT_RELAY_LINK_H_

#include <uv.h>

#include <memory>
#include <string>

#include "agent/agent.h"
#include "agent/udp_flow.h"
#include "common/link.h"
#include "common/link_client.h"
#include "common/metrics.h"

namespace rdv {

class RelayLink : public LinkClient {
 public:
  RelayLink(Agent& agent, int index, HostPort relay);
  ~RelayLink() override;

  void Shutdown();
  // GoAway: the relay releases this link's registrations and opens no new streams on it; open
  // streams go on. Not redialed after this.
  void Drain();
  // After the relay's GoAway, once the agent dialed a replacement: not redialed; shut down as
  // soon as no stream is left on it (or when it drops), then the agent lets it go
  // (Agent::OnRetiredLinkStopped).
  void Retire();
  int index() const { return index_; }
  // Link::serial() of the current connection, 0 when there is none.
  uint64_t link_serial() const { return link_ != nullptr ? link_->serial() : 0; }
  // Streams of this link the agent serves for its services (tcp, http, tls, smtp), not counting
  // tunnels (whose own streams the agent counts) and udp flows (which end only when idle).
  size_t ServiceStreamCount() const;
  // Tells the relay the health of `service`'s target (ServiceHealth); dropped unless the link is
  // up: every link reports all checked services again once it has registered.
  void SendServiceHealth(const ServiceConfig& service, bool healthy, const std::string& detail);
  // rdv_agent_links_up; registered at start so that /metrics always shows it.
  static Gauge& LinksUp();

  // LinkHandler
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override;
  void OnStreamRemoved(Link& link) override;

 private:
  // LinkClient
  void OnLinkReady() override;
  bool OnReadyControl(const link::Control& control) override;
  void OnLinkDown(const absl::Status& status, bool was_ready) override;
  void OnPeerGoingAway() override;
  void OnRetiredLinkStopped() override;

  // Control TunnelData: hands the offer to the Tunnel on that stream (or ignores it, counted).
  void OfferDataPath(const link::TunnelData& offer);
  void ConnectTarget(uint32_t stream_id, const ServiceConfig& service);
  // An Open of kind PAIR or PRIVATE: handed to the agent's tunnel for the service, or refused.
  void ServeTunnel(Stream& stream, const link::Open& open);
  void ConnectResolved(uint32_t stream_id, const sockaddr_storage& address,
                       const std::string& proxy_protocol,
                       std::function<void(const absl::Status&)> refuse);
  // Accepts `stream` and splices it to the target `connection` (its unread bytes go first).
  void AcceptAndSplice(Stream& stream, std::unique_ptr<TcpConnection> connection);

  Agent& agent_;
  const int index_;
  bool retired_ = false;               // Retire(): LinksUp no longer counts it
  std::shared_ptr<RelayLink*> alive_;  // async callbacks hold a weak_ptr to this token
  AgentUdpFlows udp_flows_;            // flows of udp services (agent/udp_flow.h)
};

}  // namespace rdv

#endif  // RDV_AGENT_RELAY_LINK_H_
