// One link from the agent to a relay, redialed forever.
//
// 1. resolve and dial the relay; TLS 1.3 verifying the relay (CA or pinned fingerprint)
// 2. Hello -> Challenge -> Proof (HMAC over the nonce and the TLS exporter) -> AuthResult
// 3. Register every service; log each Registered / refusal
// 4. serve Opens: connect to the target (with a timeout), accept and splice, or refuse with
//    the connect error so the relay can tell its client; udp flows go to AgentUdpFlows; tunnel
//    streams (pair, private) become the serving end of a Tunnel (agent/tunnel.h); connect
//    entries open their tunnels on a ready link
// 5. on any drop: back off (jittered, exponential from reconnect.initial to reconnect.max), redial
#ifndef RDV_AGENT_RELAY_LINK_H_
#define RDV_AGENT_RELAY_LINK_H_

#include <uv.h>

#include <memory>
#include <string>

#include "agent/agent.h"
#include "agent/reconnect_backoff.h"
#include "agent/udp_flow.h"
#include "common/link.h"
#include "common/metrics.h"
#include "common/tls.h"

namespace rdv {

class RelayLink : public TlsSession::Handler, public LinkTransport, public LinkHandler {
 public:
  RelayLink(Agent& agent, int index, HostPort relay);
  ~RelayLink() override;

  void Start() { Dial(); }
  void Shutdown();
  // The link when it is up and takes new streams (the relay has not sent GoAway), else nullptr.
  Link* ready_link();
  // Tells the relay the health of `service`'s target (ServiceHealth); dropped unless the link is
  // up: every link reports all checked services again once it has registered.
  void SendServiceHealth(const ServiceConfig& service, bool healthy, const std::string& detail);
  const HostPort& relay() const { return relay_; }
  // For the admin status: "up" (authenticated), "connecting", "down" (waiting to redial),
  // "stopped".
  std::string_view state_name() const;
  // rdv_agent_links_up; registered at start so that /metrics always shows it.
  static Gauge& LinksUp();

  // TlsSession::Handler
  void OnTlsReady() override;
  void OnTlsData(std::string_view plaintext) override;
  void OnTlsClosed(const absl::Status& status) override;
  void OnTlsDrained() override;
  // LinkTransport
  void Send(std::string_view bytes) override { tls_->Send(bytes); }
  size_t QueuedBytes() const override { return tls_->QueuedBytes(); }
  // LinkHandler
  void OnControl(Link& link, const link::Control& control) override;
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override;
  void OnPong(Link& link, uint64_t sent_ms) override {}
  void OnLinkFailed(Link& link, const absl::Status& status) override;

 private:
  enum class State { kIdle, kDialing, kHandshake, kAuth, kReady, kStopped };
  void Dial();
  void Connected(std::unique_ptr<TcpConnection> tcp);
  void Down(const absl::Status& status);
  void ScheduleRedial();
  void OnTimer();
  void ConnectTarget(uint32_t stream_id, const ServiceConfig& service);
  // An Open of kind PAIR or PRIVATE: handed to the agent's tunnel for the service, or refused.
  void ServeTunnel(Stream& stream, const link::Open& open);
  void ConnectResolved(uint32_t stream_id, const sockaddr_storage& address,
                       const std::string& proxy_protocol,
                       std::function<void(const absl::Status&)> refuse);

  Agent& agent_;
  const int index_;
  const HostPort relay_;
  State state_ = State::kIdle;
  std::unique_ptr<TlsSession> tls_;
  std::unique_ptr<Link> link_;
  uv_timer_t* timer_;  // redial backoff, then ping/idle while up
  ReconnectBackoff backoff_;
  uint64_t last_receive_ms_ = 0;
  uint64_t dial_generation_ = 0;       // stale dial/resolve callbacks compare against this
  std::shared_ptr<RelayLink*> alive_;  // async callbacks hold a weak_ptr to this token
  AgentUdpFlows udp_flows_;            // flows of udp services (agent/udp_flow.h)
};

}  // namespace rdv

#endif  // RDV_AGENT_RELAY_LINK_H_
