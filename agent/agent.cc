#include "agent/agent.h"

#include "agent/health_check.h"
#include "agent/relay_link.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {

Agent::Agent(AgentConfig config, uv_loop_t* loop)
    : config_(std::move(config)), loop_(loop), tasks_(loop) {}

Agent::~Agent() {
  admin_.reset();
  for (auto& checker : health_checkers_) {
    if (checker) checker->Stop();
  }
  health_checkers_.clear();
  links_.clear();
  splices_.clear();
  tasks_.Close();
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentConfig config, uv_loop_t* loop) {
  std::unique_ptr<Agent> agent(new Agent(std::move(config), loop));
  absl::StatusOr<SslCtxPtr> ctx = CreateLinkClientContext(agent->config_.relay_ca_file);
  if (!ctx.ok()) return ctx.status();
  agent->tls_context_ = std::move(*ctx);
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

void Agent::Shutdown() {
  if (shutting_down_) return;
  shutting_down_ = true;
  spdlog::info("shutting down: {} links, {} streams", links_.size(), splices_.size());
  for (auto& checker : health_checkers_) {
    if (checker) checker->Stop();
  }
  health_checkers_.clear();
  if (admin_) admin_->Close();
  for (auto& link : links_) link->Shutdown();
  links_.clear();
  splices_.clear();
  tasks_.Close();
}

AgentStatus Agent::Status() const {
  AgentStatus status;
  status.agent_id = config_.agent_id;
  for (const auto& link : links_) {
    status.links.push_back({FormatHostPort(link->relay()), std::string(link->state_name())});
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

}  // namespace rdv
