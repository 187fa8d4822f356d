#include "common/reconnect_backoff.h"

#include <unistd.h>

#include <algorithm>
#include <random>

namespace rdv {

uint64_t ReconnectBackoff::NextDelayMs() {
  uint64_t initial = static_cast<uint64_t>(absl::ToInt64Milliseconds(config_.initial));
  uint64_t max = static_cast<uint64_t>(absl::ToInt64Milliseconds(config_.max));
  step_ms_ = step_ms_ == 0 ? initial : std::min(max, step_ms_ * 2);
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(getpid()));
  std::uniform_real_distribution<double> jitter(0.5, 1.5);
  return static_cast<uint64_t>(static_cast<double>(step_ms_) * jitter(rng));
}

}  // namespace rdv
