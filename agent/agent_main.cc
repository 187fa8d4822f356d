// rdv-agent: flags, config, the agent, the loop.
#include <uv.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include "agent/agent.h"
#include "agent/agent_config.h"
#include "common/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: rdv-agent --config FILE [--check-config]\n"
               "  --config FILE     agent configuration (YAML; see docs/configuration.md)\n"
               "  --check-config    validate the configuration and exit\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else if (arg == "--check-config") {
      check_only = true;
    } else if (arg == "-h" || arg == "--help") {
      Usage();
      return 0;
    } else {
      std::fprintf(stderr, "rdv-agent: unknown argument '%s'\n", arg.c_str());
      Usage();
      return 1;
    }
  }
  if (config_path.empty()) {
    Usage();
    return 1;
  }
  spdlog::set_default_logger(spdlog::stderr_color_st("rdv-agent"));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  absl::StatusOr<rdv::AgentConfig> config = rdv::LoadAgentConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "rdv-agent: %s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  if (check_only) {
    std::fprintf(stderr, "rdv-agent: %s is valid\n", config_path.c_str());
    return 0;
  }
  spdlog::set_level(spdlog::level::from_str(config->log_level));
  std::signal(SIGPIPE, SIG_IGN);

  uv_loop_t* loop = uv_default_loop();
  absl::StatusOr<std::unique_ptr<rdv::Agent>> agent = rdv::Agent::Create(*config, loop);
  if (!agent.ok()) {
    spdlog::error("{}", agent.status().message());
    return 2;
  }
  (*agent)->Start();

  uv_signal_t sigterm, sigint;
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  sigterm.data = sigint.data = agent->get();
  auto on_signal = [](uv_signal_t* handle, int signum) {
    spdlog::info("received {}, shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    static_cast<rdv::Agent*>(handle->data)->Shutdown();
    uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
    uv_walk(
        handle->loop,
        [](uv_handle_t* h, void*) {
          if (h->type == UV_SIGNAL && !uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
  };
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  agent->reset();
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) {
    spdlog::error("loop did not close cleanly: {}", uv_err_name(rc));
    return 2;
  }
  spdlog::info("stopped");
  return 0;
}
