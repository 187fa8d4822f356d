// Which agent links serve which virtual address.
//
// The relay's routing asks this interface only, so a cluster-wide directory (DESIGN §6: etcd,
// forwarding to the replica holding the link) can replace the in-memory one without touching
// the entrypoints.
//
// Claims are per credential and outlive the links that made them (until the relay restarts):
// a name held by one credential is never handed to another, and a known name whose agents are
// all away answers 503 rather than 404.
//
// Load-balanced groups: every agent serving a name under its credential is a member of the
// name's group. Members are agents, not links (an agent keeps several links): the policy picks
// an agent, then one of that agent's links, preferring a link on the caller's worker. The
// group's policy (ServiceSpec.balance) is set by the first registration; while other agents
// are in the group, a registration asking another policy is refused. An agent that reported the
// service unhealthy (ServiceHealth) gets no new streams until it reports healthy again.
//
// Tunnel services (docs/protocol.md "Tunnels"): PRIVATE entries are keyed by name like tcp
// services, PAIR entries by their pair_id (the name is only their label), so a pair id is
// unique relay-wide. Only their own kind reaches them: host routing (aliases, wildcards) and
// the public entrypoints' kinds never match a tunnel entry.
#ifndef RDV_RELAY_DIRECTORY_H_
#define RDV_RELAY_DIRECTORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/link.h"
#include "proto/link.pb.h"

namespace rdv {

// A relay-side agent link that can carry streams (implemented by AgentLink). It lives on one
// worker loop and may only be used from that loop, except for the accessors below, which are
// safe from any thread.
class StreamCarrier {
 public:
  virtual ~StreamCarrier() = default;
  virtual const std::string& credential() const = 0;
  virtual int worker() const = 0;
  // The agent behind the link (Hello.agent_id): links of one agent are one member of a
  // load-balanced group. "" makes the link a member of its own.
  virtual const std::string& agent() const {
    static const std::string kNone;
    return kNone;
  }
  // Streams open on the link now (least_streams); thread-safe.
  virtual size_t open_streams() const { return 0; }
  // From the carrier's own worker loop: the agent behind the link takes tunnel data path offers
  // (Hello feature "tunnel-data", docs/protocol.md "Tunnel data path").
  virtual bool takes_tunnel_data() const { return false; }
  // From the carrier's own worker loop: opens a tunnel stream (docs/protocol.md "Tunnels") with
  // `open` as given (stream_id assigned here); nullptr when the carrier cannot take one now.
  virtual Stream* OpenTunnelStream(link::Open open, StreamHandler& handler) { return nullptr; }
  // From the carrier's own worker loop: tells the agent something about a tunnel service it
  // serves (a TunnelNotice control).
  virtual void SendTunnelNotice(const link::TunnelNotice& notice) {}
};

// The kinds reached only by agent-opened tunnel streams.
inline bool IsTunnelKind(link::ServiceKind kind) {
  return kind == link::PRIVATE || kind == link::PAIR;
}

struct RouteResult {
  enum class Outcome { kFound, kUnknown, kNoLink };
  Outcome outcome = Outcome::kUnknown;
  link::ServiceSpec service;  // the registered service that matched
  // Valid to use only when `worker` is the caller's own worker; otherwise the caller hands the
  // connection to `worker`, which calls Reroute() there with this carrier.
  StreamCarrier* carrier = nullptr;
  int worker = -1;
  // kNoLink because every member reported the service unhealthy (not because none is linked).
  bool unhealthy = false;
};

// The balance policies (ServiceSpec.balance); "" means round robin.
inline constexpr std::string_view kBalanceRoundRobin = "round_robin";
inline constexpr std::string_view kBalanceLeastStreams = "least_streams";
inline constexpr std::string_view kBalanceClientIpHash = "client_ip_hash";

class Directory {
 public:
  virtual ~Directory() = default;
  // Records that `carrier` serves `service` (kind+name; for http also `alias`). Fails with
  // AlreadyExists when another credential holds the name, InvalidArgument for an unknown
  // balance policy, FailedPrecondition when other agents of the group use another policy.
  virtual absl::Status Claim(const link::ServiceSpec& service, const std::string& alias,
                             StreamCarrier& carrier) = 0;
  // Forgets every registration of `carrier` (its claims remain with the credential).
  virtual void Release(StreamCarrier& carrier) = 0;
  // Forgets `carrier`'s registration of `service` (kind and name; a PAIR by its pair_id, or by
  // name when pair_id is empty), as Release does for all of them. Returns whether there was one.
  virtual bool Withdraw(const link::ServiceSpec& service, StreamCarrier& carrier) = 0;
  // The agent behind `carrier` reports the health of (kind, name) (already normalized). Applies
  // to every link of that agent. Returns whether the agent's state changed (true for a first
  // unhealthy report); NotFound when `carrier` does not serve the name.
  virtual absl::StatusOr<bool> SetHealth(const StreamCarrier& carrier, link::ServiceKind kind,
                                         const std::string& name, bool healthy) = 0;
  // Routes an HTTP host (already normalized: lowercase, no port): exact name, then
  // `<alias>.<zone>`, then the longest matching `*.suffix`. The service's policy picks the
  // member; among its links those on `worker` are preferred (no hand-off).
  RouteResult RouteHttp(const std::string& host, int worker, std::string_view client_ip) {
    return RouteHost(link::HTTP, host, worker, client_ip);
  }
  // Routes a host name of `kind` (http, tls: SNI, smtp: recipient domain): exact name, then
  // (http only) `<alias>.<zone>`, then the longest matching `*.suffix`.
  // `client_ip` (an address literal, "" when unknown) feeds the client_ip_hash balance policy.
  virtual RouteResult RouteHost(link::ServiceKind kind, const std::string& host, int worker,
                                std::string_view client_ip) = 0;
  // Routes a tcp or udp service by name.
  virtual RouteResult RouteService(link::ServiceKind kind, const std::string& name, int worker,
                                   std::string_view client_ip) = 0;
  // On the worker a client was handed to: `chosen` (the carrier the first route picked) when
  // it still serves `name` healthily on `worker`, so the policy is not applied twice; else a
  // fresh route. `name` is a host (http/tls/smtp) or a service name (tcp/udp).
  virtual RouteResult Reroute(link::ServiceKind kind, const std::string& name, int worker,
                              std::string_view client_ip, const StreamCarrier* chosen) = 0;
  // Matches like RouteHost/RouteService without picking a member (carrier stays null): for a
  // connection that already holds a stream and asks whether a request stays on it.
  virtual RouteResult Lookup(link::ServiceKind kind, const std::string& name) = 0;

  // Routes a pair by its pair_id (Reroute takes the pair_id as the name too).
  RouteResult RoutePair(const std::string& pair_id, int worker, std::string_view client_ip) {
    return RouteService(link::PAIR, pair_id, worker, client_ip);
  }
  // The registered PRIVATE and PAIR services that have at least one member now (what a relay
  // registers with its upstream).
  virtual std::vector<link::ServiceSpec> TunnelServices() = 0;
  // One link per agent holding a PAIR labelled `name` under a pair_id other than `pair_id`:
  // whom to tell that someone asked for the name with another pairing secret. Each carrier is
  // valid to use only on its `worker`, and only if it is still listed when used there.
  virtual std::vector<RouteResult> OtherPairHolders(const std::string& name,
                                                    const std::string& pair_id) = 0;
  // After a configuration reload: forgets every claim for which `keep(credential, service)` is
  // false (its credential was removed, or no longer grants the name), with its members, whose
  // links the relay then closes or sends GoAway. Returns how many were forgotten.
  virtual size_t ForgetClaims(
      absl::FunctionRef<bool(const std::string& credential, const link::ServiceSpec& service)>
          keep) = 0;
};

// Single-relay directory held in memory, shared by the worker loops.
class InMemoryDirectory : public Directory {
 public:
  explicit InMemoryDirectory(std::string zone) : zone_(std::move(zone)) {}

  absl::Status Claim(const link::ServiceSpec& service, const std::string& alias,
                     StreamCarrier& carrier) override;
  void Release(StreamCarrier& carrier) override;
  bool Withdraw(const link::ServiceSpec& service, StreamCarrier& carrier) override;
  absl::StatusOr<bool> SetHealth(const StreamCarrier& carrier, link::ServiceKind kind,
                                 const std::string& name, bool healthy) override;
  RouteResult RouteHost(link::ServiceKind kind, const std::string& host, int worker,
                        std::string_view client_ip) override;
  RouteResult RouteService(link::ServiceKind kind, const std::string& name, int worker,
                           std::string_view client_ip) override;
  RouteResult Reroute(link::ServiceKind kind, const std::string& name, int worker,
                      std::string_view client_ip, const StreamCarrier* chosen) override;
  RouteResult Lookup(link::ServiceKind kind, const std::string& name) override;
  std::vector<link::ServiceSpec> TunnelServices() override;
  std::vector<RouteResult> OtherPairHolders(const std::string& name,
                                            const std::string& pair_id) override;
  size_t ForgetClaims(
      absl::FunctionRef<bool(const std::string& credential, const link::ServiceSpec& service)> keep)
      override;

 private:
  struct Member {  // one link
    StreamCarrier* carrier;
    int worker;
    std::string agent;  // group member key: the agent id, or the link's own key
  };
  struct Entry {
    link::ServiceSpec service;
    std::string credential;
    std::vector<Member> members;
    std::map<std::string, bool> healthy;      // agent key -> last report; absent = healthy
    size_t next = 0;                          // round robin cursor over agents
    std::map<std::string, size_t> next_link;  // agent key -> round robin cursor over its links
  };
  static std::string Key(link::ServiceKind kind, const std::string& name);
  // The key `service` is claimed under: a PAIR's pair_id, else its name.
  static std::string KeyOf(const link::ServiceSpec& service);
  // Removes `carrier` from `entry`; forgets its agent's health report when that was the
  // agent's last link. Returns whether it was a member.
  static bool RemoveMember(Entry& entry, const StreamCarrier& carrier);
  static std::string AgentKey(const StreamCarrier& carrier);
  static bool IsHealthy(const Entry& entry, const std::string& agent);
  Entry* Find(link::ServiceKind kind, const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  RouteResult Pick(Entry& entry, int worker, std::string_view client_ip)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void UpdateHealthGauge(const Entry& entry);

  const std::string zone_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);           // Key(kind, name) -> entry
  std::map<std::string, std::string> http_alias_ ABSL_GUARDED_BY(mu_);  // "<alias>.<zone>" -> Key
};

}  // namespace rdv

#endif  // RDV_RELAY_DIRECTORY_H_
