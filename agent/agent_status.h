// What `GET /status` on the agent's admin listener reports, and `rdv-agent status` prints: the
// agent's links and tunnels, as a plain struct, its JSON form and a readable summary.
//
// JSON shape:
//   {"agent_id": "...", "links": [{"relay": "host:port", "state": "up"}],
//    "tunnels": [{"kind": "pair", "name": "site-b", "role": "connect", "state": "up",
//                 "peer_agent": "...", "hops": ["relay-a", "relay-b"], "streams": 0,
//                 "security": "psk", "path": "data"}]}
// and, while the agent drains after its first SIGTERM, "draining": true, "open_streams": N
// after "agent_id".
#ifndef RDV_AGENT_AGENT_STATUS_H_
#define RDV_AGENT_AGENT_STATUS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rdv {

struct AgentLinkStatus {
  std::string relay;  // host:port as configured
  // "up", "connecting", "down", "stopped", or "retiring" (after the relay's GoAway)
  std::string state;
};

struct AgentTunnelStatus {
  std::string kind;  // "pair" | "private"
  std::string name;
  std::string role;               // "connect" | "serve"
  std::string state;              // e.g. "up", "connecting", "down"
  std::string peer_agent;         // empty until known
  std::vector<std::string> hops;  // relay ids, in order from the connecting end
  uint64_t streams = 0;
  std::string security;  // "psk" | "certificate"
  // "data" once the tunnel runs on the relay's data path, "link" on the relay stream; empty
  // when not known (a tunnel that is down, or an older agent's JSON).
  std::string path;
};

struct AgentStatus {
  std::string agent_id;
  bool draining = false;      // stopping: open streams finish, no new ones (shutdown_grace_ms)
  uint64_t open_streams = 0;  // while draining: the streams it waits for
  std::vector<AgentLinkStatus> links;
  std::vector<AgentTunnelStatus> tunnels;
};

// A JSON string literal (with the quotes) for `text`: '"', '\' and control characters escaped;
// bytes that are not UTF-8 become U+FFFD.
std::string JsonQuote(std::string_view text);

std::string RenderAgentStatusJson(const AgentStatus& status);

// The inverse of RenderAgentStatusJson (for `rdv-agent status`); unknown keys are ignored.
absl::StatusOr<AgentStatus> ParseAgentStatusJson(std::string_view json);

// Lines for a terminal:
//   agent site-a                         ("agent site-a (draining, 2 open streams)")
//   links:
//     127.0.0.1:7000 up
//   tunnels:
//     pair site-b connect up peer site-b-agent via relay-a -> relay-b (psk, 2 streams)
// and ", data path" inside the parentheses of a tunnel on the relay's data path.
std::string FormatAgentStatus(const AgentStatus& status);

}  // namespace rdv

#endif  // RDV_AGENT_AGENT_STATUS_H_
