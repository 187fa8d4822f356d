// The shared skeleton of the rdv-* binaries' main(): flags, logging, signals, loop teardown.
// Each main() stays thin: parse flags, load config, build its object, run the loop (STYLE 1).
#ifndef RDV_COMMON_PROCESS_MAIN_H_
#define RDV_COMMON_PROCESS_MAIN_H_

#include <uv.h>

#include <functional>
#include <optional>
#include <string>

namespace rdv {

struct CommandLine {
  std::string config_path;
  bool check_only = false;
};

// Parses `--config FILE` and `--check-config`. Returns an exit code when the process should
// end now (help printed: 0; bad flags: 1), std::nullopt to go on.
std::optional<int> ParseCommandLine(int argc, char** argv, const std::string& program,
                                    const std::string& description, CommandLine& out);

// Logs to stderr as "<time> <level> <message>" (tests read these lines).
void InitLogging(const std::string& program);
void SetLogLevel(const std::string& level);

// Runs `loop` until SIGTERM or SIGINT; then `on_stop` runs once on the loop, and this returns
// when the loop has nothing left to do.
void RunUntilSignal(uv_loop_t* loop, std::function<void()> on_stop);

// Runs `loop` until it has nothing left to do. The first SIGTERM or SIGINT runs `on_drain`, which
// is given a callback to call once the process has stopped (it closes the signal handlers, so the
// loop can end); a second signal runs `on_stop` (which must stop the process now) and closes them.
// SIGHUP runs `on_reload`; without one it is logged as having no effect (it does not end the
// process).
void RunDrainingOnSignal(uv_loop_t* loop,
                         std::function<void(std::function<void()> stopped)> on_drain,
                         std::function<void()> on_stop, std::function<void()> on_reload = nullptr);

// Runs the loop dry and closes it: 0 when every handle was closed, 2 (logged) otherwise.
int CloseLoop(uv_loop_t* loop);

}  // namespace rdv

#endif  // RDV_COMMON_PROCESS_MAIN_H_
