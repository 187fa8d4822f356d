// A relay UDP port of a `udp` service (DESIGN §2, docs/protocol.md "Datagrams").
//
// 1. A datagram arrives on one of the port's sockets (one per `udp.bind` address, all on the
//    port's home worker loop).
// 2. Its client address ("ip:port") picks the session; a new address routes the service and
//    opens a flow (an Open of kind UDP carrying the client address) on the chosen agent link.
// 3. The datagram is handed to the session on the loop of that link's worker (directly when it
//    is the home worker, else posted once per datagram) and sent there as a DATAGRAM frame.
// 4. The agent's replies go back to the client from that loop with a non-blocking sendto() on the
//    socket the client used.
// 5. A session idle for udp.session_idle_timeout_ms resets its flow (the agent frees its side)
//    and is forgotten; so is one whose flow the agent refused or reset, or whose link was lost.
//
// Every drop is counted in rdv_udp_datagrams_dropped_total{reason=...}.
#ifndef RDV_RELAY_UDP_SERVICE_PORT_H_
#define RDV_RELAY_UDP_SERVICE_PORT_H_

#include <netinet/in.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "relay/directory.h"

namespace rdv {

class Relay;
class RelayWorker;
class UdpSocketSet;
class RelayUdpSession;

class UdpServicePort {
 public:
  // Binds `port` (0 = the kernel picks; further addresses follow the first) on every address
  // of `bind`, on `home`'s loop. Call on that loop (or before the workers run).
  static absl::StatusOr<std::unique_ptr<UdpServicePort>> Create(
      Relay& relay, RelayWorker& home, std::string service, uint16_t port,
      const std::vector<std::string>& bind);
  ~UdpServicePort();

  uint16_t port() const { return port_; }
  const std::vector<std::string>& addresses() const { return addresses_; }  // "ip:port"

  // Home loop: one datagram from `client` on socket `socket_index`.
  void OnClientDatagram(size_t socket_index, const sockaddr* client, std::string_view datagram);
  // Any loop: sends a reply to `client` from socket `socket_index`; false if dropped.
  bool SendToClient(size_t socket_index, const sockaddr_storage& client, std::string_view data);
  // A session ended: later datagrams from its client open a new one.
  void Forget(const std::string& client_key, uint64_t session_id);
  // The home worker closed the sockets (it is stopping).
  void SocketsClosed();

  // Sessions living on `worker`, touched only from that worker's loop.
  absl::flat_hash_map<uint64_t, RelayUdpSession*>& sessions_on(int worker) {
    return sessions_by_worker_[static_cast<size_t>(worker)];
  }
  const std::string& service() const { return service_; }

 private:
  struct Entry {
    int worker;
    uint64_t id;
  };
  UdpServicePort(Relay& relay, RelayWorker& home, std::string service);
  // On `worker`'s loop: deliver to session `id`, opening it first on `chosen` (the carrier the
  // home loop's route picked; null for an existing session).
  void Deliver(int worker, uint64_t id, const StreamCarrier* chosen, std::string client_key,
               sockaddr_storage client, size_t socket_index, std::string datagram);

  Relay& relay_;
  RelayWorker& home_;
  const std::string service_;
  uint16_t port_ = 0;
  std::vector<std::string> addresses_;
  UdpSocketSet* sockets_ = nullptr;  // owned by the home worker (closed when it stops)
  std::vector<absl::flat_hash_map<uint64_t, RelayUdpSession*>> sessions_by_worker_;

  absl::Mutex mu_;
  std::vector<int> fds_ ABSL_GUARDED_BY(mu_);  // -1 once closed; sendto from any loop
  absl::flat_hash_map<std::string, Entry> sessions_ ABSL_GUARDED_BY(mu_);  // by client "ip:port"
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool warned_no_agent_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace rdv

#endif  // RDV_RELAY_UDP_SERVICE_PORT_H_
