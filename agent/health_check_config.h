// A service's `health_check` section (docs/configuration.md). Off unless the section is
// present; `health_check: {}` checks with every default.
#ifndef RDV_AGENT_HEALTH_CHECK_CONFIG_H_
#define RDV_AGENT_HEALTH_CHECK_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/yaml_config.h"

namespace rdv {

struct HealthCheckConfig {
  enum class Kind { kTcp, kHttp };
  Kind kind = Kind::kTcp;  // tcp: the connect succeeds; http: GET `path` answers expect_status
  absl::Duration interval = absl::Milliseconds(2000);  // from the start of one check to the next
  absl::Duration timeout = absl::Milliseconds(1000);   // < interval
  std::string path = "/";                              // http: request target, starts with '/'
  uint32_t expect_status = 0;        // http: the status required; 0 = any 2xx or 3xx
  std::string host;                  // http: Host header; "" = the service name (or target host)
  uint32_t healthy_threshold = 1;    // consecutive passes that make an unhealthy target healthy
  uint32_t unhealthy_threshold = 2;  // consecutive failures that make a healthy one unhealthy
};

// Reads a `health_check` map; errors name file:line and the key.
absl::StatusOr<HealthCheckConfig> ParseHealthCheckConfig(const YamlValue& value);

}  // namespace rdv

#endif  // RDV_AGENT_HEALTH_CHECK_CONFIG_H_
