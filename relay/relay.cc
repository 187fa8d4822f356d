#include "relay/relay.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/strings/str_join.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/upstream_link.h"
#include "spdlog/spdlog.h"

namespace rdv {

namespace {

// Declares the relay's unlabelled metrics so /metrics shows them at 0 from the start (labelled
// series appear with their first event).
void DeclareMetrics() {
  GaugeOf("rdv_links_active", "Authenticated agent links");
  GaugeOf("rdv_services_registered", "Service registrations held by live links");
  GaugeOf("rdv_streams_active", "Streams open on this process's links");
  CounterOf("rdv_links_accepted_total", "Agent links authenticated");
  CounterOf("rdv_links_idle_closed_total", "Agent links closed after the idle timeout");
  CounterOf("rdv_http_requests_total", "HTTP requests received");
  CounterOf("rdv_streams_opened_total", "Streams opened to agents");
  CounterOf("rdv_streams_refused_total", "Streams refused");
  CounterOf("rdv_tcp_connections_total", "Connections accepted on tcp service ports");
  CounterOf("rdv_tcp_no_agent_total", "tcp clients closed because no agent serves the port");
  CounterOf("rdv_upstream_errors_total", "Malformed responses from targets");
  CounterOf("rdv_worker_handoffs_total", "Client connections moved to another worker loop");
  CounterOf("rdv_frames_for_closed_streams_total",
            "Frames that arrived for a stream already closed on this side");
  GaugeOf("rdv_udp_sessions_active", "Open udp sessions (client addresses)");
  CounterOf("rdv_udp_datagrams_received_total", "Datagrams received on udp service ports");
  CounterOf("rdv_udp_datagrams_sent_total", "Datagrams sent to clients of udp service ports");
  CounterOf("rdv_udp_sessions_opened_total", "udp sessions opened");
  CounterOf("rdv_udp_sessions_expired_total", "udp sessions closed after the idle timeout");
  CounterOf("rdv_tunnels_bridged_total", "Tunnel streams joined to their far end");
  GaugeOf("rdv_tunnels_active", "Bridged tunnel streams open now");
  CounterOf("rdv_tunnels_abandoned_total",
            "Tunnel streams whose opener went away before the far end answered");
}

// Whether `credential` grants the registration `service` (a directory claim; a tcp or udp
// claim carries its relay port).
bool Grants(const CredentialConfig& credential, const link::ServiceSpec& service) {
  GrantKind kind;
  switch (service.kind()) {
    case link::HTTP:
      kind = GrantKind::kHttp;
      break;
    case link::TLS:
      kind = GrantKind::kTls;
      break;
    case link::SMTP:
      kind = GrantKind::kSmtp;
      break;
    case link::TCP:
      kind = GrantKind::kTcp;
      break;
    case link::UDP:
      kind = GrantKind::kUdp;
      break;
    case link::PRIVATE:
      kind = GrantKind::kPrivate;
      break;
    case link::PAIR:
      kind = GrantKind::kPair;
      break;
    default:
      return false;
  }
  return credential.Grants(kind, service.name(), static_cast<uint16_t>(service.port()));
}

}  // namespace

Relay::Relay(RelayConfig config)
    : config_(std::move(config)),
      credentials_(std::make_shared<const std::vector<CredentialConfig>>(config_.credentials)) {
  DeclareMetrics();
}

std::shared_ptr<const std::vector<CredentialConfig>> Relay::credentials() const {
  absl::MutexLock lock(&credentials_mu_);
  return credentials_;
}

void Relay::set_config_path(std::string path) {
  config_path_ = std::move(path);
  absl::StatusOr<std::map<std::string, std::string>> sections = LoadConfigSections(config_path_);
  if (sections.ok()) {
    running_sections_ = *std::move(sections);
    running_sections_.erase("credentials");
  }
}

void Relay::Reload() {
  auto reloads = [](std::string_view result) -> Counter& {
    return CounterOf("rdv_config_reloads_total", "Configuration reloads (SIGHUP) by result",
                     StrCat("result=\"", result, "\""));
  };
  if (drained_.load() != nullptr) {
    spdlog::warn("reload: ignored while draining");
    return;
  }
  absl::StatusOr<RelayConfig> fresh = LoadRelayConfig(config_path_);
  absl::StatusOr<std::map<std::string, std::string>> sections =
      fresh.ok() ? LoadConfigSections(config_path_) : fresh.status();
  if (!sections.ok()) {
    reloads("error").Inc();
    spdlog::error("reload: {}; the running configuration stays", sections.status().message());
    return;
  }
  sections->erase("credentials");
  std::vector<std::string> pending;  // changed sections that wait for a restart
  for (const auto& [key, text] : *sections) {
    auto it = running_sections_.find(key);
    if (it == running_sections_.end() || it->second != text) pending.push_back(key);
  }
  for (const auto& [key, text] : running_sections_) {
    if (!sections->contains(key)) pending.push_back(key);
  }

  auto next = std::make_shared<const std::vector<CredentialConfig>>(std::move(fresh->credentials));
  std::shared_ptr<const std::vector<CredentialConfig>> previous;
  {
    absl::MutexLock lock(&credentials_mu_);
    previous = std::exchange(credentials_, next);
  }
  CredentialChanges changes;
  for (const CredentialConfig& old : *previous) {
    const CredentialConfig* now = FindCredential(*next, old.name);
    if (now == nullptr) {
      changes.removed.insert(old.name);
    } else if (!SameCredential(old, *now)) {
      changes.changed.insert(old.name);
    }
  }
  size_t added = 0;
  for (const CredentialConfig& now : *next) {
    if (FindCredential(*previous, now.name) == nullptr) ++added;
  }
  // Names whose credential no longer grants them are free again (for another credential).
  size_t forgotten = directory_->ForgetClaims(
      [&next](const std::string& credential, const link::ServiceSpec& service) {
        const CredentialConfig* now = FindCredential(*next, credential);
        return credential.empty() || (now != nullptr && Grants(*now, service));
      });
  if (forgotten > 0) NoteTunnelServicesChanged();
  reloads("ok").Inc();
  spdlog::info(
      "reload: {}: credentials: {} added, {} removed, {} changed; {} claimed names released",
      config_path_, added, changes.removed.size(), changes.changed.size(), forgotten);
  if (!pending.empty()) {
    spdlog::warn("reload: changes to {} take effect at the next restart",
                 absl::StrJoin(pending, ", "));
  }
  if (changes.removed.empty() && changes.changed.empty()) return;
  for (auto& worker : workers_) {
    RelayWorker* target = worker.get();
    target->Post([target, changes] { target->ApplyCredentialChanges(changes); });
  }
}

Relay::~Relay() {
  current_upstream_.store(nullptr);
  upstream_.reset();  // before worker 0, whose loop tasks it uses
  retired_upstreams_.clear();
  workers_.clear();
  absl::MutexLock lock(&mu_);
  udp_ports_.clear();  // after the workers: their sessions point at the ports
}

absl::StatusOr<std::unique_ptr<Relay>> Relay::Create(RelayConfig config, uv_loop_t* main_loop) {
  std::unique_ptr<Relay> relay(new Relay(std::move(config)));
  absl::StatusOr<ServerTlsIdentity> identity = CreateLinkServerContext(
      relay->config_.agent_listener.cert_file, relay->config_.agent_listener.key_file,
      relay->config_.state_dir, relay->config_.relay_id);
  if (!identity.ok()) return identity.status();
  relay->identity_ = std::move(*identity);
  relay->directory_ = std::make_unique<InMemoryDirectory>(
      relay->config_.http ? relay->config_.http->zone : std::string());
  int workers = static_cast<int>(relay->config_.workers);
  if (workers == 0) workers = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  for (int i = 0; i < workers; ++i) {
    relay->workers_.push_back(
        std::make_unique<RelayWorker>(*relay, i, i == 0 ? main_loop : nullptr));
  }
  if (relay->config_.upstream) {
    absl::StatusOr<std::unique_ptr<UpstreamLink>> upstream =
        UpstreamLink::Create(*relay->workers_[0], *relay->config_.upstream);
    if (!upstream.ok()) return upstream.status();
    relay->upstream_ = *std::move(upstream);
    relay->current_upstream_.store(relay->upstream_.get(), std::memory_order_release);
  }
  return relay;
}

absl::Status Relay::ListenEverywhere(const std::vector<HostPort>& addresses,
                                     const std::string& role) {
  static const std::map<std::string, Entrypoint> kEntrypoints = {{"http", Entrypoint::kHttp},
                                                                 {"tls", Entrypoint::kTls},
                                                                 {"smtp", Entrypoint::kSmtp},
                                                                 {"proxy", Entrypoint::kProxy}};
  uint16_t first_port = 0;
  for (const HostPort& address : addresses) {
    // Port 0 on several addresses: the first picks, the rest (and the other workers) follow.
    uint16_t port = address.port == 0 ? first_port : address.port;
    if (port != 0) {
      if (absl::Status free = CheckAddressFree(address.host, port); !free.ok()) return free;
    }
    for (auto& worker : workers_) {
      RelayWorker* w = worker.get();
      TcpListener::AcceptCallback on_accept;
      if (role == "agent") {
        on_accept = [w](uv_stream_t* server) { w->AcceptAgent(server); };
      } else {
        Entrypoint entrypoint = kEntrypoints.at(role);
        on_accept = [w, entrypoint](uv_stream_t* server) {
          w->AcceptEntrypoint(server, entrypoint);
        };
      }
      absl::StatusOr<TcpListener*> listener =
          w->Listen(address.host, port, std::move(on_accept), /*reuse_port=*/true);
      if (!listener.ok()) return listener.status();
      if (port == 0) port = (*listener)->port();
      if (first_port == 0) first_port = port;
      if (w->index() == 0) spdlog::info("listening {} {}", role, (*listener)->address());
    }
    if (uint16_t& first = entry_ports_[role]; first == 0) first = port;
  }
  return absl::OkStatus();
}

absl::Status Relay::Start() {
  if (identity_.generated) {
    spdlog::info("generated a new agent-listener certificate in {}", config_.state_dir);
  }
  spdlog::info("fingerprint sha256:{}", identity_.fingerprint_hex);
  spdlog::info("{} worker loop(s)", workers_.size());
  if (absl::Status s = ListenEverywhere(config_.agent_listener.listen, "agent"); !s.ok()) return s;
  if (config_.http) {
    if (absl::Status s = ListenEverywhere(config_.http->listen, "http"); !s.ok()) return s;
  }
  if (config_.tls) {
    if (absl::Status s = ListenEverywhere(config_.tls->listen, "tls"); !s.ok()) return s;
  }
  if (config_.smtp) {
    if (absl::Status s = ListenEverywhere(config_.smtp->listen, "smtp"); !s.ok()) return s;
  }
  if (config_.proxy) {
    if (absl::Status s = ListenEverywhere(config_.proxy->listen, "proxy"); !s.ok()) return s;
  }
  RelayWorker& main = *workers_[0];
  uint16_t admin_port = 0;
  for (const HostPort& address : config_.admin.listen) {
    absl::StatusOr<TcpListener*> listener = main.Listen(
        address.host, address.port == 0 ? admin_port : address.port,
        [&main](uv_stream_t* server) { main.AcceptAdmin(server); }, /*reuse_port=*/false);
    if (!listener.ok()) return listener.status();
    main.KeepWhileDraining(*listener);
    if (admin_port == 0) admin_port = (*listener)->port();
    spdlog::info("listening admin {}", (*listener)->address());
  }
  // Fixed tcp mappings listen from the start.
  {
    absl::MutexLock lock(&mu_);
    for (const TcpPortMapping& mapping : config_.tcp.ports) {
      if (absl::Status s = BindTcpService(mapping.service, mapping.port, main); !s.ok()) return s;
    }
    for (const UdpPortMapping& mapping : config_.udp.ports) {
      if (absl::Status s = BindUdpService(mapping.service, mapping.port, main); !s.ok()) return s;
    }
  }
  for (size_t i = 1; i < workers_.size(); ++i) workers_[i]->StartThread();
  if (upstream_) {
    spdlog::info("upstream relay {} (credential {})", FormatHostPort(config_.upstream->relay),
                 config_.upstream->credential.name);
    upstream_->Start();
  }
  return absl::OkStatus();
}

void Relay::Drain(std::function<void()> on_stopped) {
  if (config_.shutdown_grace <= absl::ZeroDuration()) {
    Shutdown();
    on_stopped();
    return;
  }
  int64_t grace_ms = absl::ToInt64Milliseconds(config_.shutdown_grace);
  spdlog::info(
      "draining: listeners closed, GoAway to agents; stopping when client sessions end, or in {} "
      "ms (shutdown_grace_ms); a second signal stops now",
      grace_ms);
  on_stopped_ = std::move(on_stopped);
  stopping_ = true;  // the upstream link stays up for what drains, but is not replaced
  auto* async = new uv_async_t;
  uv_async_init(workers_[0]->loop(), async, [](uv_async_t* handle) {
    auto* relay = static_cast<Relay*>(handle->data);
    relay->drained_ = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(handle),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
    spdlog::info("drained: every worker stopped");
    relay->StopUpstreams();
    if (relay->on_stopped_) std::exchange(relay->on_stopped_, nullptr)();
  });
  async->data = this;
  drained_ = async;
  uint64_t deadline_ms = uv_hrtime() / 1000000 + static_cast<uint64_t>(grace_ms);
  // Two steps: every worker closes its listeners, and only then do agents hear GoAway, so that
  // an agent dialing again at once (through a balancer, say) cannot land on a listener of this
  // relay that another worker has not closed yet.
  auto open_listeners = std::make_shared<std::atomic<size_t>>(workers_.size());
  auto listeners_closed = [this, open_listeners, deadline_ms] {
    if (open_listeners->fetch_sub(1) != 1) return;
    for (auto& worker : workers_) worker->RequestDrain(deadline_ms);
  };
  for (auto& worker : workers_) {
    if (!worker->RequestCloseListeners(listeners_closed)) listeners_closed();  // stopping already
  }
  // Workers that stopped before the drain began (none normally) count too.
  if (workers_stopped_.load() == static_cast<int>(workers_.size())) uv_async_send(async);
}

void Relay::WorkerStopped() {
  if (++workers_stopped_ != static_cast<int>(workers_.size())) return;
  if (uv_async_t* async = drained_.load()) uv_async_send(async);
}

void Relay::StopUpstreams() {
  stopping_ = true;
  if (upstream_) upstream_->Stop();
  for (auto& retired : retired_upstreams_) retired->Stop();
}

void Relay::Shutdown() {
  StopUpstreams();
  for (auto& worker : workers_) worker->RequestStop();
}

void Relay::Join() {
  for (size_t i = 1; i < workers_.size(); ++i) workers_[i]->Join();
}

bool Relay::TryAddLink(const std::string& credential, uint32_t max_links) {
  absl::MutexLock lock(&mu_);
  uint32_t& count = links_per_credential_[credential];
  if (count >= max_links) return false;
  ++count;
  return true;
}

void Relay::RemoveLink(const std::string& credential) {
  absl::MutexLock lock(&mu_);
  auto it = links_per_credential_.find(credential);
  if (it != links_per_credential_.end() && it->second > 0) --it->second;
}

absl::Status Relay::BindTcpService(const std::string& service, uint16_t port, RelayWorker& worker) {
  uint16_t bound = port;
  std::vector<TcpListener*> created;
  for (const std::string& host : config_.tcp.bind) {
    RelayWorker* w = &worker;
    absl::StatusOr<TcpListener*> listener = worker.Listen(
        host, bound,
        [w, service, this](uv_stream_t* server) {
          uint16_t relay_port = 0;
          {
            absl::MutexLock lock(&mu_);
            auto it = tcp_ports_.find(service);
            if (it != tcp_ports_.end()) relay_port = it->second;
          }
          w->AcceptTcp(server, service, relay_port);
        },
        /*reuse_port=*/false);
    if (!listener.ok()) {
      for (TcpListener* partial : created) partial->Close();
      return listener.status();
    }
    created.push_back(*listener);
    bound = (*listener)->port();
  }
  for (TcpListener* listener : created) {
    spdlog::info("listening tcp:{} {}", service, listener->address());
  }
  tcp_ports_[service] = bound;
  ports_in_use_.insert(bound);
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> Relay::EnsureTcpPort(const std::string& service, uint16_t requested,
                                              const CredentialConfig& credential,
                                              RelayWorker& caller) {
  auto granted = [&](uint16_t port) {
    for (const Grant& grant : credential.grants) {
      if (grant.AllowsTcp(service, port)) return true;
    }
    return false;
  };
  absl::MutexLock lock(&mu_);
  if (auto it = tcp_ports_.find(service); it != tcp_ports_.end()) {
    if (requested != 0 && requested != it->second) {
      return absl::FailedPreconditionError(
          StrCat("service ", service, " already listens on port ", it->second));
    }
    if (!granted(it->second)) {
      return absl::PermissionDeniedError(
          StrCat("port ", it->second, " is not granted to this credential"));
    }
    return it->second;
  }
  if (uint16_t fixed = config_.tcp.FixedPortFor(service); fixed != 0) requested = fixed;
  if (requested != 0) {
    if (!granted(requested)) {
      return absl::PermissionDeniedError(
          StrCat("port ", requested, " is not granted to this credential"));
    }
    if (absl::Status s = BindTcpService(service, requested, caller); !s.ok()) {
      return absl::UnavailableError(s.message());
    }
    return tcp_ports_[service];
  }
  // Allocate: the first free port in the credential's port ranges, else any port if the grant
  // names the service.
  for (const Grant& grant : credential.grants) {
    if (grant.kind() != GrantKind::kTcp || !grant.IsPortRange()) continue;
    for (uint32_t port = grant.port_low(); port <= grant.port_high(); ++port) {
      if (ports_in_use_.contains(static_cast<uint16_t>(port))) continue;
      if (BindTcpService(service, static_cast<uint16_t>(port), caller).ok()) {
        return tcp_ports_[service];
      }
    }
  }
  bool named = false;  // a grant that names the service (not a port range) allows any port
  for (const Grant& grant : credential.grants) {
    named |= grant.kind() == GrantKind::kTcp && !grant.IsPortRange() && grant.AllowsTcp(service, 0);
  }
  if (named) {
    if (absl::Status s = BindTcpService(service, 0, caller); !s.ok()) {
      return absl::UnavailableError(s.message());
    }
    return tcp_ports_[service];
  }
  return absl::PermissionDeniedError(
      StrCat("no port is granted to this credential for service ", service));
}

absl::Status Relay::BindUdpService(const std::string& service, uint16_t port, RelayWorker& worker) {
  absl::StatusOr<std::unique_ptr<UdpServicePort>> bound =
      UdpServicePort::Create(*this, worker, service, port, config_.udp.bind);
  if (!bound.ok()) return bound.status();
  for (const std::string& address : (*bound)->addresses()) {
    spdlog::info("listening udp:{} {}", service, address);
  }
  udp_ports_in_use_.insert((*bound)->port());
  udp_ports_[service] = std::move(*bound);
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> Relay::EnsureUdpPort(const std::string& service, uint16_t requested,
                                              const CredentialConfig& credential,
                                              RelayWorker& caller) {
  // As EnsureTcpPort, with udp grants and the udp port space.
  auto granted = [&](uint16_t port) {
    for (const Grant& grant : credential.grants) {
      if (grant.AllowsPort(GrantKind::kUdp, service, port)) return true;
    }
    return false;
  };
  absl::MutexLock lock(&mu_);
  auto bound_port = [&]() { return udp_ports_.at(service)->port(); };
  if (auto it = udp_ports_.find(service); it != udp_ports_.end()) {
    uint16_t port = it->second->port();
    if (requested != 0 && requested != port) {
      return absl::FailedPreconditionError(
          StrCat("service ", service, " already listens on udp port ", port));
    }
    if (!granted(port)) {
      return absl::PermissionDeniedError(
          StrCat("udp port ", port, " is not granted to this credential"));
    }
    return port;
  }
  if (uint16_t fixed = config_.udp.FixedPortFor(service); fixed != 0) requested = fixed;
  if (requested != 0) {
    if (!granted(requested)) {
      return absl::PermissionDeniedError(
          StrCat("udp port ", requested, " is not granted to this credential"));
    }
    if (absl::Status s = BindUdpService(service, requested, caller); !s.ok()) {
      return absl::UnavailableError(s.message());
    }
    return bound_port();
  }
  for (const Grant& grant : credential.grants) {
    if (grant.kind() != GrantKind::kUdp || !grant.IsPortRange()) continue;
    for (uint32_t port = grant.port_low(); port <= grant.port_high(); ++port) {
      if (udp_ports_in_use_.contains(static_cast<uint16_t>(port))) continue;
      if (BindUdpService(service, static_cast<uint16_t>(port), caller).ok()) return bound_port();
    }
  }
  bool named = false;  // a grant that names the service (not a port range) allows any port
  for (const Grant& grant : credential.grants) {
    named |= grant.kind() == GrantKind::kUdp && !grant.IsPortRange() &&
             grant.AllowsPort(GrantKind::kUdp, service, 0);
  }
  if (named) {
    if (absl::Status s = BindUdpService(service, 0, caller); !s.ok()) {
      return absl::UnavailableError(s.message());
    }
    return bound_port();
  }
  return absl::PermissionDeniedError(
      StrCat("no udp port is granted to this credential for service ", service));
}

std::vector<std::string> Relay::RoutesFor(const link::ServiceSpec& service,
                                          const std::string& alias) {
  std::vector<std::string> routes;
  auto entry_port = [&](const std::string& role) -> uint16_t {
    auto it = entry_ports_.find(role);
    return it == entry_ports_.end() ? 0 : it->second;
  };
  if (service.kind() == link::HTTP) {
    uint16_t http_port = entry_port("http");
    routes.push_back(StrCat("http://", service.name(), ":", http_port, "/"));
    if (config_.http && !config_.http->zone.empty() && !alias.empty()) {
      routes.push_back(StrCat("http://", alias, ".", config_.http->zone, ":", http_port, "/"));
    }
  } else if (service.kind() == link::TLS) {
    routes.push_back(StrCat("tls://", service.name(), ":", entry_port("tls")));
  } else if (service.kind() == link::SMTP) {
    routes.push_back(StrCat("smtp://", service.name(), ":", entry_port("smtp")));
  } else if (service.kind() == link::PRIVATE || service.kind() == link::PAIR) {
    // Reached only through tunnels (relay/tunnel_bridge.h), never on a public entrypoint.
    routes.push_back(StrCat(service.kind() == link::PAIR ? "pair " : "private ", service.name()));
  } else if (service.kind() == link::UDP) {
    routes.push_back(
        StrCat("udp://", config_.udp.bind.empty() ? "" : config_.udp.bind[0], ":", service.port()));
  } else {
    routes.push_back(
        StrCat("tcp://", config_.tcp.bind.empty() ? "" : config_.tcp.bind[0], ":", service.port()));
  }
  return routes;
}

StreamCarrier* Relay::upstream() {
  UpstreamLink* link = current_upstream_.load(std::memory_order_acquire);
  return link != nullptr && link->authenticated() ? link : nullptr;
}

void Relay::NoteTunnelServicesChanged() {
  if (UpstreamLink* link = current_upstream_.load(std::memory_order_acquire)) {
    link->NoteTunnelServicesChanged();
  }
}

void Relay::ReplaceUpstream(UpstreamLink& link) {
  if (stopping_ || &link != upstream_.get()) return;
  absl::StatusOr<std::unique_ptr<UpstreamLink>> next =
      UpstreamLink::Create(*workers_[0], *config_.upstream);
  if (!next.ok()) {
    spdlog::error("upstream link: the upstream relay is going away, and no new link: {}",
                  next.status().message());
    return;
  }
  spdlog::info(
      "upstream link: the upstream relay is going away; dialing a new link to {}; open tunnel "
      "streams finish on the old one",
      FormatHostPort(config_.upstream->relay));
  retired_upstreams_.push_back(std::move(upstream_));
  upstream_ = *std::move(next);
  current_upstream_.store(upstream_.get(), std::memory_order_release);
  upstream_->Start();
  retired_upstreams_.back()->Retire();
}

}  // namespace rdv
