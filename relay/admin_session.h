// One connection on the relay's admin listener: GET /metrics (Prometheus text), GET /healthz.
// The HTTP handling (limits, 400/404/405, the timeout) is common/admin_http.h; this is the
// relay's routes and the worker's ownership of the session.
#ifndef RDV_RELAY_ADMIN_SESSION_H_
#define RDV_RELAY_ADMIN_SESSION_H_

#include <memory>

#include "common/admin_http.h"
#include "common/tcp_connection.h"
#include "relay/relay_worker.h"

namespace rdv {

class AdminSession : public RelaySession {
 public:
  AdminSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client);
  void Start() { http_.Start(); }
  bool HoldsDrain() const override { return false; }

 private:
  AdminHttpSession http_;
};

}  // namespace rdv

#endif  // RDV_RELAY_ADMIN_SESSION_H_
