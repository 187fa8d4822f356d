// The tls entrypoint: see relay_config.h (TlsEntrypointConfig).
#ifndef RDV_RELAY_TLS_ENTRYPOINT_H_
#define RDV_RELAY_TLS_ENTRYPOINT_H_

#include <memory>

#include "common/tcp_connection.h"
#include "relay/relay_worker.h"

namespace rdv {

// Takes a client accepted on the tls entrypoint; the worker owns the session from then on.
void ServeTlsEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client);

}  // namespace rdv

#endif  // RDV_RELAY_TLS_ENTRYPOINT_H_
