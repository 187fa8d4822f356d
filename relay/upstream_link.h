// The link from this relay to its upstream relay (docs/protocol.md "Cascaded relays"): the
// upstream sees this relay as one more agent. It lives on worker 0's loop and is redialed
// forever.
//
// 1. dial, TLS verifying the upstream (CA file or pinned fingerprint), authenticate as an agent
//    (Hello.agent_id = our relay_id, hops [relay_id]), ping, redial with backoff: LinkClient
//    (common/link_client.h)
// 2. register upstream every tunnel service (PRIVATE, PAIR) our own agents hold
//    (Directory::TunnelServices): the whole set after each (re)connect, then, whenever the set
//    changes (Relay::NoteTunnelServicesChanged), Register for new entries and Unregister for
//    gone ones
// 3. tunnels both ways: the bridge forwards tunnel Opens it cannot route here through
//    OpenTunnelStream; tunnel Opens from the upstream go to RouteTunnel as coming from no
//    credential, so they are routed here only and never sent back upstream (RouteTunnel refuses
//    anything that is not a tunnel)
#ifndef RDV_RELAY_UPSTREAM_LINK_H_
#define RDV_RELAY_UPSTREAM_LINK_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/link_client.h"
#include "common/tls.h"
#include "relay/directory.h"
#include "relay/relay_config.h"

namespace rdv {

class RelayWorker;

class UpstreamLink : public LinkClient, public StreamCarrier {
 public:
  // On `worker`'s loop (worker 0), before it runs or from it. Fails when the CA file does not
  // load.
  static absl::StatusOr<std::unique_ptr<UpstreamLink>> Create(RelayWorker& worker,
                                                              const UpstreamConfig& upstream);
  ~UpstreamLink() override;

  // On the loop: GoAway when up, close, no redial.
  void Stop();
  // On the loop, after the upstream's GoAway once the relay dialed a replacement: no longer the
  // relay's upstream, not redialed; its open tunnel streams go on, and it closes when none is
  // left (or when the upstream closes it).
  void Retire();
  // Thread-safe: authenticated upstream right now.
  bool authenticated() const { return authenticated_.load(std::memory_order_acquire); }
  // Thread-safe: our tunnel services changed; re-sync them upstream on the link's loop
  // (coalesced: one sync serves every change noted before it runs).
  void NoteTunnelServicesChanged();

  // StreamCarrier (the accessors are thread-safe)
  const std::string& credential() const override { return options().credential.name; }
  int worker() const override;
  const std::string& agent() const override { return label_; }
  size_t open_streams() const override { return open_streams_.load(std::memory_order_relaxed); }
  Stream* OpenTunnelStream(link::Open open, StreamHandler& handler) override;

  // LinkHandler
  void OnStreamOpen(Link& link, Stream& stream, const link::Open& open) override;
  void OnStreamRemoved(Link& link) override;

 private:
  UpstreamLink(RelayWorker& worker, SslCtxPtr tls_context, LinkClientOptions options);

  // LinkClient
  void OnLinkReady() override;
  bool OnReadyControl(const link::Control& control) override;
  void OnLinkDown(const absl::Status& status, bool was_ready) override;
  // DESIGN 4 "reconnect elsewhere": the relay dials a replacement (Relay::ReplaceUpstream).
  void OnPeerGoingAway() override;

  // Sends Register / Unregister so that what is registered upstream matches TunnelServices().
  void SyncTunnelServices();
  void HandleRegistered(const link::Registered& registered);
  void HandleTunnelNotice(const link::TunnelNotice& notice);

  RelayWorker& worker_;
  SslCtxPtr tls_context_;
  const std::string label_;  // "upstream <host:port>", for logs (StreamCarrier::agent)
  std::atomic<bool> authenticated_{false};
  std::atomic<bool> sync_posted_{false};
  std::atomic<size_t> open_streams_{0};
  bool retired_ = false;
  // What this link registered upstream (sent, answered or not), by RegistrationKey.
  std::map<std::string, link::ServiceSpec> registered_;
};

}  // namespace rdv

#endif  // RDV_RELAY_UPSTREAM_LINK_H_
