// The smtp entrypoint: see relay_config.h (SmtpEntrypointConfig) and relay/smtp_session.h.
#ifndef RDV_RELAY_SMTP_ENTRYPOINT_H_
#define RDV_RELAY_SMTP_ENTRYPOINT_H_

#include <memory>
#include <string>

#include "common/tcp_connection.h"
#include "relay/relay_worker.h"

namespace rdv {

// Takes a client accepted on the smtp entrypoint; the worker owns the session from then on.
void ServeSmtpEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client);

// Takes a client handed over by another worker (Handoff::Kind::kSmtp, `state` from its bytes,
// `tls` its TLS state after STARTTLS or null; taken over in every case).
void ResumeSmtpEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                          const std::string& state, SSL* tls);

}  // namespace rdv

#endif  // RDV_RELAY_SMTP_ENTRYPOINT_H_
