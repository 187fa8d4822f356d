// The agent's side of an smtp stream that carries the client's envelope (Open.smtp,
// docs/protocol.md "SMTP envelope"): before the stream is accepted, the agent
// opens the mail conversation with its server itself, which saves the relay two round trips
// through the link per message.
//
// 1. read the server's greeting: a 220 reply (any other code, or a line that is not a reply,
//    refuses the stream with TARGET_PROTOCOL and the server's words);
// 2. send the client's EHLO/HELO line and read a 250 reply; note whether it offers PIPELINING;
// 3. send MAIL, and RCPT in the same write when the server pipelines;
// 4. read the MAIL reply (whatever its code: a refused sender is the server's word, which the
//    relay passes to its client); without PIPELINING send RCPT now;
// 5. hand over: `done` gets the connection with the MAIL reply (and anything after it) unread,
//    and the owner accepts the stream and splices.
//
// The stream stays deferred to the opener throughout: when the relay gives up on it (its own
// command timeout, the client left) or the link drops, the opener closes the connection.
#ifndef RDV_AGENT_SMTP_OPENER_H_
#define RDV_AGENT_SMTP_OPENER_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "common/link.h"
#include "common/tcp_connection.h"
#include "proto/link.pb.h"

namespace rdv {

class SmtpOpener : public TcpConnection::Handler, public StreamHandler {
 public:
  // Runs once: with the connection, its unread bytes starting at the MAIL reply, for the owner
  // to accept the stream and splice; or with nullptr when the opener refused the stream or the
  // stream went away. The owner destroys the opener later, never from inside this call.
  using Done = std::function<void(SmtpOpener&, std::unique_ptr<TcpConnection> connection)>;

  SmtpOpener(std::unique_ptr<TcpConnection> connection, Stream& stream, link::SmtpEnvelope envelope,
             Done done);
  ~SmtpOpener() override;
  SmtpOpener(const SmtpOpener&) = delete;
  SmtpOpener& operator=(const SmtpOpener&) = delete;

  // Defers the stream to the opener and starts reading the server.
  void Start();
  Stream* stream() const { return stream_; }

  // TcpConnection::Handler
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;
  // StreamHandler: only OnStreamClosed is heard while the stream is deferred.
  void OnStreamData(Stream& stream, std::string_view data) override {}
  void OnStreamEnd(Stream& stream) override {}
  void OnStreamWritable(Stream& stream) override {}
  void OnStreamClosed(Stream& stream, const absl::Status& status) override;

 private:
  enum class Step { kGreeting, kHelo, kMail, kDone };
  // Takes the complete replies in input_; stops at the MAIL reply, which stays in input_.
  void Advance();
  void HandleReply(int code, std::string_view text);
  // Refuses the stream with TARGET_PROTOCOL (or `error`) and closes the connection.
  void Fail(std::string_view reason, link::OpenError error = link::TARGET_PROTOCOL);
  void Finish(std::unique_ptr<TcpConnection> connection);

  std::unique_ptr<TcpConnection> connection_;
  Stream* stream_;
  const link::SmtpEnvelope envelope_;
  Done done_;
  Step step_ = Step::kGreeting;
  bool pipelining_ = false;
  std::string input_;       // server bytes not consumed yet
  size_t reply_start_ = 0;  // offset in input_ where the reply being read began
  bool finished_ = false;
};

}  // namespace rdv

#endif  // RDV_AGENT_SMTP_OPENER_H_
