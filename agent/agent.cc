#include "agent/agent.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "agent/connect_listener.h"
#include "agent/health_check.h"
#include "agent/relay_link.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {

Agent::Agent(AgentConfig config, uv_loop_t* loop)
    : config_(std::move(config)), loop_(loop), tasks_(loop) {}

Agent::~Agent() {
  StopDrainTimer();
  admin_.reset();
  for (auto& checker : health_checkers_) {
    if (checker) checker->Stop();
  }
  health_checkers_.clear();
  // Tunnels before the links their streams live on.
  for (auto& listener : connect_listeners_) listener->Shutdown();
  serving_tunnels_.clear();
  smtp_openers_.clear();  // they refuse their streams: before the links
  links_.clear();
  retired_links_.clear();
  splices_.clear();
  tasks_.Close();
  // Last: deferred work run by tasks_.Close() may still reach into them.
  connect_listeners_.clear();
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentConfig config, uv_loop_t* loop) {
  std::unique_ptr<Agent> agent(new Agent(std::move(config), loop));
  absl::StatusOr<SslCtxPtr> ctx = CreateLinkClientContext(agent->config_.relay_ca_file);
  if (!ctx.ok()) return ctx.status();
  agent->tls_context_ = std::move(*ctx);
  for (const ConnectConfig& connect : agent->config_.connects) {
    absl::StatusOr<std::unique_ptr<ConnectListener>> listener =
        ConnectListener::Create(*agent, connect);
    if (!listener.ok()) return listener.status();
    agent->connect_listeners_.push_back(*std::move(listener));
  }
  if (const std::optional<HostPort>& listen = agent->config_.admin_listen) {
    Agent* raw = agent.get();
    AdminRouter router = [raw](std::string_view path) -> std::optional<AdminResponse> {
      if (path == "/metrics") return MetricsResponse();
      if (path == "/status") {
        return AdminResponse{200, "application/json", RenderAgentStatusJson(raw->Status())};
      }
      if (path == "/healthz") return AdminResponse{200, "text/plain", "ok\n"};
      return std::nullopt;
    };
    absl::StatusOr<std::unique_ptr<AdminServer>> admin =
        AdminServer::Create(loop, agent->tasks_, listen->host, listen->port, std::move(router));
    if (!admin.ok()) {
      return absl::Status(admin.status().code(), StrCat("admin.listen ", FormatHostPort(*listen),
                                                        ": ", admin.status().message()));
    }
    agent->admin_ = *std::move(admin);
    spdlog::info("admin listening {}", agent->admin_->address());
  }
  return agent;
}

void Agent::Start() {
  // Registered now so that /metrics shows them before anything happened.
  RelayLink::LinksUp();
  CounterOf("rdv_agent_link_drops_total", "Links to the relay that dropped after coming up");
  for (uint32_t i = 0; i < config_.links; ++i) {
    const HostPort& relay = config_.relays[i % config_.relays.size()];
    links_.push_back(std::make_unique<RelayLink>(*this, static_cast<int>(i), relay));
  }
  for (auto& link : links_) link->Start();
  for (auto& listener : connect_listeners_) listener->Start();
  for (size_t i = 0; i < config_.services.size(); ++i) {
    const ServiceConfig& service = config_.services[i];
    if (!service.health_check) {
      health_checkers_.push_back(nullptr);
      continue;
    }
    // The Host an http check sends: configured, else the service's own name when it is one.
    std::string host = service.health_check->host;
    if (host.empty()) {
      host = service.kind == ServiceConfig::Kind::kHttp && service.name.front() != '*'
                 ? service.name
                 : FormatHostPort(service.target);
    }
    health_checkers_.push_back(
        std::make_unique<HealthChecker>(loop_, *service.health_check, service.target, host,
                                        [this, i](bool healthy, const std::string& detail) {
                                          OnHealthChange(i, healthy, detail);
                                        }));
    health_checkers_.back()->Start();
  }
}

void Agent::OnHealthChange(size_t service, bool healthy, const std::string& detail) {
  const ServiceConfig& config = config_.services[service];
  if (healthy) {
    spdlog::info("{} {}: target {} is healthy", config.kind_name(), config.name,
                 FormatHostPort(config.target));
  } else {
    spdlog::warn("{} {}: target {} is unhealthy: {}", config.kind_name(), config.name,
                 FormatHostPort(config.target), detail);
  }
  for (auto& link : links_) link->SendServiceHealth(config, healthy, detail);
}

void Agent::SendHealth(RelayLink& link) {
  for (size_t i = 0; i < health_checkers_.size(); ++i) {
    const HealthChecker* checker = health_checkers_[i].get();
    if (checker != nullptr) {
      link.SendServiceHealth(config_.services[i], checker->healthy(), checker->detail());
    }
  }
}

size_t Agent::OpenStreamCount() const {
  size_t open = 0;
  for (const auto& link : links_) open += link->ServiceStreamCount();
  for (const auto& [raw, link] : retired_links_) open += link->ServiceStreamCount();
  for (const auto& [raw, tunnel] : serving_tunnels_) open += tunnel->stream_count();
  for (const auto& listener : connect_listeners_) open += listener->client_count();
  return open;
}

void Agent::Drain(std::function<void()> on_stopped) {
  if (shutting_down_ || draining()) return;
  on_stopped_ = std::move(on_stopped);
  size_t open = OpenStreamCount();
  if (config_.shutdown_grace <= absl::ZeroDuration() || open == 0) {
    Shutdown();
    return;
  }
  int64_t grace_ms = absl::ToInt64Milliseconds(config_.shutdown_grace);
  spdlog::info(
      "draining: {} open streams; stopping when they end, or in {} ms (shutdown_grace_ms); "
      "a second signal stops now",
      open, grace_ms);
  for (auto& checker : health_checkers_) {
    if (checker) checker->Stop();
  }
  for (auto& listener : connect_listeners_) listener->Drain();
  for (auto& [raw, tunnel] : serving_tunnels_) tunnel->SendGoAway("agent shutting down");
  for (auto& link : links_) link->Drain();
  drain_deadline_ms_ = uv_now(loop_) + static_cast<uint64_t>(grace_ms);
  drain_timer_ = new uv_timer_t;
  uv_timer_init(loop_, drain_timer_);
  drain_timer_->data = this;
  constexpr uint64_t kDrainCheckMs = 100;
  uv_timer_start(
      drain_timer_,
      [](uv_timer_t* timer) {
        if (timer->data != nullptr) static_cast<Agent*>(timer->data)->CheckDrain();
      },
      kDrainCheckMs, kDrainCheckMs);
}

void Agent::CheckDrain() {
  size_t open = OpenStreamCount();
  if (open == 0) {
    spdlog::info("drained: no stream open");
  } else if (uv_now(loop_) >= drain_deadline_ms_) {
    spdlog::warn("drain: {} streams still open after {} ms; closing them", open,
                 absl::ToInt64Milliseconds(config_.shutdown_grace));
  } else {
    return;
  }
  Shutdown();
}

void Agent::StopDrainTimer() {
  if (drain_timer_ == nullptr) return;
  drain_timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(drain_timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  drain_timer_ = nullptr;
}

void Agent::Shutdown() {
  if (shutting_down_) return;
  shutting_down_ = true;
  spdlog::info("shutting down: {} links, {} streams", links_.size(), splices_.size());
  for (auto& checker : health_checkers_) {
    if (checker) checker->Stop();
  }
  health_checkers_.clear();
  // Tunnels first: the peer hears GoAway inside each, then the relay links close under them.
  for (auto& listener : connect_listeners_) listener->Shutdown();
  for (auto& [raw, tunnel] : serving_tunnels_) tunnel->SendGoAway("agent shutting down");
  serving_tunnels_.clear();
  if (admin_) admin_->Close();
  smtp_openers_.clear();
  for (auto& link : links_) link->Shutdown();
  for (auto& [raw, link] : retired_links_) link->Shutdown();
  links_.clear();
  retired_links_.clear();
  splices_.clear();
  tasks_.Close();
  StopDrainTimer();
  if (on_stopped_) std::exchange(on_stopped_, nullptr)();
}

Link* Agent::ReadyRelayLink() {
  for (size_t i = 0; i < links_.size(); ++i) {
    RelayLink& link = *links_[(next_tunnel_link_ + i) % links_.size()];
    if (Link* ready = link.ready_link()) {
      next_tunnel_link_ = (next_tunnel_link_ + i + 1) % links_.size();
      return ready;
    }
  }
  return nullptr;
}

void Agent::ReplaceRelayLink(RelayLink& link) {
  if (shutting_down_ || draining()) return;
  auto slot =
      std::find_if(links_.begin(), links_.end(),
                   [&link](const std::unique_ptr<RelayLink>& l) { return l.get() == &link; });
  if (slot == links_.end()) return;
  std::unique_ptr<RelayLink> old = std::move(*slot);
  *slot = std::make_unique<RelayLink>(*this, old->index(), old->relay());
  spdlog::info(
      "link {}: the relay is going away; dialing a new link to {}; open streams finish on "
      "the old one",
      old->index(), FormatHostPort(old->relay()));
  RelayLink* raw = old.get();
  retired_links_.emplace(raw, std::move(old));
  // Tunnels through that relay: the connecting ends move to new tunnels and retire these; a
  // serving end tells its connecting end, which may be linked to another relay.
  if (uint64_t serial = raw->link_serial(); serial != 0) {
    for (auto& listener : connect_listeners_) listener->OnRelayGoingAway(serial);
    for (auto& [tunnel, owned] : serving_tunnels_) {
      if (tunnel->relay_link_serial() == serial) tunnel->SendGoAway("relay going away");
    }
  }
  (*slot)->Start();
  raw->Retire();
}

void Agent::OnRetiredLinkStopped(RelayLink& link) {
  RelayLink* raw = &link;
  tasks_.Defer([this, raw] { retired_links_.erase(raw); });
}

void Agent::OnRelayLinkReady() {
  if (shutting_down_ || draining()) return;
  for (auto& listener : connect_listeners_) listener->OnRelayLinkReady();
}

Tunnel::Context Agent::TunnelContext() const {
  Tunnel::Context context;
  context.loop = loop_;
  context.tasks = const_cast<LoopTasks*>(&tasks_);
  context.agent_id = config_.agent_id;
  context.connect_timeout = config_.connect_timeout;
  return context;
}

void Agent::ServeTunnel(Stream& stream, const ServiceConfig& service) {
  if (shutting_down_ || draining()) {
    stream.Refuse("agent shutting down");
    return;
  }
  absl::StatusOr<std::unique_ptr<Tunnel>> tunnel =
      Tunnel::Serve(TunnelContext(), ServingEndpoint(service), stream, *this);
  if (!tunnel.ok()) {
    spdlog::warn("tunnel {} {}: refused a tunnel from {}: {}", service.kind_name(), service.name,
                 stream.open().tunnel().agent_id(), tunnel.status().message());
    return;
  }
  Tunnel* raw = tunnel->get();
  serving_tunnels_.emplace(raw, *std::move(tunnel));
}

void Agent::OnTunnelNotice(const link::TunnelNotice& notice) {
  constexpr uint64_t kRepeatAfterMs = 60000;
  CounterOf("rdv_agent_tunnel_notices_total", "TunnelNotice messages received from relays").Inc();
  std::string kind = absl::AsciiStrToLower(link::ServiceKind_Name(notice.service().kind()));
  uint64_t now = uv_now(loop_);
  auto [it, first] = notice_logged_ms_.try_emplace(
      StrCat(kind, " ", notice.service().name(), " ", notice.detail()), now);
  bool log = first || now - it->second >= kRepeatAfterMs;
  if (log) it->second = now;
  spdlog::log(log ? spdlog::level::warn : spdlog::level::debug,
              "tunnel {} {}: notice from relay: {}", kind, notice.service().name(),
              notice.detail());
}

void Agent::OnTunnelClosed(Tunnel& tunnel, const absl::Status& status) {
  Tunnel* raw = &tunnel;
  tasks_.Defer([this, raw] { serving_tunnels_.erase(raw); });
}

AgentStatus Agent::Status() const {
  AgentStatus status;
  status.agent_id = config_.agent_id;
  if (draining()) {
    status.draining = true;
    status.open_streams = OpenStreamCount();
  }
  for (const auto& link : links_) {
    status.links.push_back({FormatHostPort(link->relay()), std::string(link->state_name())});
  }
  for (const auto& [raw, link] : retired_links_) {
    status.links.push_back({FormatHostPort(link->relay()), "retiring"});
  }
  auto add = [&status](const Tunnel& tunnel, std::string_view role) {
    AgentTunnelStatus& entry = status.tunnels.emplace_back();
    entry.kind = std::string(tunnel.kind_name());
    entry.name = tunnel.name();
    entry.role = std::string(role);
    entry.state = std::string(tunnel.state_name());
    entry.peer_agent = tunnel.peer_agent();
    entry.hops = tunnel.hops();
    entry.streams = tunnel.stream_count();
    entry.security = tunnel.security();
    entry.path = std::string(tunnel.path_name());
  };
  for (const auto& listener : connect_listeners_) {
    for (const Tunnel* tunnel : listener->retiring_tunnels()) add(*tunnel, "connect");
    if (const Tunnel* tunnel = listener->tunnel()) {
      add(*tunnel, "connect");
    } else {
      // Between attempts: the entry is still listed, so an operator sees it is not up.
      const ConnectConfig& config = listener->config();
      AgentTunnelStatus& entry = status.tunnels.emplace_back();
      entry.kind = std::string(config.kind_name());
      entry.name = config.name;
      entry.role = "connect";
      entry.state = "down";
      entry.security = std::string(config.security());
    }
  }
  for (const auto& [raw, tunnel] : serving_tunnels_) {
    if (tunnel->state() != Tunnel::State::kClosed) add(*tunnel, "serve");
  }
  return status;
}

void Agent::Adopt(std::unique_ptr<StreamSplice> splice) {
  StreamSplice* raw = splice.get();
  splices_.emplace(raw, std::move(splice));
}

void Agent::Finish(StreamSplice& splice) {
  StreamSplice* raw = &splice;
  tasks_.Defer([this, raw] { splices_.erase(raw); });
}

void Agent::Adopt(std::unique_ptr<SmtpOpener> opener) {
  SmtpOpener* raw = opener.get();
  smtp_openers_.emplace(raw, std::move(opener));
}

void Agent::Finish(SmtpOpener& opener) {
  SmtpOpener* raw = &opener;
  tasks_.Defer([this, raw] { smtp_openers_.erase(raw); });
}

}  // namespace rdv
