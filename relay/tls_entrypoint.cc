#include "relay/tls_entrypoint.h"

#include "spdlog/spdlog.h"

namespace rdv {

void ServeTlsEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client) {
  spdlog::warn("tls entrypoint: not served yet; closing {}", client->peer_address());
  client->Close();
}

}  // namespace rdv
