// A `connect:` entry: a local listener whose connections travel through one end-to-end tunnel
// (agent/tunnel.h) to the agent serving a pair or private service.
//
// 1. the tunnel: opened at start on a ready relay link and kept up; when it closes or is
//    refused it is redialed with the agent's reconnect backoff (a relay's refusal is logged once
//    per change of reason, not per retry); without a ready relay link it waits for one;
// 2. each local connection becomes one nested stream: a plain port asks for the serving end's
//    target; a SOCKS5 port (RFC 1928 CONNECT to IPv4, IPv6 or a name, RFC 1929 credentials when
//    `users` is set) names the destination, and its client hears success only once the serving
//    end has connected, or the SOCKS reply code of the serving end's refusal;
// 3. a connection that arrives while the tunnel is down waits for it up to connect_timeout, then
//    is refused (SOCKS) or closed, with a log line.
#ifndef RDV_AGENT_CONNECT_LISTENER_H_
#define RDV_AGENT_CONNECT_LISTENER_H_

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "agent/agent_config.h"
#include "agent/tunnel.h"
#include "common/reconnect_backoff.h"
#include "common/socks5.h"
#include "common/tcp_listener.h"

namespace rdv {

class Agent;
class LocalClient;

// The SOCKS5 reply for a nested stream the serving end refused with `error`.
socks5::Reply SocksReplyFor(link::OpenError error);

class ConnectListener : public Tunnel::Owner {
 public:
  // Binds the listener (errors name the address).
  static absl::StatusOr<std::unique_ptr<ConnectListener>> Create(Agent& agent,
                                                                 const ConnectConfig& config);
  ~ConnectListener() override;
  ConnectListener(const ConnectListener&) = delete;
  ConnectListener& operator=(const ConnectListener&) = delete;

  // Opens the tunnel.
  void Start();
  // Closes the listener, every local connection and the tunnel.
  void Shutdown();
  // Closes the listener only: local connections and their tunnel go on, but a tunnel that drops
  // is not dialled again.
  void Drain();
  // Local connections open (or waiting for the tunnel).
  size_t client_count() const { return clients_.size(); }
  // A relay link came up: a tunnel waiting for one is opened now.
  void OnRelayLinkReady();
  // The relay of the link with Link::serial() `link_serial` sent GoAway: a tunnel set up through
  // that relay is retired (its open streams finish, then it closes) and a new one is opened on
  // the next link that comes up.
  void OnRelayGoingAway(uint64_t link_serial);

  const ConnectConfig& config() const { return config_; }
  const std::string& address() const { return listener_->address(); }
  // The tunnel kept up (in any state), or nullptr between attempts.
  const Tunnel* tunnel() const { return tunnel_.get(); }
  // Tunnels retired while their open streams finish.
  std::vector<const Tunnel*> retiring_tunnels() const;

  // Tunnel::Owner
  void OnTunnelUp(Tunnel& tunnel) override;
  void OnTunnelDraining(Tunnel& tunnel) override;
  void OnTunnelClosed(Tunnel& tunnel, const absl::Status& status) override;

 private:
  friend class LocalClient;
  ConnectListener(Agent& agent, const ConnectConfig& config);
  void OnAccept(uv_stream_t* server);
  void Dial();
  void ScheduleRedial();
  // The tunnel when it is up and takes new streams, else nullptr.
  Tunnel* usable_tunnel();
  // The client is done: destroy it after the current callbacks.
  void Finish(LocalClient* client);
  std::string Describe() const;  // "pair site-b"

  Agent& agent_;
  const ConnectConfig& config_;
  const TunnelEndpoint endpoint_;
  std::unique_ptr<TcpListener> listener_;
  std::unique_ptr<Tunnel> tunnel_;
  // Tunnels whose peer or relay sent GoAway, retired: their streams finish while tunnel_ takes
  // new ones.
  absl::flat_hash_map<Tunnel*, std::unique_ptr<Tunnel>> draining_;
  absl::flat_hash_map<LocalClient*, std::unique_ptr<LocalClient>> clients_;
  uv_timer_t* redial_timer_;
  ReconnectBackoff backoff_;
  bool waiting_for_link_ = false;
  bool shutting_down_ = false;
  bool draining_accepts_ = false;  // Drain(): no new connections, no new tunnel
  std::string last_refusal_;       // logged once per change
  // From a retirement (OnRelayGoingAway, OnTunnelDraining) until a tunnel is up again: the
  // first refusal meanwhile (e.g. the far end has not registered with the next relay yet) is
  // logged as info.
  bool moving_ = false;
  std::shared_ptr<ConnectListener*> alive_;  // deferred work holds a weak_ptr to this token
};

}  // namespace rdv

#endif  // RDV_AGENT_CONNECT_LISTENER_H_
