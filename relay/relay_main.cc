// rdv-relay: flags, config, the relay, the loop.
#include <uv.h>

#include <functional>
#include <utility>

#include "common/process_main.h"
#include "common/str_cat.h"
#include "relay/relay.h"
#include "relay/relay_config.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  rdv::CommandLine flags;
  if (auto exit_code = rdv::ParseCommandLine(
          argc, argv, "rdv-relay", "Rendezvous relay: the public end of agent links", flags)) {
    return *exit_code;
  }
  rdv::InitLogging("rdv-relay");
  absl::StatusOr<rdv::RelayConfig> config = rdv::LoadRelayConfig(flags.config_path);
  if (!config.ok()) {
    spdlog::error("rdv-relay: {}", config.status().message());
    return 1;
  }
  if (flags.check_only) {
    spdlog::info("{} is valid", flags.config_path);
    return 0;
  }
  rdv::SetLogLevel(config->log_level);

  uv_loop_t* loop = uv_default_loop();
  absl::StatusOr<std::unique_ptr<rdv::Relay>> relay = rdv::Relay::Create(*config, loop);
  if (!relay.ok()) {
    spdlog::error("{}", relay.status().message());
    return 2;
  }
  absl::Status started = (*relay)->Start();
  if (!started.ok()) {
    spdlog::error("{}", started.message());
    (*relay)->Shutdown();
    uv_run(loop, UV_RUN_DEFAULT);
  } else {
    (*relay)->set_config_path(flags.config_path);
    rdv::RunDrainingOnSignal(
        loop, [&relay](std::function<void()> stopped) { (*relay)->Drain(std::move(stopped)); },
        [&relay] { (*relay)->Shutdown(); }, [&relay] { (*relay)->Reload(); });
  }
  (*relay)->Join();
  relay->reset();
  int rc = rdv::CloseLoop(loop);
  return started.ok() ? rc : 2;
}
