// One client connection on the smtp entrypoint (RFC 5321), routed by recipient domain.
//
// 1. greet; answer EHLO/HELO (PIPELINING, SIZE, 8BITMIME, STARTTLS when a certificate is set),
//    STARTTLS, MAIL, RSET, NOOP, VRFY, HELP, QUIT ourselves; every complete line in the buffer is
//    handled in order, so pipelined commands get their replies in order. Lines are bounded (500),
//    commands are counted (max_commands) and timed (command_timeout) -> refuse and close.
// 2. the first RCPT whose domain an agent registered routes the connection: unknown domain -> 550,
//    no agent -> 451. The link may live on another worker: the client is handed there with the
//    envelope so far (and, after STARTTLS, its TLS state).
// 3. open a stream to the agent; replay to the private server, one step at a time: read its
//    greeting, send EHLO/HELO with the client's name, MAIL FROM as the client sent it, then the
//    RCPT (with MAIL when the server offers PIPELINING), whose reply is the server's own and goes
//    to the client.
// 4. splice: client commands go to the server and server replies come back, in order. Until the
//    connection ends the relay still reads the client's command lines (not the message content,
//    which it only scans for the end-of-data line): a RCPT in a domain served by another service
//    gets 451 4.7.1 from the relay and is not forwarded, so the sender retries it separately; a
//    re-EHLO is answered by the relay (the server gets RSET), so only what the relay advertised
//    is ever used.
#ifndef RDV_RELAY_SMTP_SESSION_H_
#define RDV_RELAY_SMTP_SESSION_H_

#include <openssl/ssl.h>
#include <uv.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/link.h"
#include "common/smtp_command.h"
#include "common/str_cat.h"
#include "common/tcp_connection.h"
#include "common/tls.h"
#include "relay/relay_worker.h"

namespace rdv {

// The envelope a session carries to another worker (Handoff::bytes).
struct SmtpHandoffState {
  std::string helo_verb;  // "EHLO" or "HELO"
  std::string helo_name;
  std::string mail_line;  // the MAIL command as the client sent it, without CRLF
  std::string rcpt_line;  // the RCPT that routed the connection
  std::string domain;     // its domain
  std::string input;      // client bytes after the RCPT line, not yet processed
  std::string tls_carry;  // after STARTTLS: ciphertext read but not decrypted yet
  uint32_t commands = 0;
  uint32_t hops = 0;  // hand-offs so far (a route that keeps moving is given up on)

  std::string Encode() const;
  static std::optional<SmtpHandoffState> Decode(std::string_view bytes);
};

class SmtpSession : public RelaySession,
                    public TcpConnection::Handler,
                    public TlsSession::Handler,
                    public StreamHandler {
 public:
  // `tls_context`: the STARTTLS server context, or null when STARTTLS is not offered.
  SmtpSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client, SSL_CTX* tls_context);
  ~SmtpSession() override;

  // Sends the greeting and starts reading.
  void Start();
  // Continues a session handed over from another worker: routes `state.domain` here. `tls`:
  // the client's TLS state when it had done STARTTLS (taken over), else null.
  void Resume(SmtpHandoffState state, SSL* tls);

  // TcpConnection::Handler (plaintext client)
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;
  void OnDrained() override;
  // TlsSession::Handler (client after STARTTLS)
  void OnTlsReady() override;
  void OnTlsData(std::string_view plaintext) override { OnClientData(plaintext); }
  void OnTlsClosed(const absl::Status& status) override;
  void OnTlsDrained() override { OnDrained(); }
  // StreamHandler (the private mail server, through the agent)
  void OnStreamData(Stream& stream, std::string_view data) override;
  void OnStreamEnd(Stream& stream) override;
  void OnStreamWritable(Stream& stream) override;
  void OnStreamClosed(Stream& stream, const absl::Status& status) override;

 private:
  enum class State {
    kCommand,       // pre-routing dialogue
    kTlsHandshake,  // STARTTLS accepted, handshake running
    kReplay,        // stream open, replaying the envelope to the private server
    kSpliced,       // server and client talk; the relay filters RCPTs and finds DATA content
    kClosing,       // last reply queued; closing once it is written
  };
  enum class ReplayStep { kGreeting, kHelo, kMail, kDone };
  // What the next reply in order is (after the splice, replies leave in command order).
  struct Expect {
    enum class Kind {
      kServer,   // the server's reply to a forwarded command goes to the client
      kData,     // same, for DATA: 354 starts the message content
      kSwallow,  // the server's reply to a command of the relay's own (RSET) is dropped
      kLocal,    // the relay's own reply `text`
    };
    Kind kind;
    std::string text;
    bool close_after = false;  // kLocal: close the connection once it is written
  };

  void OnClientData(std::string_view data);
  void ProcessInput();
  bool HandleCommandLine(std::string_view line);  // pre-routing; false: stop processing
  void HandleSplicedLine(std::string_view line);
  void HandleRcpt(std::string_view line, const smtp::Command& command);
  void Route(std::string rcpt_line, std::string domain);
  void HandOff(int worker, std::string rcpt_line, std::string domain);
  void StartTls();
  void AdvanceReplay(int code, const std::string& reply);
  void AbandonRoute(std::string_view reason, std::string_view counter_reason);
  // The client's EHLO/HELO command line as replayed to the server (without CRLF).
  std::string HeloLine() const { return StrCat(helo_verb_, " ", helo_name_); }
  void HandleServerReply(int code, std::string reply);
  void FlushLocalReplies();
  void ForwardToServer(std::string_view bytes);
  void Queue(Expect::Kind kind, std::string text = "", bool close_after = false);

  void Reply(std::string_view text);  // one reply (lines joined with CRLF), CRLF appended
  std::string EhloReply(std::string_view name) const;
  void Refuse(std::string_view reason, std::string_view reply, std::string_view detail);
  void CloseAfterReply(std::string_view reply);
  void ClientWrite(std::string_view bytes);
  size_t ClientQueued() const;
  TcpConnection& ClientTcp();
  void UpdateReading();
  void ReturnCredit();
  void ArmTimer();
  void Finish();

  RelayWorker& worker_;
  const SmtpEntrypointConfig& config_;
  SSL_CTX* tls_context_;
  std::unique_ptr<TcpConnection> tcp_;  // the client until STARTTLS
  std::unique_ptr<TlsSession> tls_;     // the client after STARTTLS
  std::string peer_;
  State state_ = State::kCommand;
  std::string input_;  // client bytes not processed yet
  uint32_t commands_ = 0;
  uint32_t hops_ = 0;

  // Envelope before routing.
  std::string helo_verb_;  // "" until EHLO/HELO
  std::string helo_name_;
  std::string mail_line_;  // "" until MAIL
  std::string rcpt_line_;  // the routing RCPT, until it is replayed
  std::string routed_domain_;

  // After routing.
  Stream* stream_ = nullptr;
  std::string routed_service_;  // the registered smtp service the connection is bound to
  ReplayStep replay_step_ = ReplayStep::kGreeting;
  bool server_pipelining_ = false;  // the server's EHLO reply offered PIPELINING
  std::string server_input_;        // server bytes not yet split into lines
  std::string server_reply_;        // lines of the reply being read
  std::string substitute_reply_;    // replaces the next server reply (a failed MAIL replay)
  std::deque<Expect> expected_;
  bool awaiting_data_reply_ = false;
  bool in_content_ = false;
  smtp::DataEndScanner content_end_;
  bool stream_blocked_ = false;
  bool client_eof_ = false;
  size_t unreturned_credit_ = 0;
  bool finished_ = false;
  uv_timer_t* timer_;
};

}  // namespace rdv

#endif  // RDV_RELAY_SMTP_SESSION_H_
