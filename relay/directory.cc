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
  std::string key = Key(service.kind(), service.name());
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.credential != carrier.credential()) {
    return absl::AlreadyExistsError(
        StrCat(service.name(), " is held by another credential"));
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
  if (std::find(entry.carriers.begin(), entry.carriers.end(), &carrier) == entry.carriers.end()) {
    entry.carriers.push_back(&carrier);
  }
  if (!alias_host.empty()) http_alias_[alias_host] = key;
  return absl::OkStatus();
}

void InMemoryDirectory::Release(StreamCarrier& carrier) {
  for (auto& [key, entry] : entries_) {
    auto& list = entry.carriers;
    list.erase(std::remove(list.begin(), list.end(), &carrier), list.end());
  }
}

RouteResult InMemoryDirectory::Pick(Entry& entry) {
  RouteResult result;
  result.service = entry.service;
  if (entry.carriers.empty()) {
    result.outcome = RouteResult::Outcome::kNoLink;
    return result;
  }
  result.outcome = RouteResult::Outcome::kFound;
  result.carrier = entry.carriers[entry.next++ % entry.carriers.size()];
  return result;
}

RouteResult InMemoryDirectory::RouteHttp(const std::string& host) {
  if (auto it = entries_.find(Key(link::HTTP, host)); it != entries_.end()) {
    return Pick(it->second);
  }
  if (auto it = http_alias_.find(host); it != http_alias_.end()) {
    return Pick(entries_[it->second]);
  }
  // Longest wildcard: try "*.b.c" before "*.c" for host "a.b.c".
  for (size_t dot = host.find('.'); dot != std::string::npos; dot = host.find('.', dot + 1)) {
    auto it = entries_.find(Key(link::HTTP, StrCat("*", host.substr(dot))));
    if (it != entries_.end()) return Pick(it->second);
  }
  return RouteResult{};
}

RouteResult InMemoryDirectory::RouteService(link::ServiceKind kind, const std::string& name) {
  auto it = entries_.find(Key(kind, name));
  if (it == entries_.end()) return RouteResult{};
  return Pick(it->second);
}

}  // namespace rdv
