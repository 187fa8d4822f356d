// rdv-agent: flags, config, the agent, the loop.
#include <uv.h>

#include <functional>
#include <string_view>
#include <utility>

#include "agent/agent.h"
#include "agent/agent_config.h"
#include "agent/status_command.h"
#include "common/process_main.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "status") {
    return rdv::RunStatusCommand(argc - 1, argv + 1);
  }
  rdv::CommandLine flags;
  if (auto exit_code = rdv::ParseCommandLine(
          argc, argv, "rdv-agent",
          "Rendezvous agent: publishes private services via a relay.\n"
          "`rdv-agent status --admin host:port [--json]` prints a running agent's status.",
          flags)) {
    return *exit_code;
  }
  rdv::InitLogging("rdv-agent");
  absl::StatusOr<rdv::AgentConfig> config = rdv::LoadAgentConfig(flags.config_path);
  if (!config.ok()) {
    spdlog::error("rdv-agent: {}", config.status().message());
    return 1;
  }
  if (flags.check_only) {
    spdlog::info("{} is valid", flags.config_path);
    return 0;
  }
  rdv::SetLogLevel(config->log_level);

  uv_loop_t* loop = uv_default_loop();
  absl::StatusOr<std::unique_ptr<rdv::Agent>> agent = rdv::Agent::Create(*config, loop);
  if (!agent.ok()) {
    spdlog::error("{}", agent.status().message());
    return 2;
  }
  (*agent)->Start();
  rdv::RunDrainingOnSignal(
      loop, [&agent](std::function<void()> stopped) { (*agent)->Drain(std::move(stopped)); },
      [&agent] { (*agent)->Shutdown(); });
  agent->reset();
  return rdv::CloseLoop(loop);
}
