#include "relay/proxy_entrypoint.h"

#include "spdlog/spdlog.h"

namespace rdv {

void ServeProxyEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client) {
  spdlog::warn("proxy entrypoint: not served yet; closing {}", client->peer_address());
  client->Close();
}

}  // namespace rdv
