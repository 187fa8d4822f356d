// The relay process: shared state (config, link certificate, directory, tcp service ports) and
// the worker loops that do the work (relay/relay_worker.h).
//
// Agent listener and HTTP entrypoint sockets are bound on every worker (SO_REUSEPORT); the admin
// listener and the fixed tcp and udp ports live on worker 0; a tcp or udp port an agent requests is
// bound on the worker of the link that requested it. Routing goes through the Directory interface
// only.
#ifndef RDV_RELAY_RELAY_H_
#define RDV_RELAY_RELAY_H_

#include <uv.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/tls.h"
#include "relay/directory.h"
#include "relay/relay_config.h"
#include "relay/relay_worker.h"
#include "relay/tunnel_data_path.h"
#include "relay/udp_service_port.h"

namespace rdv {

class UpstreamLink;

class Relay {
 public:
  // `main_loop` runs worker 0 on the calling thread.
  static absl::StatusOr<std::unique_ptr<Relay>> Create(RelayConfig config, uv_loop_t* main_loop);
  ~Relay();

  // Binds every listener (logging "listening <role> <addr>") and starts workers 1..n-1.
  absl::Status Start();
  // From worker 0's loop: stop every worker. The caller's uv_run then returns; call Join().
  void Shutdown();
  // From worker 0's loop, the first SIGTERM: every worker closes its listeners (admin excepted)
  // and sends GoAway on its agent links, then stops once no client session in progress is left
  // or config().shutdown_grace has passed (RelayWorker::RequestDrain). When every worker has
  // stopped, the upstream link stops and `on_stopped` runs on this loop. A grace of 0 is
  // Shutdown() at once. Shutdown() during a drain stops what is left at once.
  void Drain(std::function<void()> on_stopped);
  // Thread-safe, from each worker's Stop().
  void WorkerStopped();
  int workers_stopped() const { return workers_stopped_.load(); }
  void Join();

  // The configuration the relay started with. Its credentials are those at start; links
  // authenticate against credentials(), which a reload replaces.
  const RelayConfig& config() const { return config_; }
  // Thread-safe: the credentials in force. A link keeps the set it authenticated with (its
  // credential pointer points into it) for as long as it lives.
  std::shared_ptr<const std::vector<CredentialConfig>> credentials() const;
  // From worker 0's loop, on SIGHUP: reads `path` again and validates all of it. Credentials
  // take effect (new links authenticate against them; the links of a removed credential are
  // closed, those of a changed one get GoAway, so their agents reconnect at once under the new
  // terms while open streams finish); other changed sections are named in a warning and wait
  // for a restart. An invalid file changes nothing. Counted in rdv_config_reloads_total{result}.
  // `path`'s sections at start are taken by the first call to set_config_path().
  void Reload();
  // The file the config came from (for Reload); remembers its sections as running.
  void set_config_path(std::string path);
  Directory& directory() { return *directory_; }
  SSL_CTX* link_tls_context() const { return identity_.ctx.get(); }
  const std::string& fingerprint() const { return identity_.fingerprint_hex; }
  int worker_count() const { return static_cast<int>(workers_.size()); }
  // The port the first listener of `role` ("agent", "http", ...) bound, 0 if none; after Start.
  uint16_t listening_port(const std::string& role) const {
    auto it = entry_ports_.find(role);
    return it == entry_ports_.end() ? 0 : it->second;
  }
  RelayWorker& worker(int index) { return *workers_[static_cast<size_t>(index)]; }

  // Binds (once, on `caller`'s loop) the relay port of tcp service `service` and returns it.
  // PermissionDenied when the credential may not have it.
  absl::StatusOr<uint16_t> EnsureTcpPort(const std::string& service, uint16_t requested,
                                         const CredentialConfig& credential, RelayWorker& caller);
  // Same for the UDP port of udp service `service` (relay/udp_service_port.h).
  absl::StatusOr<uint16_t> EnsureUdpPort(const std::string& service, uint16_t requested,
                                         const CredentialConfig& credential, RelayWorker& caller);
  std::vector<std::string> RoutesFor(const link::ServiceSpec& service, const std::string& alias);
  // Authenticated links per credential, for max_links. TryAddLink fails at the limit.
  bool TryAddLink(const std::string& credential, uint32_t max_links);
  void RemoveLink(const std::string& credential);

  // Cascaded relays (docs/protocol.md "Cascaded relays"). The link to the upstream relay when
  // one is configured and authenticated, else null; usable only from its worker's loop
  // (upstream()->worker(), worker 0), where it may have gone down meanwhile (OpenTunnelStream
  // then returns null). Thread-safe to call.
  StreamCarrier* upstream();
  // Thread-safe: a PRIVATE or PAIR registration was made or released here; the upstream link
  // re-syncs what it registered upstream with Directory::TunnelServices().
  void NoteTunnelServicesChanged();
  // From worker 0's loop: the upstream relay sent GoAway on `link`, the current upstream link.
  // A new link to the same address takes its place at once (behind a load balancer it reaches
  // another replica) and registers our tunnel services there; `link` is retired: its open
  // tunnel streams finish on it, then it closes. Nothing while stopping or draining.
  void ReplaceUpstream(UpstreamLink& link);

  // Tunnel data path tokens offered and not yet used or expired (relay/tunnel_data_path.h).
  DataPathRegistry& data_paths() { return data_paths_; }

 private:
  Relay(RelayConfig config);
  // Stops the upstream link and the retired ones; no replacement from now on.
  void StopUpstreams();
  absl::Status ListenEverywhere(const std::vector<HostPort>& addresses, const std::string& role);
  absl::Status BindTcpService(const std::string& service, uint16_t port, RelayWorker& worker)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status BindUdpService(const std::string& service, uint16_t port, RelayWorker& worker)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RelayConfig config_;
  std::string config_path_;                              // set_config_path
  std::map<std::string, std::string> running_sections_;  // but credentials; see Reload
  mutable absl::Mutex credentials_mu_;
  std::shared_ptr<const std::vector<CredentialConfig>> credentials_
      ABSL_GUARDED_BY(credentials_mu_);
  ServerTlsIdentity identity_;
  std::unique_ptr<Directory> directory_;
  // Before the workers: their offers forget their tokens here when they are destroyed.
  DataPathRegistry data_paths_;
  std::vector<std::unique_ptr<RelayWorker>> workers_;
  // On worker 0's loop; set by Create() before any worker thread runs, destroyed after they
  // stopped, so reading the pointer from any thread is safe.
  std::unique_ptr<UpstreamLink> upstream_;
  // upstream_.get(), for other threads: ReplaceUpstream swaps upstream_ on worker 0.
  std::atomic<UpstreamLink*> current_upstream_{nullptr};
  // Replaced upstream links (ReplaceUpstream), on worker 0's loop. Kept until the relay is
  // destroyed, closed once idle: another worker may have just read the pointer (one object per
  // upstream GoAway).
  std::vector<std::unique_ptr<UpstreamLink>> retired_upstreams_;
  bool stopping_ = false;  // Shutdown or Drain began: no replacement
  // The first port of each entrypoint ("http", "tls", ...), for the routes agents are told.
  // Written by Start() before any worker thread runs.
  std::map<std::string, uint16_t> entry_ports_;
  // Drain(): fired on worker 0's loop when the last worker stopped.
  std::atomic<uv_async_t*> drained_{nullptr};
  std::function<void()> on_stopped_;
  std::atomic<int> workers_stopped_{0};

  absl::Mutex mu_;
  std::map<std::string, uint16_t> tcp_ports_ ABSL_GUARDED_BY(mu_);  // service -> relay port
  std::set<uint16_t> ports_in_use_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, uint32_t> links_per_credential_ ABSL_GUARDED_BY(mu_);
  // udp service -> its port; never removed while the relay runs (sessions point at them).
  std::map<std::string, std::unique_ptr<UdpServicePort>> udp_ports_ ABSL_GUARDED_BY(mu_);
  std::set<uint16_t> udp_ports_in_use_ ABSL_GUARDED_BY(mu_);
};

}  // namespace rdv

#endif  // RDV_RELAY_RELAY_H_
