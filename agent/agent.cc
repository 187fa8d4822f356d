#include "agent/agent.h"

#include "agent/relay_link.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {

Agent::Agent(AgentConfig config, uv_loop_t* loop)
    : config_(std::move(config)), loop_(loop), tasks_(loop) {}

Agent::~Agent() {
  links_.clear();
  splices_.clear();
  tasks_.Close();
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Create(AgentConfig config, uv_loop_t* loop) {
  std::unique_ptr<Agent> agent(new Agent(std::move(config), loop));
  absl::StatusOr<SslCtxPtr> ctx = CreateLinkClientContext(agent->config_.relay_ca_file);
  if (!ctx.ok()) return ctx.status();
  agent->tls_context_ = std::move(*ctx);
  return agent;
}

void Agent::Start() {
  for (uint32_t i = 0; i < config_.links; ++i) {
    const HostPort& relay = config_.relays[i % config_.relays.size()];
    links_.push_back(std::make_unique<RelayLink>(*this, static_cast<int>(i), relay));
  }
  for (auto& link : links_) link->Start();
}

void Agent::Shutdown() {
  if (shutting_down_) return;
  shutting_down_ = true;
  spdlog::info("shutting down: {} links, {} streams", links_.size(), splices_.size());
  for (auto& link : links_) link->Shutdown();
  links_.clear();
  splices_.clear();
  tasks_.Close();
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
