#include "common/process_main.h"

#include <csignal>

#include "CLI/CLI.hpp"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace rdv {

std::optional<int> ParseCommandLine(int argc, char** argv, const std::string& program,
                                    const std::string& description, CommandLine& out) {
  CLI::App app(description, program);
  app.add_option("--config", out.config_path, "configuration file (YAML; docs/configuration.md)")
      ->required();
  app.add_flag("--check-config", out.check_only, "validate the configuration and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error) == 0 ? 0 : 1;  // bad flags share the config-error exit code
  }
  return std::nullopt;
}

void InitLogging(const std::string& program) {
  spdlog::set_default_logger(spdlog::stderr_color_mt(program));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
}

void SetLogLevel(const std::string& level) { spdlog::set_level(spdlog::level::from_str(level)); }

void RunUntilSignal(uv_loop_t* loop, std::function<void()> on_stop) {
  std::signal(SIGPIPE, SIG_IGN);
  uv_signal_t sigterm, sigint;
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  sigterm.data = sigint.data = &on_stop;
  auto on_signal = [](uv_signal_t* handle, int signum) {
    spdlog::info("received {}, shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    auto* stop = static_cast<std::function<void()>*>(handle->data);
    uv_walk(
        handle->loop,
        [](uv_handle_t* h, void*) {
          if (h->type == UV_SIGNAL && !uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    (*stop)();
  };
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
}

int CloseLoop(uv_loop_t* loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(loop);
  if (rc != 0) {
    spdlog::error("loop did not close cleanly: {}", uv_err_name(rc));
    return 2;
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace rdv
