// The relay's end of one agent link.
//
// 1. TLS handshake (ALPN rdv/1) within the handshake timeout.
// 2. Hello -> Challenge(nonce) -> Proof(HMAC over nonce and the TLS exporter) -> AuthResult.
//    The secret never crosses; the exporter binds the proof to this TLS session.
// 3. Register -> one Registered per service (grant check, claim in the directory, tcp port);
//    Unregister withdraws some of them again.
// 4. Streams: entrypoints open them through OpenStream(); streams the agent opens are tunnel
//    streams, routed and bridged by RouteTunnel (relay/tunnel_bridge.h); pings keep the link
//    alive; silence past the idle timeout closes it.
#ifndef RDV_RELAY_AGENT_LINK_H_
#define RDV_RELAY_AGENT_LINK_H_

#include <uv.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "common/link.h"
#include "common/tls.h"
#include "relay/directory.h"
#include "relay/relay_config.h"
#include "relay/relay_worker.h"

namespace rdv {

class AgentLink : public StreamCarrier,
                  public TlsSession::Handler,
                  public LinkTransport,
                  public LinkHandler {
 public:
  AgentLink(RelayWorker& worker, std::unique_ptr<TlsSession> tls, uint64_t id);
  ~AgentLink() override;

  // `accepted_ms` (the loop's clock when the connection was accepted) starts the handshake
  // timeout.
  void Start(uint64_t accepted_ms);
  // Opens a stream to the agent for a client; nullptr if the link cannot take one now.
  Stream* OpenStream(const link::ServiceSpec& service, const TcpConnection& client,
                     const std::string& entrypoint, StreamHandler& handler);
  // Same for a client known only by address (a udp session): "ip:port" strings.
  Stream* OpenStream(const link::ServiceSpec& service, const std::string& client_address,
                     const std::string& local_address, const std::string& entrypoint,
                     StreamHandler& handler);
  // The agent offered the "smtp-envelope" feature: an smtp stream may carry Open.smtp, and the
  // agent then opens the mail conversation itself (docs/protocol.md "SMTP envelope").
  bool takes_smtp_envelope() const { return takes_smtp_envelope_; }
  // An smtp stream carrying `envelope` (only when takes_smtp_envelope()).
  Stream* OpenSmtpStream(const link::ServiceSpec& service, const TcpConnection& client,
                         link::SmtpEnvelope envelope, StreamHandler& handler);
  // Releases the link's registrations (no new stream is routed here) and sends GoAway; open
  // streams go on.
  void GoAway(std::string_view reason);
  void Close(const absl::Status& status);
  uint64_t id() const { return id_; }
  // The agent proved its credential (and has not been closed since).
  bool authenticated() const { return state_ == State::kReady; }

  // StreamCarrier
  const std::string& credential() const override { return credential_name_; }
  int worker() const override { return worker_.index(); }
  const std::string& agent() const override { return agent_id_; }
  size_t open_streams() const override { return open_streams_.load(std::memory_order_relaxed); }
  bool takes_tunnel_data() const override { return takes_tunnel_data_; }
  Stream* OpenTunnelStream(link::Open open, StreamHandler& handler) override;
  void SendTunnelNotice(const link::TunnelNotice& notice) override;

  // TlsSession::Handler
  void OnTlsReady() override;
  void OnTlsData(std::string_view plaintext) override;
  void OnTlsClosed(const absl::Status& status) override;
  void OnTlsDrained() override { link_.OnTransportDrained(); }
  // LinkTransport
  void Send(std::string_view bytes) override { tls_->Send(bytes); }
  size_t QueuedBytes() const override { return tls_->QueuedBytes(); }
  // LinkHandler
  void OnControl(Link& link, const link::Control& control) override;
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override;
  void OnPong(Link& link, uint64_t sent_ms) override;
  void OnStreamRemoved(Link& link) override { open_streams_ = link.stream_count(); }
  void OnLinkFailed(Link& link, const absl::Status& status) override;

 private:
  enum class State { kHandshake, kAwaitHello, kAwaitProof, kReady, kClosed };
  void HandleHello(const link::Hello& hello);
  Stream* OpenPrepared(link::Open open, StreamHandler& handler);
  void HandleProof(const link::Proof& proof);
  void HandleRegister(const link::Register& request);
  link::Registered RegisterOne(const link::ServiceSpec& spec);
  void HandleUnregister(const link::Unregister& request);
  // Forgets every registration of this link (GoAway, close).
  void ReleaseRegistrations();
  void Refuse(std::string_view counter_reason, std::string_view wire_reason,
              std::string_view log_detail);
  void OnTimer();

  RelayWorker& worker_;
  std::unique_ptr<TlsSession> tls_;
  Link link_;
  const uint64_t id_;
  std::string peer_;
  State state_ = State::kHandshake;
  std::string agent_id_;
  std::string credential_name_;
  // The relay's credentials when the agent said Hello; credential_ points into them.
  std::shared_ptr<const std::vector<CredentialConfig>> credentials_;
  const CredentialConfig* credential_ = nullptr;
  std::string nonce_;
  uv_timer_t* timer_;
  uint64_t last_receive_ms_ = 0;
  uint64_t rtt_ms_ = 0;
  bool takes_smtp_envelope_ = false;
  // The agent offered the "tunnel-data" feature (docs/protocol.md "Tunnel data path").
  bool takes_tunnel_data_ = false;
  bool counted_active_ = false;
  bool counted_for_credential_ = false;
  int registered_ = 0;
  int tunnel_registrations_ = 0;         // PRIVATE and PAIR ones among them
  std::atomic<size_t> open_streams_{0};  // link_.stream_count(), read by other workers
};

}  // namespace rdv

#endif  // RDV_RELAY_AGENT_LINK_H_
