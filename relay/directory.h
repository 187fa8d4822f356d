// Which agent links serve which virtual address.
//
// The relay's routing asks this interface only, so a cluster-wide directory (DESIGN §6: etcd,
// forwarding to the replica holding the link) can replace the in-memory one without touching
// the entrypoints.
//
// Claims are per credential and outlive the links that made them (until the relay restarts):
// a name held by one credential is never handed to another, and a known name whose agents are
// all away answers 503 rather than 404.
#ifndef RDV_RELAY_DIRECTORY_H_
#define RDV_RELAY_DIRECTORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "proto/link.pb.h"

namespace rdv {

// A relay-side agent link that can carry streams (implemented by AgentLink). It lives on one
// worker loop and may only be used from that loop.
class StreamCarrier {
 public:
  virtual ~StreamCarrier() = default;
  virtual const std::string& credential() const = 0;
  virtual int worker() const = 0;
};

struct RouteResult {
  enum class Outcome { kFound, kUnknown, kNoLink };
  Outcome outcome = Outcome::kUnknown;
  link::ServiceSpec service;  // the registered service that matched
  // Valid to use only when `worker` is the caller's own worker; otherwise the caller hands the
  // connection to `worker`, which routes again there.
  StreamCarrier* carrier = nullptr;
  int worker = -1;
};

class Directory {
 public:
  virtual ~Directory() = default;
  // Records that `carrier` serves `service` (kind+name; for http also `alias`). Fails with
  // AlreadyExists when another credential holds the name.
  virtual absl::Status Claim(const link::ServiceSpec& service, const std::string& alias,
                             StreamCarrier& carrier) = 0;
  // Forgets every registration of `carrier` (its claims remain with the credential).
  virtual void Release(StreamCarrier& carrier) = 0;
  // Routes an HTTP host (already normalized: lowercase, no port): exact name, then
  // `<alias>.<zone>`, then the longest matching `*.suffix`. Among the links serving the name,
  // those on `worker` are preferred (no hand-off), round robin within the choice.
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
};

// Single-relay directory held in memory, shared by the worker loops.
class InMemoryDirectory : public Directory {
 public:
  explicit InMemoryDirectory(std::string zone) : zone_(std::move(zone)) {}

  absl::Status Claim(const link::ServiceSpec& service, const std::string& alias,
                     StreamCarrier& carrier) override;
  void Release(StreamCarrier& carrier) override;
  RouteResult RouteHost(link::ServiceKind kind, const std::string& host, int worker,
                        std::string_view client_ip) override;
  RouteResult RouteService(link::ServiceKind kind, const std::string& name, int worker,
                           std::string_view client_ip) override;

 private:
  struct Member {
    StreamCarrier* carrier;
    int worker;
  };
  struct Entry {
    link::ServiceSpec service;
    std::string credential;
    std::vector<Member> members;
    size_t next = 0;  // round robin cursor
  };
  static std::string Key(link::ServiceKind kind, const std::string& name);
  RouteResult Pick(Entry& entry, int worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string zone_;
  absl::Mutex mu_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);           // Key(kind, name) -> entry
  std::map<std::string, std::string> http_alias_ ABSL_GUARDED_BY(mu_);  // "<alias>.<zone>" -> Key
};

}  // namespace rdv

#endif  // RDV_RELAY_DIRECTORY_H_
