// The agent process: keeps `links` links to the relay(s), registers its services on each, and
// for every stream the relay opens connects to the service's private target and splices. It
// serves the far end of tunnels to its pair and private services (agent/tunnel.h), and runs the
// listeners of its `connect:` entries (agent/connect_listener.h), whose tunnels it opens on any
// ready link.
#ifndef RDV_AGENT_AGENT_H_
#define RDV_AGENT_AGENT_H_

#include <uv.h>

#include <functional>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "agent/agent_config.h"
#include "agent/agent_status.h"
#include "agent/smtp_opener.h"
#include "agent/tunnel.h"
#include "common/admin_http.h"
#include "common/stream_splice.h"
#include "common/tls.h"

namespace rdv {

class ConnectListener;
class HealthChecker;
class RelayLink;

class Agent : public Tunnel::Owner {
 public:
  // Binds the connect listeners too (an address in use is an error here).
  static absl::StatusOr<std::unique_ptr<Agent>> Create(AgentConfig config, uv_loop_t* loop);
  ~Agent() override;

  void Start();
  // Sends GoAway on every link, closes everything; the loop then ends (once `on_stopped`, if a
  // Drain gave one, has let go of what it keeps open).
  void Shutdown();
  // The first SIGTERM: stop taking work and let open streams finish. GoAway on every link (the
  // relay releases our registrations and opens no new streams), on every tunnel this agent
  // serves, and connect listeners stop accepting; health checks stop. Once no stream is open, or
  // when config().shutdown_grace has passed, Shutdown() runs, then `on_stopped`. A grace of 0
  // shuts down at once.
  void Drain(std::function<void()> on_stopped);
  bool draining() const { return drain_timer_ != nullptr; }
  // Streams that keep a drain going: those of services, and those inside tunnels (udp flows,
  // which end only when idle, do not count).
  size_t OpenStreamCount() const;

  const AgentConfig& config() const { return config_; }
  uv_loop_t* loop() const { return loop_; }
  LoopTasks& tasks() { return tasks_; }
  SSL_CTX* tls_context() const { return tls_context_.get(); }
  bool shutting_down() const { return shutting_down_; }

  // Owns a splice until it is done.
  void Adopt(std::unique_ptr<StreamSplice> splice);
  void Finish(StreamSplice& splice);
  // Owns an smtp stream's opener (agent/smtp_opener.h) until it is done.
  void Adopt(std::unique_ptr<SmtpOpener> opener);
  void Finish(SmtpOpener& opener);

  // Sends the health of every service with checks on `link` (after it registered).
  void SendHealth(RelayLink& link);

  // Tunnels: a ready relay link to open one on (in turn), or nullptr when none is up.
  Link* ReadyRelayLink();
  // The relay sent GoAway on `link`: a new link to the same relay address takes its place (behind
  // a load balancer it reaches another replica; DESIGN 4 "reconnect elsewhere") and `link` is
  // retired: its open streams finish, it is not redialed. Nothing while draining or stopping.
  void ReplaceRelayLink(RelayLink& link);
  // A retired link stopped: released (deferred; the caller may be inside it).
  void OnRetiredLinkStopped(RelayLink& link);
  // `link` registered: connect entries waiting for a link open their tunnels.
  void OnRelayLinkReady();
  Tunnel::Context TunnelContext() const;
  // The serving end of a tunnel to `service` (a pair or private service this agent holds).
  void ServeTunnel(Stream& stream, const ServiceConfig& service);
  // A relay's TunnelNotice (e.g. someone asked for our pair with another secret): logged, the
  // same notice at most once a minute (a misconfigured peer retries with backoff).
  void OnTunnelNotice(const link::TunnelNotice& notice);
  // Tunnel::Owner, for the tunnels this agent serves.
  void OnTunnelClosed(Tunnel& tunnel, const absl::Status& status) override;
  // What GET /status on the admin listener reports.
  AgentStatus Status() const;

 private:
  Agent(AgentConfig config, uv_loop_t* loop);
  void OnHealthChange(size_t service, bool healthy, const std::string& detail);
  // While draining: shuts down when no stream is left or the grace is over.
  void CheckDrain();
  void StopDrainTimer();

  AgentConfig config_;
  uv_loop_t* loop_;
  LoopTasks tasks_;
  SslCtxPtr tls_context_;
  std::vector<std::unique_ptr<RelayLink>> links_;
  // Replaced after the relay's GoAway, until their last stream ends (ReplaceRelayLink).
  absl::flat_hash_map<RelayLink*, std::unique_ptr<RelayLink>> retired_links_;
  // One per service of config_.services; null where health_check is off.
  std::vector<std::unique_ptr<HealthChecker>> health_checkers_;
  absl::flat_hash_map<StreamSplice*, std::unique_ptr<StreamSplice>> splices_;
  absl::flat_hash_map<SmtpOpener*, std::unique_ptr<SmtpOpener>> smtp_openers_;
  // One per config_.connects entry.
  std::vector<std::unique_ptr<ConnectListener>> connect_listeners_;
  absl::flat_hash_map<Tunnel*, std::unique_ptr<Tunnel>> serving_tunnels_;
  size_t next_tunnel_link_ = 0;
  absl::flat_hash_map<std::string, uint64_t> notice_logged_ms_;  // by kind, name and detail
  std::unique_ptr<AdminServer> admin_;                           // null unless config_.admin_listen
  bool shutting_down_ = false;
  uv_timer_t* drain_timer_ = nullptr;  // while draining: checks OpenStreamCount() every 100 ms
  uint64_t drain_deadline_ms_ = 0;     // uv_now() when the grace is over
  std::function<void()> on_stopped_;   // from Drain(): run at the end of Shutdown()
};

}  // namespace rdv

#endif  // RDV_AGENT_AGENT_H_
