#include "agent/allow_list.h"

#include <netinet/in.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/str_cat.h"

namespace rdv {
namespace {

absl::StatusOr<uint16_t> ParsePort(std::string_view text, std::string_view item) {
  uint32_t port = 0;
  bool digits = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return absl::ascii_isdigit(static_cast<unsigned char>(c));
  });
  if (!digits || text.size() > 5 || !absl::SimpleAtoi(AbslView(text), &port) || port == 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid port '", AbslView(item), "': expected 1-65535 or a range like 8000-8100"));
  }
  return static_cast<uint16_t>(port);
}

}  // namespace

absl::StatusOr<std::vector<PortRange>> ParsePortList(std::string_view text) {
  std::vector<PortRange> ranges;
  for (absl::string_view raw : absl::StrSplit(AbslView(text), ',')) {
    absl::string_view stripped = absl::StripAsciiWhitespace(raw);
    std::string_view item(stripped.data(), stripped.size());
    size_t dash = item.find('-');
    std::string_view low_text = dash == std::string_view::npos ? item : item.substr(0, dash);
    std::string_view high_text = dash == std::string_view::npos ? item : item.substr(dash + 1);
    absl::StatusOr<uint16_t> low = ParsePort(low_text, item);
    if (!low.ok()) return low.status();
    absl::StatusOr<uint16_t> high = ParsePort(high_text, item);
    if (!high.ok()) return high.status();
    if (*low > *high) {
      return absl::InvalidArgumentError(absl::StrCat("invalid port range '", AbslView(item),
                                                     "': the first port is above the last"));
    }
    ranges.push_back({*low, *high});
  }
  return ranges;
}

absl::Status AllowList::Add(std::string_view network, std::vector<PortRange> ports) {
  Rule rule;
  if (absl::Status s = rule.network.Add(network); !s.ok()) return s;
  rule.ports = std::move(ports);
  rules_.push_back(std::move(rule));
  return absl::OkStatus();
}

bool AllowList::Allows(const sockaddr* address) const {
  if (address == nullptr) return false;
  uint16_t port = 0;
  if (address->sa_family == AF_INET) {
    port = ntohs(reinterpret_cast<const sockaddr_in*>(address)->sin_port);
  } else if (address->sa_family == AF_INET6) {
    port = ntohs(reinterpret_cast<const sockaddr_in6*>(address)->sin6_port);
  } else {
    return false;
  }
  for (const Rule& rule : rules_) {
    if (!rule.network.Contains(address)) continue;
    if (rule.ports.empty()) return true;
    for (const PortRange& range : rule.ports) {
      if (range.low <= port && port <= range.high) return true;
    }
  }
  return false;
}

}  // namespace rdv
