// A connection accepted on the agent listener, until its first bytes say what it is
// (docs/protocol.md "Tunnel data path", step 3):
//
// 1. sniff    the first byte: 'R' starts a data path request; anything else (a link starts with
//             a TLS record, 0x16) is a link, handed to an AgentLink with the bytes read so far
//             given back to the connection, so that its TLS session reads them first. A
//             connection silent for the handshake timeout counts as a failed TLS handshake, as
//             it always did.
// 2. request  the line `RDV-DATA/1 <token>\r\n`, within the request timeout of the accept and
//             kMaxDataPathLine bytes; anything else is answered ERR and closed.
// 3. present  the token goes to PresentDataPathToken (relay/tunnel_data_path.h), which joins the
//             connection to its offer or refuses it.
#ifndef RDV_RELAY_AGENT_LISTENER_SESSION_H_
#define RDV_RELAY_AGENT_LISTENER_SESSION_H_

#include <uv.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/tcp_connection.h"
#include "relay/relay_worker.h"

namespace rdv {

class AgentListenerSession : public RelaySession, public TcpConnection::Handler {
 public:
  AgentListenerSession(RelayWorker& worker, std::unique_ptr<TcpConnection> connection);
  ~AgentListenerSession() override;
  void Start();
  // A link or data path being set up: the drain sent GoAway to links, and closes these.
  bool HoldsDrain() const override { return false; }

  // TcpConnection::Handler
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;

 private:
  enum class State { kSniff, kRequest, kDone };
  void ReadRequest();
  void OnTimeout();
  // A link after all: no first byte came (counted as a failed TLS handshake).
  void FailSilent(std::string_view why);
  void Refuse(std::string_view result, std::string_view reason);
  void Done();

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> connection_;
  uv_timer_t* timer_;
  uint64_t accepted_ms_ = 0;
  State state_ = State::kSniff;
  std::string buffer_;  // the request line read so far
};

}  // namespace rdv

#endif  // RDV_RELAY_AGENT_LISTENER_SESSION_H_
