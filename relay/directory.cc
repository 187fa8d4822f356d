#include "relay/directory.h"

#include <algorithm>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/metrics.h"
#include "common/str_cat.h"

namespace rdv {
namespace {

std::string_view PolicyOf(const link::ServiceSpec& service) {
  return service.balance().empty() ? kBalanceRoundRobin : std::string_view(service.balance());
}

bool IsKnownPolicy(std::string_view policy) {
  return policy == kBalanceRoundRobin || policy == kBalanceLeastStreams ||
         policy == kBalanceClientIpHash;
}

// Rendezvous (highest random weight) hashing: each client IP ranks the members by a hash of
// (ip, member) and takes the top one, so a member leaving moves only the clients it had.
// FNV-1a with a final mix: stable across processes, unlike absl::Hash.
uint64_t RendezvousScore(std::string_view client_ip, std::string_view agent) {
  uint64_t hash = 14695981039346656037ull;
  auto feed = [&](std::string_view bytes) {
    for (unsigned char c : bytes) {
      hash ^= c;
      hash *= 1099511628211ull;
    }
  };
  feed(client_ip);
  feed(std::string_view("\0", 1));
  feed(agent);
  hash ^= hash >> 33;
  hash *= 0xff51afd7ed558ccdull;
  hash ^= hash >> 33;
  return hash;
}

std::string KindLabel(link::ServiceKind kind) {
  return absl::AsciiStrToLower(link::ServiceKind_Name(kind));
}

}  // namespace

std::string InMemoryDirectory::Key(link::ServiceKind kind, const std::string& name) {
  return StrCat(static_cast<int>(kind), "/", name);
}

std::string InMemoryDirectory::KeyOf(const link::ServiceSpec& service) {
  return Key(service.kind(), service.kind() == link::PAIR ? service.pair_id() : service.name());
}

std::string InMemoryDirectory::AgentKey(const StreamCarrier& carrier) {
  if (!carrier.agent().empty()) return StrCat("agent:", carrier.agent());
  return StrCat("link:", reinterpret_cast<uintptr_t>(&carrier));
}

bool InMemoryDirectory::IsHealthy(const Entry& entry, const std::string& agent) {
  auto it = entry.healthy.find(agent);
  return it == entry.healthy.end() || it->second;
}

void InMemoryDirectory::UpdateHealthGauge(const Entry& entry) {
  int64_t unhealthy = 0;
  for (const auto& [agent, healthy] : entry.healthy) unhealthy += healthy ? 0 : 1;
  GaugeOf("rdv_service_unhealthy", "Agents of a service whose target is reported unhealthy",
          StrCat("kind=\"", KindLabel(entry.service.kind()), "\",service=\"", entry.service.name(),
                 "\""))
      .Set(unhealthy);
}

absl::Status InMemoryDirectory::Claim(const link::ServiceSpec& service, const std::string& alias,
                                      StreamCarrier& carrier) {
  absl::MutexLock lock(&mu_);
  std::string key = KeyOf(service);
  std::string_view policy = PolicyOf(service);
  if (!IsKnownPolicy(policy)) {
    return absl::InvalidArgumentError(StrCat("unknown balance policy '", policy, "'"));
  }
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second.credential != carrier.credential()) {
    if (service.kind() == link::PAIR) {
      return absl::AlreadyExistsError(
          StrCat("pair ", service.name(), " (this pairing secret) is held by another credential"));
    }
    return absl::AlreadyExistsError(StrCat(service.name(), " is held by another credential"));
  }
  if (it != entries_.end()) {
    const Entry& group = it->second;
    // Links of the same agent do not count: an agent restarted with another policy replaces
    // its own stale links' choice.
    std::string agent = AgentKey(carrier);
    bool others = std::any_of(group.members.begin(), group.members.end(),
                              [&](const Member& m) { return m.agent != agent; });
    if (others && PolicyOf(group.service) != policy) {
      return absl::FailedPreconditionError(
          StrCat(service.name(), " is balanced ", PolicyOf(group.service),
                 " by the agents serving it; this agent asks ", policy));
    }
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
  entry.service.set_balance(std::string(policy));
  entry.credential = carrier.credential();
  bool present = std::any_of(entry.members.begin(), entry.members.end(),
                             [&](const Member& m) { return m.carrier == &carrier; });
  if (!present) entry.members.push_back(Member{&carrier, carrier.worker(), AgentKey(carrier)});
  if (!alias_host.empty()) http_alias_[alias_host] = key;
  return absl::OkStatus();
}

bool InMemoryDirectory::RemoveMember(Entry& entry, const StreamCarrier& carrier) {
  size_t removed =
      std::erase_if(entry.members, [&](const Member& m) { return m.carrier == &carrier; });
  if (removed == 0) return false;
  // The agent's last link gone: forget its report, a returning agent reports afresh.
  std::string agent = AgentKey(carrier);
  bool agent_left = std::none_of(entry.members.begin(), entry.members.end(),
                                 [&](const Member& m) { return m.agent == agent; });
  if (agent_left) {
    entry.next_link.erase(agent);
    if (entry.healthy.erase(agent) > 0) UpdateHealthGauge(entry);
  }
  return true;
}

void InMemoryDirectory::Release(StreamCarrier& carrier) {
  absl::MutexLock lock(&mu_);
  for (auto& [key, entry] : entries_) RemoveMember(entry, carrier);
}

bool InMemoryDirectory::Withdraw(const link::ServiceSpec& service, StreamCarrier& carrier) {
  absl::MutexLock lock(&mu_);
  if (service.kind() == link::PAIR && service.pair_id().empty()) {
    bool removed = false;
    for (auto& [key, entry] : entries_) {
      if (entry.service.kind() == link::PAIR && entry.service.name() == service.name()) {
        removed |= RemoveMember(entry, carrier);
      }
    }
    return removed;
  }
  auto it = entries_.find(KeyOf(service));
  return it != entries_.end() && RemoveMember(it->second, carrier);
}

absl::StatusOr<bool> InMemoryDirectory::SetHealth(const StreamCarrier& carrier,
                                                  link::ServiceKind kind, const std::string& name,
                                                  bool healthy) {
  absl::MutexLock lock(&mu_);
  auto serves = [&](const Entry& entry) {
    return std::any_of(entry.members.begin(), entry.members.end(),
                       [&](const Member& m) { return m.carrier == &carrier; });
  };
  // ServiceHealth names a pair by its name, which is not its key: the link's pair of that name.
  std::vector<Entry*> matched;
  if (auto it = entries_.find(Key(kind, name)); it != entries_.end() && serves(it->second)) {
    matched.push_back(&it->second);
  } else if (kind == link::PAIR) {
    for (auto& [key, entry] : entries_) {
      if (entry.service.kind() == link::PAIR && entry.service.name() == name && serves(entry)) {
        matched.push_back(&entry);
      }
    }
  }
  if (matched.empty()) return absl::NotFoundError(StrCat(name, " is not registered on this link"));
  std::string agent = AgentKey(carrier);
  bool changed = false;
  for (Entry* entry : matched) {
    changed |= IsHealthy(*entry, agent) != healthy;
    entry->healthy[agent] = healthy;
    UpdateHealthGauge(*entry);
  }
  return changed;
}

InMemoryDirectory::Entry* InMemoryDirectory::Find(link::ServiceKind kind, const std::string& name) {
  if (auto it = entries_.find(Key(kind, name)); it != entries_.end()) return &it->second;
  if (kind == link::TCP || kind == link::UDP || IsTunnelKind(kind)) return nullptr;
  if (kind == link::HTTP) {
    if (auto it = http_alias_.find(name); it != http_alias_.end()) {
      auto entry = entries_.find(it->second);
      if (entry != entries_.end()) return &entry->second;
    }
  }
  // Longest wildcard: try "*.b.c" before "*.c" for host "a.b.c".
  for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
    auto it = entries_.find(Key(kind, StrCat("*", name.substr(dot))));
    if (it != entries_.end()) return &it->second;
  }
  return nullptr;
}

RouteResult InMemoryDirectory::Pick(Entry& entry, int worker, std::string_view client_ip) {
  RouteResult result;
  result.service = entry.service;
  result.outcome = RouteResult::Outcome::kNoLink;
  if (entry.members.empty()) return result;

  // 1. The healthy agents, in order of first registration, with their links.
  struct Candidate {
    const std::string* agent;
    std::vector<const Member*> links;
    size_t streams = 0;
  };
  std::vector<Candidate> agents;
  for (const Member& member : entry.members) {
    if (!IsHealthy(entry, member.agent)) continue;
    auto it = std::find_if(agents.begin(), agents.end(),
                           [&](const Candidate& c) { return *c.agent == member.agent; });
    if (it == agents.end()) it = agents.insert(agents.end(), Candidate{&member.agent, {}, 0});
    it->links.push_back(&member);
    it->streams += member.carrier->open_streams();
  }
  if (agents.empty()) {
    static Counter& unhealthy =
        CounterOf("rdv_route_all_unhealthy_total",
                  "Connections refused because every agent of their service reported it unhealthy");
    unhealthy.Inc();
    result.unhealthy = true;
    return result;
  }

  // 2. The policy picks an agent.
  std::string_view policy = PolicyOf(entry.service);
  size_t pick = 0;
  if (policy == kBalanceClientIpHash && !client_ip.empty()) {
    uint64_t best = 0;
    for (size_t i = 0; i < agents.size(); ++i) {
      uint64_t score = RendezvousScore(client_ip, *agents[i].agent);
      if (i == 0 || score > best) {
        best = score;
        pick = i;
      }
    }
  } else if (policy == kBalanceLeastStreams) {
    // Fewest open streams; the agents tied for it take turns, so an idle group is spread
    // exactly like round robin.
    size_t least = std::numeric_limits<size_t>::max();
    for (const Candidate& candidate : agents) least = std::min(least, candidate.streams);
    std::vector<size_t> tied;
    for (size_t i = 0; i < agents.size(); ++i) {
      if (agents[i].streams == least) tied.push_back(i);
    }
    pick = tied[entry.next++ % tied.size()];
  } else {
    pick = entry.next++ % agents.size();
  }

  // 3. One of that agent's links: those on the caller's worker first (no hand-off); the least
  // loaded for least_streams, else in turn.
  std::vector<const Member*>& links = agents[pick].links;
  std::vector<const Member*> local;
  for (const Member* link : links) {
    if (link->worker == worker) local.push_back(link);
  }
  std::vector<const Member*>& choice = local.empty() ? links : local;
  const Member* chosen = choice[entry.next_link[*agents[pick].agent]++ % choice.size()];
  if (policy == kBalanceLeastStreams) {
    for (const Member* link : choice) {
      if (link->carrier->open_streams() < chosen->carrier->open_streams()) chosen = link;
    }
  }
  result.outcome = RouteResult::Outcome::kFound;
  result.carrier = chosen->carrier;
  result.worker = chosen->worker;
  return result;
}

RouteResult InMemoryDirectory::RouteHost(link::ServiceKind kind, const std::string& host,
                                         int worker, std::string_view client_ip) {
  absl::MutexLock lock(&mu_);
  Entry* entry = Find(kind, host);
  if (entry == nullptr) return RouteResult{};
  return Pick(*entry, worker, client_ip);
}

RouteResult InMemoryDirectory::RouteService(link::ServiceKind kind, const std::string& name,
                                            int worker, std::string_view client_ip) {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(Key(kind, name));
  if (it == entries_.end()) return RouteResult{};
  return Pick(it->second, worker, client_ip);
}

RouteResult InMemoryDirectory::Reroute(link::ServiceKind kind, const std::string& name, int worker,
                                       std::string_view client_ip, const StreamCarrier* chosen) {
  absl::MutexLock lock(&mu_);
  Entry* entry = Find(kind, name);
  if (entry == nullptr) return RouteResult{};
  for (const Member& member : entry->members) {
    if (member.carrier == chosen && member.worker == worker && IsHealthy(*entry, member.agent)) {
      RouteResult result;
      result.outcome = RouteResult::Outcome::kFound;
      result.service = entry->service;
      result.carrier = member.carrier;
      result.worker = member.worker;
      return result;
    }
  }
  return Pick(*entry, worker, client_ip);
}

RouteResult InMemoryDirectory::Lookup(link::ServiceKind kind, const std::string& name) {
  absl::MutexLock lock(&mu_);
  Entry* entry = Find(kind, name);
  if (entry == nullptr) return RouteResult{};
  RouteResult result;
  result.service = entry->service;
  result.outcome =
      entry->members.empty() ? RouteResult::Outcome::kNoLink : RouteResult::Outcome::kFound;
  return result;
}

std::vector<link::ServiceSpec> InMemoryDirectory::TunnelServices() {
  absl::MutexLock lock(&mu_);
  std::vector<link::ServiceSpec> services;
  for (const auto& [key, entry] : entries_) {
    if (IsTunnelKind(entry.service.kind()) && !entry.members.empty()) {
      services.push_back(entry.service);
    }
  }
  return services;
}

size_t InMemoryDirectory::ForgetClaims(
    absl::FunctionRef<bool(const std::string& credential, const link::ServiceSpec& service)> keep) {
  absl::MutexLock lock(&mu_);
  size_t forgotten = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    Entry& entry = it->second;
    if (keep(entry.credential, entry.service)) {
      ++it;
      continue;
    }
    if (!entry.healthy.empty()) {
      entry.healthy.clear();
      UpdateHealthGauge(entry);
    }
    std::erase_if(http_alias_, [&](const auto& alias) { return alias.second == it->first; });
    it = entries_.erase(it);
    ++forgotten;
  }
  return forgotten;
}

std::vector<RouteResult> InMemoryDirectory::OtherPairHolders(const std::string& name,
                                                             const std::string& pair_id) {
  absl::MutexLock lock(&mu_);
  std::vector<RouteResult> holders;
  for (const auto& [key, entry] : entries_) {
    if (entry.service.kind() != link::PAIR || entry.service.name() != name ||
        entry.service.pair_id() == pair_id) {
      continue;
    }
    std::vector<const std::string*> agents;  // one link per agent: each is told once
    for (const Member& member : entry.members) {
      if (std::any_of(agents.begin(), agents.end(),
                      [&](const std::string* agent) { return *agent == member.agent; })) {
        continue;
      }
      agents.push_back(&member.agent);
      RouteResult holder;
      holder.outcome = RouteResult::Outcome::kFound;
      holder.service = entry.service;
      holder.carrier = member.carrier;
      holder.worker = member.worker;
      holders.push_back(std::move(holder));
    }
  }
  return holders;
}

}  // namespace rdv
