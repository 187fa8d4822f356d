#include "relay/smtp_entrypoint.h"

#include <mutex>

#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/smtp_session.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// The STARTTLS server context: TLS 1.2 or later, the configured chain and key, no ALPN (SMTP
// clients send none). Loaded once per process, on the first connection, shared by all workers
// (an SSL_CTX may be used by several threads at once). Null: STARTTLS is not offered.
SSL_CTX* SmtpTlsContext(const SmtpEntrypointConfig& config) {
  static std::once_flag once;
  static SSL_CTX* context = nullptr;
  std::call_once(once, [&config] {
    if (config.cert_file.empty()) return;
    SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), config.cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), config.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx.get()) != 1) {
      CounterOf("rdv_smtp_tls_config_errors_total",
                "STARTTLS certificates that could not be loaded (STARTTLS is then not offered)")
          .Inc();
      spdlog::error("smtp: cannot load {} / {}: {}; STARTTLS is not offered", config.cert_file,
                    config.key_file, OpenSslErrors());
      return;
    }
    context = ctx.release();
  });
  return context;
}

}  // namespace

void ServeSmtpEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client) {
  const SmtpEntrypointConfig& config = *worker.config().smtp;
  auto session = std::make_unique<SmtpSession>(worker, std::move(client), SmtpTlsContext(config));
  SmtpSession* raw = session.get();
  worker.Adopt(std::move(session));
  raw->Start();
}

void ResumeSmtpEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                          const std::string& state, SSL* tls) {
  std::optional<SmtpHandoffState> decoded = SmtpHandoffState::Decode(state);
  if (!decoded) {
    spdlog::error("smtp: malformed hand-off state; closing {}", client->peer_address());
    SSL_free(tls);
    client->Close();
    return;
  }
  const SmtpEntrypointConfig& config = *worker.config().smtp;
  auto session = std::make_unique<SmtpSession>(worker, std::move(client), SmtpTlsContext(config));
  SmtpSession* raw = session.get();
  worker.Adopt(std::move(session));
  raw->Resume(std::move(*decoded), tls);
}

}  // namespace rdv
