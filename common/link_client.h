// The dialling end of a link (docs/protocol.md "Handshake"), redialed forever: an agent's link
// to a relay (agent/relay_link.h) and a relay's link to its upstream relay (relay/upstream_link.h)
// are the same client and differ only in what they register and which streams they serve.
//
// 1. resolve and dial the relay; TLS 1.3 verifying it (the context's CA, or the pinned
//    fingerprint), ALPN rdv/1
// 2. Hello{id, credential, hops=[id]} -> Challenge -> Proof (HMAC over the nonce and the TLS
//    exporter, common/auth.h) -> AuthResult
// 3. ready: the subclass registers (OnLinkReady) and handles the relay's later control messages
//    and streams; a ping every ping_interval; silence past idle_timeout (counted from the TCP
//    connect, so it also bounds the handshake) drops the link
// 4. on any drop: OnLinkDown, then back off (jittered, exponential from reconnect_initial to
//    reconnect_max) and redial
#ifndef RDV_COMMON_LINK_CLIENT_H_
#define RDV_COMMON_LINK_CLIENT_H_

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "common/link.h"
#include "common/link_client_config.h"
#include "common/loop_tasks.h"
#include "common/reconnect_backoff.h"
#include "common/tls.h"
#include "common/yaml_config.h"

namespace rdv {

struct LinkClientOptions {
  std::string log_name;  // names the link in log lines: "<log_name> up <relay>"
  HostPort relay;
  SSL_CTX* tls_context = nullptr;  // CreateLinkClientContext; outlives the client
  std::string server_name;         // SNI, and the name the CA check verifies
  std::string fingerprint;         // pinned relay certificate; "" = verify by the context's CA
  std::string id;                  // Hello.agent_id, and the first hop
  LinkCredentialConfig credential;
  std::vector<std::string> features;  // Hello.features
  LinkOptions link;                   // is_relay_side is always false here
  uint64_t ping_interval_ms = 10000;
  uint64_t idle_timeout_ms = 30000;
  ReconnectConfig reconnect;
};

class LinkClient : public TlsSession::Handler, public LinkTransport, public LinkHandler {
 public:
  LinkClient(uv_loop_t* loop, LoopTasks& tasks, LinkClientOptions options);
  ~LinkClient() override;

  void Start() { Dial(); }
  // GoAway when up, flush, close; never redials afterwards.
  void Shutdown(std::string_view reason);
  // GoAway when up (the relay opens no new streams here and releases the link's registrations);
  // open streams go on and the link stays up, pinged, but is not redialed once it drops. A link
  // that is not up stops now.
  void Drain(std::string_view reason);
  // After the relay's GoAway: like Drain, but sends no GoAway of its own (the relay already
  // released the link's registrations). The owner dials a replacement (OnPeerGoingAway).
  void Retire();
  bool ready() const { return state_ == State::kReady; }
  // The link when it is up and takes new streams (the relay has not sent GoAway), else nullptr.
  Link* ready_link();
  // "up" (authenticated), "connecting", "down" (waiting to redial) or "stopped".
  std::string_view state_name() const;
  const LinkClientOptions& options() const { return options_; }
  const HostPort& relay() const { return options_.relay; }
  // The relay's Challenge.relay_id on the current (or last) link.
  const std::string& relay_id() const { return relay_id_; }

  // TlsSession::Handler
  void OnTlsReady() final;
  void OnTlsData(std::string_view plaintext) final;
  void OnTlsClosed(const absl::Status& status) final;
  void OnTlsDrained() final;
  // LinkTransport
  void Send(std::string_view bytes) final { tls_->Send(bytes); }
  size_t QueuedBytes() const final { return tls_->QueuedBytes(); }
  // LinkHandler (OnStreamOpen is the subclass's)
  void OnControl(Link& link, const link::Control& control) final;
  void OnLinkFailed(Link& link, const absl::Status& status) final;

 protected:
  enum class State { kIdle, kDialing, kHandshake, kAuth, kReady, kStopped };

  // Authenticated (AuthResult ok): register now.
  virtual void OnLinkReady() = 0;
  // A control message after authentication (GoAway is logged here and not passed on). Returns
  // false when the message is not expected: the link then fails, counted as unexpected_control.
  virtual bool OnReadyControl(const link::Control& control) = 0;
  // The link went down; it is torn down after this returns and a redial is scheduled (unless
  // stopped). `was_ready`: it had authenticated.
  virtual void OnLinkDown(const absl::Status& status, bool was_ready) {}
  // The relay sent GoAway: it opens no new streams here and has released the registrations;
  // open streams go on. DESIGN 4: reconnect elsewhere. The default keeps the link until it drops
  // and then redials as after any drop.
  virtual void OnPeerGoingAway() {}
  // After Retire(): shuts the link down once no stream is left on it, logging "<log_name>:
  // retired link has no stream left; closing it", then runs OnRetiredLinkStopped(). Deferred (it
  // may be called from inside the link); owners call it on Retire() and from OnStreamRemoved.
  void StopIfRetiredAndIdle();
  virtual void OnRetiredLinkStopped() {}
  // For OnStreamOpen: whether streams may be served now. A relay that opens a stream before
  // authenticating us breaks the protocol: the link fails (counted) and this returns false.
  bool AcceptingStreams();

  uv_loop_t* loop() const { return loop_; }
  LoopTasks& tasks() { return tasks_; }

  State state_ = State::kIdle;
  std::unique_ptr<TlsSession> tls_;
  std::unique_ptr<Link> link_;

 private:
  void Dial();
  void Connected(std::unique_ptr<TcpConnection> tcp);
  void Down(const absl::Status& status);
  void ScheduleRedial();
  void OnTimer();

  uv_loop_t* const loop_;
  LoopTasks& tasks_;
  const LinkClientOptions options_;
  std::string relay_id_;
  uv_timer_t* timer_;  // redial backoff, then ping/idle while connected
  ReconnectBackoff backoff_;
  uint64_t last_receive_ms_ = 0;
  uint64_t dial_generation_ = 0;        // stale dial/resolve callbacks compare against this
  bool draining_ = false;               // Drain(), Retire(): no redial
  std::shared_ptr<LinkClient*> alive_;  // async callbacks hold a weak_ptr to this token
};

}  // namespace rdv

#endif  // RDV_COMMON_LINK_CLIENT_H_
