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

namespace {

struct SignalHandlers {
  uv_signal_t sigterm;
  uv_signal_t sigint;
  uv_signal_t sighup;
  int received = 0;
  std::function<void(std::function<void()>)> on_drain;
  std::function<void()> on_stop;
  std::function<void()> on_reload;
};

void CloseSignalHandlers(SignalHandlers& handlers) {
  for (uv_signal_t* handle : {&handlers.sigterm, &handlers.sigint, &handlers.sighup}) {
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(handle))) {
      uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
    }
  }
}

void RunWithSignalHandlers(uv_loop_t* loop, SignalHandlers& handlers) {
  std::signal(SIGPIPE, SIG_IGN);
  uv_signal_init(loop, &handlers.sigterm);
  uv_signal_init(loop, &handlers.sigint);
  handlers.sigterm.data = handlers.sigint.data = &handlers;
  auto on_signal = [](uv_signal_t* handle, int signum) {
    auto& handlers = *static_cast<SignalHandlers*>(handle->data);
    const char* name = signum == SIGTERM ? "SIGTERM" : "SIGINT";
    if (++handlers.received == 1 && handlers.on_drain) {
      spdlog::info("received {}, shutting down", name);
      handlers.on_drain([&handlers] { CloseSignalHandlers(handlers); });
      return;
    }
    spdlog::info("received {}, {}", name,
                 handlers.received == 1 ? "shutting down" : "stopping now");
    CloseSignalHandlers(handlers);
    handlers.on_stop();
  };
  uv_signal_start(&handlers.sigterm, on_signal, SIGTERM);
  uv_signal_start(&handlers.sigint, on_signal, SIGINT);
  uv_signal_init(loop, &handlers.sighup);
  handlers.sighup.data = &handlers;
  uv_signal_start(
      &handlers.sighup,
      [](uv_signal_t* handle, int) {
        auto& handlers = *static_cast<SignalHandlers*>(handle->data);
        if (!handlers.on_reload) {
          spdlog::warn(
              "received SIGHUP: this program does not reload its configuration; restart "
              "it to apply changes");
          return;
        }
        spdlog::info("received SIGHUP, reloading the configuration");
        handlers.on_reload();
      },
      SIGHUP);
  uv_run(loop, UV_RUN_DEFAULT);
}

}  // namespace

void RunUntilSignal(uv_loop_t* loop, std::function<void()> on_stop) {
  SignalHandlers handlers;
  handlers.on_stop = std::move(on_stop);
  RunWithSignalHandlers(loop, handlers);
}

void RunDrainingOnSignal(uv_loop_t* loop,
                         std::function<void(std::function<void()> stopped)> on_drain,
                         std::function<void()> on_stop, std::function<void()> on_reload) {
  SignalHandlers handlers;
  handlers.on_drain = std::move(on_drain);
  handlers.on_stop = std::move(on_stop);
  handlers.on_reload = std::move(on_reload);
  RunWithSignalHandlers(loop, handlers);
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
