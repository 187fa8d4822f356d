// The relay process: listeners, agent links, entrypoints and the admin endpoint on one loop.
//
// Connections arrive on the agent listener (-> AgentLink), the HTTP entrypoint (-> HttpSession),
// tcp service ports (-> StreamSplice onto a stream of an agent serving that service) and the
// admin listener (-> AdminSession). Routing goes through the Directory interface only.
#ifndef RDV_RELAY_RELAY_H_
#define RDV_RELAY_RELAY_H_

#include <uv.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/tcp_listener.h"
#include "common/tls.h"
#include "relay/agent_link.h"
#include "relay/directory.h"
#include "relay/relay_config.h"

namespace rdv {

// A client-facing session the relay owns until it finishes (HTTP, tcp splice, admin).
class RelaySession {
 public:
  virtual ~RelaySession() = default;
};

class Relay {
 public:
  static absl::StatusOr<std::unique_ptr<Relay>> Create(RelayConfig config, uv_loop_t* loop);
  ~Relay();

  // Starts listening; logs "listening <role> <addr>" for each socket.
  absl::Status Start();
  // Graceful stop: GoAway to agents, stop accepting, close everything; the loop then ends.
  void Shutdown();

  const RelayConfig& config() const { return config_; }
  uv_loop_t* loop() const { return loop_; }
  LoopTasks& tasks() { return tasks_; }
  Directory& directory() { return *directory_; }
  const std::string& fingerprint() const { return identity_.fingerprint_hex; }

  // Binds (once) the relay port of tcp service `service` and returns it. PermissionDenied when
  // the credential may not have it.
  absl::StatusOr<uint16_t> EnsureTcpPort(const std::string& service, uint16_t requested,
                                         const CredentialConfig& credential);
  std::vector<std::string> RoutesFor(const link::ServiceSpec& service, const std::string& alias);
  size_t LinksOf(const std::string& credential) const;
  void LinkClosed(AgentLink& link);

  // Takes ownership of a client session; Finish() destroys it after the current callbacks.
  void Adopt(std::unique_ptr<RelaySession> session);
  void Finish(RelaySession* session);

 private:
  Relay(RelayConfig config, uv_loop_t* loop);
  absl::Status ListenAll(const std::vector<HostPort>& addresses, const std::string& role,
                         TcpListener::AcceptCallback on_accept);
  void AcceptAgent(uv_stream_t* server);
  void AcceptTcpClient(uv_stream_t* server, const std::string& service, uint16_t port);
  absl::Status BindTcpService(const std::string& service, uint16_t port);

  RelayConfig config_;
  uv_loop_t* loop_;
  LoopTasks tasks_;
  ServerTlsIdentity identity_;
  std::unique_ptr<Directory> directory_;
  std::vector<std::unique_ptr<TcpListener>> listeners_;
  std::map<std::string, uint16_t> tcp_ports_;   // service -> bound relay port
  std::set<uint16_t> ports_in_use_;
  absl::flat_hash_map<AgentLink*, std::unique_ptr<AgentLink>> links_;
  absl::flat_hash_map<RelaySession*, std::unique_ptr<RelaySession>> sessions_;
  uint64_t next_link_id_ = 1;
  uint16_t http_port_ = 0;
  bool shutting_down_ = false;
};

}  // namespace rdv

#endif  // RDV_RELAY_RELAY_H_
