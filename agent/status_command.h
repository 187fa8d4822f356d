// `rdv-agent status --admin host:port [--json]`: asks a running agent's admin listener for
// GET /status and prints the raw JSON or a readable summary (agent/agent_status.h).
#ifndef RDV_AGENT_STATUS_COMMAND_H_
#define RDV_AGENT_STATUS_COMMAND_H_

#include <string>

#include "absl/status/statusor.h"

namespace rdv {

// A blocking HTTP/1.0 GET of `path` from `address` ("host:port", "[v6]:port"); the body of a 200
// answer. Errors say what failed, e.g. that nothing listens there.
absl::StatusOr<std::string> FetchAdminPath(const std::string& address, const std::string& path,
                                           int timeout_ms = 5000);

// Runs the subcommand; argv[0] is "status". Returns the process exit code: 0 printed, 1 bad
// flags, 2 the agent could not be asked or answered nonsense.
int RunStatusCommand(int argc, char** argv);

}  // namespace rdv

#endif  // RDV_AGENT_STATUS_COMMAND_H_
