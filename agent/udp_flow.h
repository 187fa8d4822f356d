// The agent's side of udp services (docs/protocol.md, "Datagrams").
//
// For every flow the relay opens (an Open of kind UDP: one relay-side client address):
// 1. accept at once, so the datagrams the relay sends right behind the Open are not lost, and
//    queue the first few while the target resolves;
// 2. resolve the target and connect a UDP socket to it (the kernel then filters replies to that
//    address and port);
// 3. forward each DATAGRAM frame to the target and each datagram from the target as a DATAGRAM
//    frame, dropping (counted) what the socket or the link cannot take now;
// 4. after kUdpFlowIdleTimeoutMs without a datagram either way, reset the flow so the relay frees
//    its session; a reset or lost link from the relay frees ours.
#ifndef RDV_AGENT_UDP_FLOW_H_
#define RDV_AGENT_UDP_FLOW_H_

#include <uv.h>

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "agent/agent_config.h"
#include "common/link.h"
#include "common/loop_tasks.h"

namespace rdv {

// Same default as the relay's udp.session_idle_timeout_ms; the relay's (usually equal or
// shorter) timeout normally ends a session first.
inline constexpr uint64_t kUdpFlowIdleTimeoutMs = 60000;

class AgentUdpFlow;

// Owns the udp flows of one relay link.
class AgentUdpFlows {
 public:
  AgentUdpFlows(uv_loop_t* loop, LoopTasks& tasks, uint64_t idle_timeout_ms);
  ~AgentUdpFlows();
  AgentUdpFlows(const AgentUdpFlows&) = delete;
  AgentUdpFlows& operator=(const AgentUdpFlows&) = delete;

  // Accepts `stream` (a peer-opened flow) and starts forwarding to `service.target`.
  void Open(Stream& stream, const ServiceConfig& service);
  size_t size() const { return flows_.size(); }

 private:
  friend class AgentUdpFlow;
  // The flow is done: destroy it after the current callbacks.
  void Finish(AgentUdpFlow* flow);

  uv_loop_t* loop_;
  LoopTasks& tasks_;
  const uint64_t idle_timeout_ms_;
  absl::flat_hash_map<AgentUdpFlow*, std::unique_ptr<AgentUdpFlow>> flows_;
  // Receive buffer shared by the flows of this loop: each datagram is consumed in its callback.
  std::string buffer_ = std::string(65536, '\0');
  std::shared_ptr<AgentUdpFlows*> alive_;  // deferred work holds a weak_ptr to this token
};

}  // namespace rdv

#endif  // RDV_AGENT_UDP_FLOW_H_
