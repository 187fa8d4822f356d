#include "relay/directory.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "common/str_cat.h"

namespace rdv {

std::string InMemoryDirectory::Key(link::ServiceKind kind, const std::string& name) {
  return StrCat(static_cast<int>(kind), "/", name);
}

absl::Status InMemoryDirectory::Claim(const link::ServiceSpec& service, const std::string& alias,
                                      StreamCarrier& carrier) {
  absl::MutexLock lock(&mu_);
  std::string key = Key(service.kind(), service.name());
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.credential != carrier.credential()) {
    return absl::AlreadyExistsError(StrCat(service.name(), " is held by another credential"));
  }
  std::string alias_host;
  if (service.kind() == link::HTTP && !alias.empty() && !zone_.empty()) {
    alias_host = StrCat(alias, ".", zone_);
    auto alias_it = http_alias_.find(alias_host);
    if (alias_it != http_alias_.end() && alias_it->second != key) {
      return absl::AlreadyExistsError(StrCat("alias ", alias_host, " is taken"));
    }
  }
  Entry& entry = entries_[key];
  entry.service = service;
  entry.credential = carrier.credential();
  bool present = std::any_of(entry.members.begin(), entry.members.end(),
                             [&](const Member& m) { return m.carrier == &carrier; });
  if (!present) entry.members.push_back(Member{&carrier, carrier.worker()});
  if (!alias_host.empty()) http_alias_[alias_host] = key;
  return absl::OkStatus();
}

void InMemoryDirectory::Release(StreamCarrier& carrier) {
  absl::MutexLock lock(&mu_);
  for (auto& [key, entry] : entries_) {
    std::erase_if(entry.members, [&](const Member& m) { return m.carrier == &carrier; });
  }
}

RouteResult InMemoryDirectory::Pick(Entry& entry, int worker) {
  RouteResult result;
  result.service = entry.service;
  if (entry.members.empty()) {
    result.outcome = RouteResult::Outcome::kNoLink;
    return result;
  }
  result.outcome = RouteResult::Outcome::kFound;
  // Prefer links on the caller's loop (no hand-off); round robin among whichever set is chosen.
  std::vector<const Member*> local;
  for (const Member& member : entry.members) {
    if (member.worker == worker) local.push_back(&member);
  }
  size_t turn = entry.next++;
  const Member& chosen =
      local.empty() ? entry.members[turn % entry.members.size()] : *local[turn % local.size()];
  result.carrier = chosen.carrier;
  result.worker = chosen.worker;
  return result;
}

RouteResult InMemoryDirectory::RouteHost(link::ServiceKind kind, const std::string& host,
                                         int worker, std::string_view client_ip) {
  absl::MutexLock lock(&mu_);
  if (auto it = entries_.find(Key(kind, host)); it != entries_.end()) {
    return Pick(it->second, worker);
  }
  if (kind == link::HTTP) {
    if (auto it = http_alias_.find(host); it != http_alias_.end()) {
      return Pick(entries_[it->second], worker);
    }
  }
  // Longest wildcard: try "*.b.c" before "*.c" for host "a.b.c".
  for (size_t dot = host.find('.'); dot != std::string::npos; dot = host.find('.', dot + 1)) {
    auto it = entries_.find(Key(kind, StrCat("*", host.substr(dot))));
    if (it != entries_.end()) return Pick(it->second, worker);
  }
  return RouteResult{};
}

RouteResult InMemoryDirectory::RouteService(link::ServiceKind kind, const std::string& name,
                                            int worker, std::string_view client_ip) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(Key(kind, name));
  if (it == entries_.end()) return RouteResult{};
  return Pick(it->second, worker);
}

}  // namespace rdv
