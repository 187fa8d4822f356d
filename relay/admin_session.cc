#include "relay/admin_session.h"

namespace rdv {
namespace {

std::optional<AdminResponse> RelayAdminRoute(std::string_view path) {
  if (path == "/metrics") return MetricsResponse();
  if (path == "/healthz") return AdminResponse{200, "text/plain", "ok\n"};
  return std::nullopt;
}

}  // namespace

AdminSession::AdminSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client)
    : http_(worker.loop(), std::move(client), RelayAdminRoute,
            [this, &worker](AdminHttpSession&) { worker.Finish(this); }) {}

}  // namespace rdv
