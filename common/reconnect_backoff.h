// The redial schedule (agent configuration `reconnect`) of links (common/link_client.h: an
// agent's to its relays, a relay's to its upstream) and of the agent's connect tunnels: the
// first retry waits `initial`, each following one twice as long up to `max`, every step jittered
// into [0.5, 1.5) of itself so that a crowd of agents does not redial in lockstep.
#ifndef RDV_COMMON_RECONNECT_BACKOFF_H_
#define RDV_COMMON_RECONNECT_BACKOFF_H_

#include <cstdint>

#include "common/link_client_config.h"

namespace rdv {

class ReconnectBackoff {
 public:
  explicit ReconnectBackoff(const ReconnectConfig& config) : config_(config) {}
  // The delay before the next attempt, in milliseconds.
  uint64_t NextDelayMs();
  // After a success: the next failure waits `initial` again.
  void Reset() { step_ms_ = 0; }

 private:
  const ReconnectConfig& config_;
  uint64_t step_ms_ = 0;
};

}  // namespace rdv

#endif  // RDV_COMMON_RECONNECT_BACKOFF_H_
