#include "relay/smtp_entrypoint.h"

#include "spdlog/spdlog.h"

namespace rdv {

void ServeSmtpEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client) {
  spdlog::warn("smtp entrypoint: not served yet; closing {}", client->peer_address());
  client->Close();
}

}  // namespace rdv
