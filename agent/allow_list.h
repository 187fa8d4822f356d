// Where the serving end of a tunnel lets a connecting end's streams go (service `allow`): a list
// of rules, each a CIDR block and optionally a set of ports. A destination is allowed when one
// rule holds both its address and its port. An empty list allows nothing.
#ifndef RDV_AGENT_ALLOW_LIST_H_
#define RDV_AGENT_ALLOW_LIST_H_

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/auth.h"

namespace rdv {

struct PortRange {
  uint16_t low = 0;  // inclusive, 1..65535
  uint16_t high = 0;

  friend bool operator==(const PortRange&, const PortRange&) = default;
};

// "22,80,8000-8100" -> {22-22, 80-80, 8000-8100}. Spaces around items are ignored; ports are
// 1..65535 and a range's low end is not above its high end. Errors carry no location.
absl::StatusOr<std::vector<PortRange>> ParsePortList(std::string_view text);

class AllowList {
 public:
  // `network` as NetworkList::Add takes it ("192.168.50.0/24", "::1/128", a bare address);
  // `ports` empty = every port.
  absl::Status Add(std::string_view network, std::vector<PortRange> ports);

  bool empty() const { return rules_.empty(); }
  size_t size() const { return rules_.size(); }
  // AF_INET/AF_INET6 address with its port; IPv4-mapped IPv6 addresses match IPv4 blocks.
  bool Allows(const sockaddr* address) const;

 private:
  struct Rule {
    NetworkList network;  // exactly one block
    std::vector<PortRange> ports;
  };
  std::vector<Rule> rules_;
};

}  // namespace rdv

#endif  // RDV_AGENT_ALLOW_LIST_H_
