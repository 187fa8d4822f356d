#include "relay/smtp_session.h"

#include <charconv>

#include "absl/strings/escaping.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/agent_link.h"
#include "relay/relay.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// Client bytes held while the relay cannot process them (routing, awaiting 354); past this the
// client is not read until they are processed.
constexpr size_t kMaxHeldInput = 64 * 1024;
// Client-side buffering allowed before stream credit is withheld.
constexpr size_t kClientHighWatermark = 256 * 1024;
// A route that moves between workers more often than this is given up on (451, retry).
constexpr uint32_t kMaxHops = 3;
// After a refusal the relay half-closes and waits this long for the client to close.
constexpr uint64_t kLingerMs = 5000;

Counter& Refusals(std::string_view reason) {
  return CounterOf("rdv_smtp_refusals_total",
                   "SMTP commands or connections the relay refused itself, by reason",
                   StrCat("reason=\"", reason, "\""));
}

Counter& Connections() {
  static Counter& counter =
      CounterOf("rdv_smtp_connections_total", "Connections accepted on the smtp entrypoint");
  return counter;
}

Counter& Routed() {
  static Counter& counter = CounterOf(
      "rdv_smtp_routed_total", "SMTP connections spliced onto a private mail server's stream");
  return counter;
}

Counter& TlsHandoffs() {
  static Counter& counter = CounterOf("rdv_smtp_tls_handoffs_total",
                                      "SMTP clients moved to another worker with their TLS state");
  return counter;
}

Counter& TlsHandshakes(bool ok) {
  return CounterOf("rdv_smtp_starttls_total", "STARTTLS handshakes with SMTP clients",
                   ok ? "result=\"ok\"" : "result=\"failed\"");
}

void PutField(std::string& out, std::string_view field) {
  out += StrCat(field.size(), ":");
  out.append(field);
}

template <typename Number>
bool ParseNumber(std::string_view text, Number* value) {
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return !text.empty() && error == std::errc() && end == text.data() + text.size();
}

bool TakeField(std::string_view& in, std::string& field) {
  size_t colon = in.find(':');
  size_t length = 0;
  if (colon == std::string_view::npos || !ParseNumber(in.substr(0, colon), &length) ||
      in.size() - colon - 1 < length) {
    return false;
  }
  field.assign(in.substr(colon + 1, length));
  in.remove_prefix(colon + 1 + length);
  return true;
}

bool IsPositive(int code) { return code >= 200 && code < 400; }

}  // namespace

std::string SmtpHandoffState::Encode() const {
  std::string out;
  for (std::string_view field :
       {std::string_view(helo_verb), std::string_view(helo_name), std::string_view(mail_line),
        std::string_view(rcpt_line), std::string_view(domain), std::string_view(input),
        std::string_view(tls_carry)}) {
    PutField(out, field);
  }
  PutField(out, StrCat(commands));
  PutField(out, StrCat(hops));
  return out;
}

std::optional<SmtpHandoffState> SmtpHandoffState::Decode(std::string_view bytes) {
  SmtpHandoffState state;
  std::string commands, hops;
  for (std::string* field : {&state.helo_verb, &state.helo_name, &state.mail_line, &state.rcpt_line,
                             &state.domain, &state.input, &state.tls_carry, &commands, &hops}) {
    if (!TakeField(bytes, *field)) return std::nullopt;
  }
  if (!bytes.empty() || !ParseNumber(commands, &state.commands) ||
      !ParseNumber(hops, &state.hops)) {
    return std::nullopt;
  }
  return state;
}

SmtpSession::SmtpSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                         SSL_CTX* tls_context)
    : worker_(worker),
      config_(*worker.config().smtp),
      tls_context_(tls_context),
      tcp_(std::move(client)),
      peer_(tcp_->peer_address()),
      timer_(new uv_timer_t) {
  timer_->data = this;
  uv_timer_init(worker_.loop(), timer_);
}

SmtpSession::~SmtpSession() {
  // Finish() ran (the worker destroys sessions only after it, or at shutdown).
  if (!finished_) {
    finished_ = true;
    if (stream_ != nullptr) stream_->Reset("relay shutting down");
    stream_ = nullptr;
  }
  if (tls_) tls_->Close();
  if (tcp_) tcp_->Close();
  if (timer_ != nullptr) {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
}

void SmtpSession::Start() {
  Connections().Inc();
  Reply(StrCat("220 ", config_.hostname, " ESMTP"));
  // Bytes that came with a load balancer's PROXY header (a client that did not wait for the
  // greeting) are the first commands.
  input_ = tcp_->TakeUnread();
  tcp_->Start(*this);
  ArmTimer();
  if (!input_.empty()) ProcessInput();
}

void SmtpSession::Resume(SmtpHandoffState state, SSL* tls) {
  helo_verb_ = std::move(state.helo_verb);
  helo_name_ = std::move(state.helo_name);
  mail_line_ = std::move(state.mail_line);
  input_ = std::move(state.input);
  commands_ = state.commands;
  hops_ = state.hops;
  ArmTimer();
  if (tls != nullptr) {
    TlsHandoffs().Inc();
    tls_ =
        TlsSession::Adopt(std::move(tcp_), {-1, tls, std::move(state.tls_carry)}, worker_.tasks());
  }
  // Route before reading: bytes the client sent after the RCPT must wait for it.
  Route(std::move(state.rcpt_line), std::move(state.domain));
  if (finished_) return;
  if (tls_) {
    tls_->Start(*this);
  } else {
    tcp_->Start(*this);
  }
  if (state_ == State::kCommand) ProcessInput();
  UpdateReading();
}

// ---- client side -------------------------------------------------------------------------------

TcpConnection& SmtpSession::ClientTcp() { return tls_ ? tls_->tcp() : *tcp_; }

void SmtpSession::ClientWrite(std::string_view bytes) {
  if (tls_) {
    tls_->Send(bytes);
  } else if (tcp_) {
    tcp_->Write(bytes);
  }
}

size_t SmtpSession::ClientQueued() const {
  if (tls_) return tls_->QueuedBytes();
  return tcp_ ? tcp_->queued_bytes() : 0;
}

void SmtpSession::Reply(std::string_view text) { ClientWrite(StrCat(text, "\r\n")); }

std::string SmtpSession::EhloReply(std::string_view name) const {
  std::string reply = StrCat("250-", config_.hostname, " Hello ", name, "\r\n250-PIPELINING\r\n",
                             "250-SIZE ", config_.max_message_bytes, "\r\n");
  if (tls_context_ != nullptr && !tls_ && state_ == State::kCommand) reply += "250-STARTTLS\r\n";
  reply += "250 8BITMIME";
  return reply;
}

void SmtpSession::Refuse(std::string_view reason, std::string_view reply, std::string_view detail) {
  Refusals(reason).Inc();
  spdlog::info("smtp {}: refused ({}): {}", peer_, reason, detail);
  if (!reply.empty()) Reply(reply);
}

void SmtpSession::CloseAfterReply(std::string_view reply) {
  if (!reply.empty()) Reply(reply);
  state_ = State::kClosing;
  input_.clear();
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset("smtp client refused");
  }
  // Half-close once the reply is out and let the client close: closing at once could reset the
  // connection and lose the reply in the client's receive buffer.
  if (tls_) {
    if (ClientQueued() == 0) {
      Finish();
      return;
    }
  } else if (tcp_) {
    tcp_->Shutdown();
  }
  uv_timer_start(
      timer_,
      [](uv_timer_t* timer) {
        if (timer->data) static_cast<SmtpSession*>(timer->data)->Finish();
      },
      kLingerMs, 0);
}

void SmtpSession::UpdateReading() {
  if (finished_ || state_ == State::kClosing || state_ == State::kTlsHandshake) return;
  bool pause = stream_blocked_ || input_.size() > kMaxHeldInput;
  if (tls_) {
    pause ? tls_->PauseReading() : tls_->ResumeReading();
  } else if (tcp_) {
    pause ? tcp_->PauseReading() : tcp_->ResumeReading();
  }
}

void SmtpSession::ArmTimer() {
  if (state_ == State::kSpliced || state_ == State::kClosing) {
    uv_timer_stop(timer_);
    return;
  }
  uv_timer_start(
      timer_,
      [](uv_timer_t* timer) {
        auto* self = static_cast<SmtpSession*>(timer->data);
        if (self == nullptr || self->finished_) return;
        if (self->state_ == State::kReplay) {
          self->AbandonRoute("the mail server did not answer in time", "upstream_timeout");
          return;
        }
        self->Refuse("timeout", "", "no command within command_timeout");
        self->CloseAfterReply(
            StrCat("421 4.4.2 ", self->config_.hostname, " Error: timeout exceeded"));
      },
      static_cast<uint64_t>(absl::ToInt64Milliseconds(config_.command_timeout)), 0);
}

void SmtpSession::OnRead(std::string_view data) { OnClientData(data); }

void SmtpSession::OnClientData(std::string_view data) {
  if (finished_ || state_ == State::kClosing) return;
  // Message content passes straight through, scanned only for its end.
  if (state_ == State::kSpliced && in_content_ && input_.empty()) {
    std::optional<size_t> end = content_end_.Scan(data);
    ForwardToServer(data.substr(0, end.value_or(data.size())));
    if (!end) return;
    in_content_ = false;
    Queue(Expect::Kind::kServer);
    data.remove_prefix(*end);
  }
  input_.append(data);
  ProcessInput();
}

void SmtpSession::ProcessInput() {
  while (!finished_) {
    if (state_ == State::kSpliced && in_content_) {
      if (input_.empty()) break;
      std::optional<size_t> end = content_end_.Scan(input_);
      ForwardToServer(std::string_view(input_).substr(0, end.value_or(input_.size())));
      input_.erase(0, end.value_or(input_.size()));
      if (!end) break;
      in_content_ = false;
      Queue(Expect::Kind::kServer);
      continue;
    }
    if (state_ != State::kCommand && state_ != State::kSpliced) break;
    if (state_ == State::kSpliced && awaiting_data_reply_) break;
    smtp::LineSplit split = smtp::SplitLine(input_);
    if (split.outcome == smtp::LineSplit::Outcome::kNeedMore) break;
    if (split.outcome == smtp::LineSplit::Outcome::kTooLong) {
      if (state_ == State::kSpliced) {
        Refusals("line_too_long").Inc();
        spdlog::info("smtp {}: refused (line_too_long): command line over {} bytes", peer_,
                     smtp::kMaxCommandLine);
        Queue(Expect::Kind::kLocal, "500 5.5.0 Error: line too long", /*close_after=*/true);
        input_.clear();
        break;
      }
      Refuse("line_too_long", "", StrCat("command line over ", smtp::kMaxCommandLine, " bytes"));
      CloseAfterReply("500 5.5.0 Error: line too long");
      break;
    }
    std::string line(split.line);
    input_.erase(0, split.consumed);
    if (state_ == State::kSpliced) {
      HandleSplicedLine(line);
    } else if (!HandleCommandLine(line)) {
      break;
    }
  }
  UpdateReading();
}

bool SmtpSession::HandleCommandLine(std::string_view line) {
  ArmTimer();
  if (++commands_ > config_.max_commands) {
    Refuse("too_many_commands", "", StrCat("more than ", config_.max_commands, " commands"));
    CloseAfterReply("554 5.7.0 Error: too many commands");
    return false;
  }
  smtp::Command command = smtp::ParseCommand(line);
  switch (command.verb) {
    case smtp::Verb::kEhlo:
    case smtp::Verb::kHelo: {
      if (command.argument.empty()) {
        Reply(command.verb == smtp::Verb::kEhlo ? "501 5.5.4 Syntax: EHLO hostname"
                                                : "501 5.5.4 Syntax: HELO hostname");
        return true;
      }
      helo_verb_ = command.verb == smtp::Verb::kEhlo ? "EHLO" : "HELO";
      helo_name_ = std::string(command.argument);
      mail_line_.clear();
      if (command.verb == smtp::Verb::kEhlo) {
        Reply(EhloReply(helo_name_));
      } else {
        Reply(StrCat("250 ", config_.hostname));
      }
      return true;
    }
    case smtp::Verb::kStartTls:
      if (tls_context_ == nullptr) {
        Reply("502 5.5.1 Error: command not implemented");
      } else if (tls_) {
        Reply("503 5.5.1 Error: TLS already active");
      } else if (!command.argument.empty()) {
        Reply("501 5.5.4 Syntax: STARTTLS");
      } else {
        StartTls();
        return false;
      }
      return true;
    case smtp::Verb::kMail: {
      if (helo_verb_.empty()) {
        Reply("503 5.5.1 Error: send HELO/EHLO first");
        return true;
      }
      if (!mail_line_.empty()) {
        Reply("503 5.5.1 Error: nested MAIL command");
        return true;
      }
      absl::StatusOr<smtp::MailFrom> mail = smtp::ParseMailFrom(command.argument);
      if (!mail.ok()) {
        Refusals("bad_syntax").Inc();
        Reply(StrCat(
            mail.status().code() == absl::StatusCode::kUnimplemented ? "555 5.5.4 " : "501 5.5.4 ",
            mail.status().message()));
        return true;
      }
      if (mail->size && *mail->size > config_.max_message_bytes) {
        Refuse("message_too_big", "552 5.3.4 Message size exceeds fixed limit",
               StrCat("SIZE=", *mail->size));
        return true;
      }
      mail_line_ = std::string(line);
      Reply("250 2.1.0 Ok");
      return true;
    }
    case smtp::Verb::kRcpt:
      if (mail_line_.empty()) {
        Reply("503 5.5.1 Error: need MAIL command");
        return true;
      }
      HandleRcpt(line, command);
      return state_ == State::kCommand;
    case smtp::Verb::kData:
      Reply(mail_line_.empty() ? "503 5.5.1 Error: need MAIL command"
                               : "554 5.5.1 Error: no valid recipients");
      return true;
    case smtp::Verb::kRset:
      mail_line_.clear();
      Reply("250 2.0.0 Ok");
      return true;
    case smtp::Verb::kNoop:
      Reply("250 2.0.0 Ok");
      return true;
    case smtp::Verb::kQuit:
      CloseAfterReply("221 2.0.0 Bye");
      return false;
    case smtp::Verb::kVrfy:
      Reply("252 2.0.0 Cannot VRFY user; send mail and delivery will be attempted");
      return true;
    case smtp::Verb::kHelp:
      Reply(
          "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
          " STARTTLS");
      return true;
    case smtp::Verb::kExpn:
    case smtp::Verb::kBdat:
    case smtp::Verb::kAuth:
      Reply("502 5.5.1 Error: command not implemented");
      return true;
    case smtp::Verb::kUnknown:
      Refuse("unknown_command", "500 5.5.2 Error: command not recognized",
             StrCat("unknown command ", absl::CHexEscape(AbslView(line.substr(0, 32)))));
      return true;
  }
  return true;
}

void SmtpSession::HandleRcpt(std::string_view line, const smtp::Command& command) {
  absl::StatusOr<smtp::RcptTo> rcpt = smtp::ParseRcptTo(command.argument);
  if (!rcpt.ok()) {
    Refusals("bad_syntax").Inc();
    Reply(StrCat(
        rcpt.status().code() == absl::StatusCode::kUnimplemented ? "555 5.5.4 " : "501 5.5.4 ",
        rcpt.status().message()));
    return;
  }
  if (rcpt->domain.empty()) {
    Refuse(
        "unknown_domain",
        StrCat("550 5.1.2 <", rcpt->address, ">: Recipient address rejected: no routable domain"),
        StrCat("recipient ", rcpt->address, " has no routable domain"));
    return;
  }
  Route(std::string(line), rcpt->domain);
}

void SmtpSession::Route(std::string rcpt_line, std::string domain) {
  std::string client_ip = HostOfAddress(peer_);
  RouteResult route = worker_.directory().RouteHost(link::SMTP, domain, worker_.index(), client_ip);
  std::string address = rcpt_line;  // for messages: the RCPT argument is enough
  if (route.outcome == RouteResult::Outcome::kUnknown) {
    Refuse("unknown_domain",
           StrCat("550 5.1.2 Recipient address rejected: domain ", domain, " is not served here"),
           StrCat("no smtp service for ", domain));
    return;
  }
  if (route.outcome == RouteResult::Outcome::kNoLink) {
    Refuse("no_agent",
           StrCat("451 4.4.1 No mail server for ", domain, " is connected; try again later"),
           StrCat("no agent link serves ", domain));
    return;
  }
  if (route.worker != worker_.index()) {
    if (hops_ >= kMaxHops) {
      Refuse("handoff_failed",
             StrCat("451 4.4.3 Mail server for ", domain, " is busy; try again later"),
             StrCat("the link for ", domain, " moved on to worker ", route.worker));
      return;
    }
    HandOff(route.worker, std::move(rcpt_line), std::move(domain));
    return;
  }
  TcpConnection& client = ClientTcp();
  auto* agent_link = static_cast<AgentLink*>(route.carrier);
  // An agent that takes the envelope replays it to its server itself (two round trips through
  // the link fewer); the stream's first bytes are then the server's MAIL reply.
  bool agent_replays = agent_link->takes_smtp_envelope();
  Stream* stream = nullptr;
  if (agent_replays) {
    link::SmtpEnvelope envelope;
    envelope.set_helo(HeloLine());
    envelope.set_mail(mail_line_);
    envelope.set_rcpt(rcpt_line);
    stream = agent_link->OpenSmtpStream(route.service, client, std::move(envelope), *this);
  } else {
    stream = agent_link->OpenStream(route.service, client, "smtp", *this);
  }
  if (stream == nullptr) {
    Refuse("no_agent",
           StrCat("451 4.4.1 No mail server for ", domain, " is available; try again later"),
           StrCat("the link for ", domain, " took no stream"));
    return;
  }
  stream_ = stream;
  routed_service_ = route.service.name();
  routed_domain_ = std::move(domain);
  rcpt_line_ = std::move(rcpt_line);
  state_ = State::kReplay;
  replay_step_ = agent_replays ? ReplayStep::kMail : ReplayStep::kGreeting;
  server_pipelining_ = agent_replays;  // the agent sent RCPT
  server_input_.clear();
  server_reply_.clear();
  ArmTimer();
}

void SmtpSession::HandOff(int worker, std::string rcpt_line, std::string domain) {
  SmtpHandoffState state;
  state.helo_verb = helo_verb_;
  state.helo_name = helo_name_;
  state.mail_line = mail_line_;
  state.rcpt_line = std::move(rcpt_line);
  state.domain = std::move(domain);
  state.input = std::move(input_);
  state.commands = commands_;
  state.hops = hops_ + 1;
  SSL* tls = nullptr;
  absl::StatusOr<int> fd = absl::UnavailableError("no client");
  if (tls_) {
    // The TLS state moves with the socket; it cannot while replies are still queued for it.
    absl::StatusOr<TlsSession::Detached> detached = tls_->Detach();
    if (!detached.ok()) {
      input_ = std::move(state.input);
      Refuse("handoff_failed",
             StrCat("451 4.4.3 Mail server for ", state.domain, " is busy; try again later"),
             StrCat("TLS session cannot move: ", detached.status().message()));
      return;
    }
    fd = detached->fd;
    tls = detached->ssl;
    state.tls_carry = std::move(detached->carry);
  } else {
    fd = tcp_->DetachFd();
  }
  input_.clear();
  finished_ = true;
  uv_timer_stop(timer_);
  worker_.Finish(this);
  if (!fd.ok()) return;
  CounterOf("rdv_worker_handoffs_total", "Client connections moved to another worker loop").Inc();
  Handoff handoff;
  handoff.kind = Handoff::Kind::kSmtp;
  handoff.fd = *fd;
  handoff.bytes = state.Encode();
  handoff.service_kind = link::SMTP;
  handoff.service = state.domain;
  handoff.entrypoint = "smtp";
  handoff.peer_address = peer_;  // the client a load balancer's PROXY header named, if any
  handoff.tls = tls;
  worker_.relay().worker(worker).HandOff(std::move(handoff));
}

void SmtpSession::StartTls() {
  Reply("220 2.0.0 Ready to start TLS");
  // RFC 3207 4.2 (and CVE-2011-0411): nothing the client sent after STARTTLS in plaintext
  // may be taken as a command inside TLS.
  input_.clear();
  state_ = State::kTlsHandshake;
  tls_ = TlsSession::Create(std::move(tcp_), tls_context_, /*is_server=*/true, worker_.tasks(), "",
                            "", /*require_link_alpn=*/false);
  tls_->Start(*this);
}

void SmtpSession::OnTlsReady() {
  TlsHandshakes(true).Inc();
  // RFC 3207 4.2: the server forgets everything it learned before TLS; the client says EHLO again.
  state_ = State::kCommand;
  helo_verb_.clear();
  helo_name_.clear();
  mail_line_.clear();
  ArmTimer();
}

void SmtpSession::OnTlsClosed(const absl::Status& status) {
  if (state_ == State::kTlsHandshake) {
    TlsHandshakes(false).Inc();
    spdlog::info("smtp {}: STARTTLS handshake failed: {}", peer_, status.message());
  }
  OnEof();
}

void SmtpSession::OnEof() {
  if (finished_) return;
  client_eof_ = true;
  if (state_ == State::kSpliced && stream_ != nullptr) {
    stream_->End();
    return;
  }
  Finish();
}

void SmtpSession::OnError(const absl::Status& status) {
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset(StrCat("client error: ", status.message()));
  }
  Finish();
}

void SmtpSession::OnDrained() {
  if (finished_) return;
  ReturnCredit();
  if (ClientQueued() != 0) return;
  if (state_ == State::kClosing && tls_) Finish();
  if (state_ == State::kSpliced && stream_ == nullptr) Finish();
}

// ---- after routing -------------------------------------------------------------------------

void SmtpSession::Queue(Expect::Kind kind, std::string text, bool close_after) {
  expected_.push_back(Expect{kind, std::move(text), close_after});
  FlushLocalReplies();
}

void SmtpSession::FlushLocalReplies() {
  while (!finished_ && !expected_.empty() && expected_.front().kind == Expect::Kind::kLocal) {
    Expect local = std::move(expected_.front());
    expected_.pop_front();
    if (local.close_after) {
      expected_.clear();
      CloseAfterReply(local.text);
      return;
    }
    Reply(local.text);
  }
}

void SmtpSession::ForwardToServer(std::string_view bytes) {
  if (stream_ == nullptr || bytes.empty()) return;
  if (!stream_->Write(bytes)) stream_blocked_ = true;
}

void SmtpSession::HandleSplicedLine(std::string_view line) {
  smtp::Command command = smtp::ParseCommand(line);
  std::string forward = StrCat(line, "\r\n");
  switch (command.verb) {
    case smtp::Verb::kRcpt: {
      absl::StatusOr<smtp::RcptTo> rcpt = smtp::ParseRcptTo(command.argument);
      if (rcpt.ok() && !rcpt->domain.empty() && rcpt->domain != routed_domain_) {
        RouteResult route = worker_.directory().RouteHost(link::SMTP, rcpt->domain, worker_.index(),
                                                          HostOfAddress(peer_));
        if (route.outcome == RouteResult::Outcome::kUnknown) {
          Refusals("unknown_domain").Inc();
          spdlog::info("smtp {}: refused (unknown_domain): no smtp service for {}", peer_,
                       rcpt->domain);
          Queue(Expect::Kind::kLocal, StrCat("550 5.1.2 Recipient address rejected: domain ",
                                             rcpt->domain, " is not served here"));
          return;
        }
        if (route.outcome == RouteResult::Outcome::kNoLink ||
            route.service.name() != routed_service_) {
          Refusals("other_domain").Inc();
          spdlog::info("smtp {}: refused (other_domain): {} is not served by {}", peer_,
                       rcpt->domain, routed_service_);
          Queue(Expect::Kind::kLocal,
                StrCat("451 4.7.1 <", rcpt->address,
                       ">: Recipient in another domain; send it in a separate transaction"));
          return;
        }
      }
      // Same service (or a syntax the server will answer itself): the server decides.
      break;
    }
    case smtp::Verb::kEhlo:
    case smtp::Verb::kHelo:
      // The relay keeps answering EHLO, so that the client uses only what the relay advertised;
      // the server's transaction is reset as EHLO would.
      if (command.argument.empty()) {
        Queue(Expect::Kind::kLocal, "501 5.5.4 Syntax: EHLO hostname");
        return;
      }
      ForwardToServer("RSET\r\n");
      Queue(Expect::Kind::kSwallow);
      Queue(Expect::Kind::kLocal, command.verb == smtp::Verb::kEhlo
                                      ? EhloReply(command.argument)
                                      : StrCat("250 ", config_.hostname));
      return;
    case smtp::Verb::kStartTls:
      Queue(Expect::Kind::kLocal, "503 5.5.1 Error: STARTTLS only before the first recipient");
      return;
    case smtp::Verb::kBdat:
    case smtp::Verb::kAuth:
      Queue(Expect::Kind::kLocal, "502 5.5.1 Error: command not implemented");
      return;
    case smtp::Verb::kData:
      ForwardToServer(forward);
      awaiting_data_reply_ = true;
      Queue(Expect::Kind::kData);
      return;
    default:
      break;
  }
  ForwardToServer(forward);
  Queue(Expect::Kind::kServer);
}

void SmtpSession::OnStreamData(Stream& stream, std::string_view data) {
  if (finished_) return;
  server_input_.append(data);
  while (!finished_) {
    smtp::LineSplit split = smtp::SplitLine(server_input_, smtp::kMaxReplyLine);
    if (split.outcome == smtp::LineSplit::Outcome::kNeedMore) break;
    std::optional<smtp::ReplyLine> reply = split.outcome == smtp::LineSplit::Outcome::kLine
                                               ? smtp::ParseReplyLine(split.line)
                                               : std::nullopt;
    if (!reply) {
      Refusals("upstream_error").Inc();
      spdlog::warn("smtp {}: the mail server for {} sent a malformed reply", peer_, routed_domain_);
      if (state_ == State::kReplay) {
        AbandonRoute("malformed reply from the mail server", "upstream_error");
      } else {
        CloseAfterReply("421 4.4.0 Error: the mail server failed");
      }
      return;
    }
    server_reply_.append(server_input_, 0, split.consumed);
    server_input_.erase(0, split.consumed);
    if (!reply->last) continue;
    std::string text = std::move(server_reply_);
    server_reply_.clear();
    HandleServerReply(reply->code, std::move(text));
  }
  // Stream credit returns once the client has taken the bytes (or they were the relay's own).
  unreturned_credit_ += data.size();
  ReturnCredit();
}

void SmtpSession::ReturnCredit() {
  if (unreturned_credit_ == 0 || stream_ == nullptr) return;
  if (ClientQueued() >= kClientHighWatermark) return;
  size_t n = unreturned_credit_;
  unreturned_credit_ = 0;
  stream_->Consumed(n);
}

void SmtpSession::HandleServerReply(int code, std::string reply) {
  if (state_ == State::kReplay) {
    AdvanceReplay(code, reply);
    return;
  }
  if (state_ != State::kSpliced) return;
  if (expected_.empty()) {
    ClientWrite(reply);  // unsolicited, e.g. 421 before the server closes
    return;
  }
  Expect expect = std::move(expected_.front());
  expected_.pop_front();
  if (expect.kind != Expect::Kind::kSwallow) {
    if (!substitute_reply_.empty()) {
      reply = std::move(substitute_reply_);
      substitute_reply_.clear();
    }
    ClientWrite(reply);
  }
  if (expect.kind == Expect::Kind::kData) {
    awaiting_data_reply_ = false;
    if (code == 354) {
      in_content_ = true;
      content_end_.Reset();
    }
  }
  FlushLocalReplies();
  if (expect.kind == Expect::Kind::kData) ProcessInput();
}

void SmtpSession::AdvanceReplay(int code, const std::string& reply) {
  switch (replay_step_) {
    case ReplayStep::kGreeting:
      if (code != 220) {
        AbandonRoute(StrCat("greeting ", code), "upstream_error");
        return;
      }
      ForwardToServer(StrCat(HeloLine(), "\r\n"));
      replay_step_ = ReplayStep::kHelo;
      return;
    case ReplayStep::kHelo:
      if (code != 250) {
        AbandonRoute(StrCat(helo_verb_, " answered ", code), "upstream_error");
        return;
      }
      // A server that offers PIPELINING gets MAIL and RCPT in one write (one round trip less
      // through the agent); otherwise RCPT waits for the MAIL reply.
      server_pipelining_ = reply.find("PIPELINING") != std::string::npos;
      ForwardToServer(StrCat(mail_line_, "\r\n"));
      if (server_pipelining_) ForwardToServer(StrCat(rcpt_line_, "\r\n"));
      replay_step_ = ReplayStep::kMail;
      return;
    case ReplayStep::kMail:
      // A refused sender is the server's word on the transaction: the client gets that reply in
      // place of the RCPT's (the server will refuse the RCPT itself for want of a MAIL).
      if (!IsPositive(code)) substitute_reply_ = reply;
      if (!server_pipelining_) ForwardToServer(StrCat(rcpt_line_, "\r\n"));
      replay_step_ = ReplayStep::kDone;
      state_ = State::kSpliced;
      Queue(Expect::Kind::kServer);
      Routed().Inc();
      spdlog::debug("smtp {}: {} routed to {}", peer_, routed_domain_, routed_service_);
      ArmTimer();
      ProcessInput();
      return;
    case ReplayStep::kDone:
      return;
  }
}

void SmtpSession::AbandonRoute(std::string_view reason, std::string_view counter_reason) {
  // Back to the pre-routing dialogue: the client's transaction stands, the RCPT gets 451.
  Refuse(counter_reason,
         StrCat("451 4.4.1 Mail server for ", routed_domain_, " is not reachable; try again later"),
         StrCat(routed_domain_, ": ", reason));
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset(reason);
  }
  state_ = State::kCommand;
  stream_blocked_ = false;
  unreturned_credit_ = 0;
  rcpt_line_.clear();
  routed_service_.clear();
  ArmTimer();
  ProcessInput();
}

void SmtpSession::OnStreamEnd(Stream& stream) {
  if (finished_) return;
  if (state_ == State::kReplay) {
    AbandonRoute("the mail server closed the connection", "upstream_error");
    return;
  }
  // The server closed (after QUIT, or on its own): the client gets what is queued, then EOF.
  CloseAfterReply("");
}

void SmtpSession::OnStreamWritable(Stream& stream) {
  stream_blocked_ = false;
  UpdateReading();
}

void SmtpSession::OnStreamClosed(Stream& stream, const absl::Status& status) {
  if (stream_ != &stream) return;
  stream_ = nullptr;
  if (finished_) return;
  if (state_ == State::kReplay) {
    // An agent replaying the envelope refuses with TARGET_PROTOCOL when its server broke script.
    AbandonRoute(status.ok() ? std::string("stream closed") : std::string(status.message()),
                 stream.result().error() == link::TARGET_PROTOCOL ? "upstream_error"
                                                                  : "upstream_unreachable");
    return;
  }
  if (state_ != State::kSpliced) return;
  if (!status.ok()) {
    spdlog::debug("smtp {}: stream to {} ended: {}", peer_, routed_service_, status.message());
  }
  if (ClientQueued() == 0 || !status.ok()) Finish();
}

void SmtpSession::Finish() {
  if (finished_) return;
  finished_ = true;
  uv_timer_stop(timer_);
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset("smtp client gone");
  }
  if (tls_) tls_->Close();
  if (tcp_) tcp_->Close();
  worker_.Finish(this);
}

}  // namespace rdv
