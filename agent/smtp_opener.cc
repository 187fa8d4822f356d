#include "agent/smtp_opener.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "common/metrics.h"
#include "common/smtp_command.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// Whatever a server says is quoted in a refusal up to this many bytes.
constexpr size_t kMaxQuoted = 200;

Counter& Opened(std::string_view result) {
  return CounterOf("rdv_agent_smtp_envelopes_total",
                   "SMTP envelopes this agent replayed to its mail server for the relay, by result",
                   StrCat("result=\"", result, "\""));
}

// The first line of a reply, printable, for a refusal reason.
std::string Quote(std::string_view reply) {
  std::string_view line = reply.substr(0, reply.find_first_of("\r\n"));
  return absl::CHexEscape(AbslView(line.substr(0, kMaxQuoted)));
}

}  // namespace

SmtpOpener::SmtpOpener(std::unique_ptr<TcpConnection> connection, Stream& stream,
                       link::SmtpEnvelope envelope, Done done)
    : connection_(std::move(connection)),
      stream_(&stream),
      envelope_(std::move(envelope)),
      done_(std::move(done)) {}

SmtpOpener::~SmtpOpener() {
  if (connection_) connection_->Close();
  if (!finished_ && stream_ != nullptr) stream_->Refuse("the agent is shutting down");
}

void SmtpOpener::Start() {
  stream_->Defer(*this);
  connection_->Start(*this);
}

void SmtpOpener::OnRead(std::string_view data) {
  if (finished_) return;
  input_.append(data);
  Advance();
}

void SmtpOpener::Advance() {
  while (!finished_ && step_ != Step::kDone) {
    smtp::LineSplit split =
        smtp::SplitLine(std::string_view(input_).substr(reply_start_), smtp::kMaxReplyLine);
    if (split.outcome == smtp::LineSplit::Outcome::kNeedMore) return;
    if (split.outcome == smtp::LineSplit::Outcome::kTooLong) {
      Fail(StrCat("the mail server sent a reply line over ", smtp::kMaxReplyLine, " bytes"));
      return;
    }
    std::optional<smtp::ReplyLine> reply = smtp::ParseReplyLine(split.line);
    if (!reply) {
      Fail(StrCat("the mail server sent a malformed reply: \"", Quote(split.line), "\""));
      return;
    }
    reply_start_ += split.consumed;
    if (!reply->last) continue;
    size_t end = reply_start_;
    HandleReply(reply->code, std::string_view(input_).substr(0, end));
    if (finished_) return;
    if (step_ == Step::kDone) break;
    input_.erase(0, end);
    reply_start_ = 0;
  }
  if (finished_ || step_ != Step::kDone) return;
  // The MAIL reply and whatever followed it go to the relay as the server sent them.
  connection_->Unread(std::move(input_));
  input_.clear();
  Opened("ok").Inc();
  Finish(std::move(connection_));
}

void SmtpOpener::HandleReply(int code, std::string_view text) {
  switch (step_) {
    case Step::kGreeting:
      if (code != 220) {
        Fail(StrCat("the mail server's greeting: \"", Quote(text), "\""));
        return;
      }
      step_ = Step::kHelo;
      connection_->Write(StrCat(envelope_.helo(), "\r\n"));
      return;
    case Step::kHelo:
      if (code != 250) {
        Fail(StrCat("the mail server's answer to ", envelope_.helo().substr(0, 4), ": \"",
                    Quote(text), "\""));
        return;
      }
      // One write when the server pipelines (RFC 2920); else RCPT waits for the MAIL reply.
      pipelining_ = absl::AsciiStrToUpper(AbslView(text)).find("PIPELINING") != std::string::npos;
      step_ = Step::kMail;
      if (pipelining_) {
        connection_->Write(StrCat(envelope_.mail(), "\r\n", envelope_.rcpt(), "\r\n"));
      } else {
        connection_->Write(StrCat(envelope_.mail(), "\r\n"));
      }
      return;
    case Step::kMail:
      step_ = Step::kDone;
      if (!pipelining_) connection_->Write(StrCat(envelope_.rcpt(), "\r\n"));
      return;
    case Step::kDone:
      return;
  }
}

void SmtpOpener::OnEof() {
  if (finished_) return;
  Fail("the mail server closed the connection");
}

void SmtpOpener::OnError(const absl::Status& status) {
  if (finished_) return;
  Fail(StrCat("the mail server connection failed: ", status.message()),
       link::OPEN_ERROR_UNSPECIFIED);
}

void SmtpOpener::OnStreamClosed(Stream& stream, const absl::Status& status) {
  // The relay gave up on the stream (its client left, its timeout) or the link dropped.
  stream_ = nullptr;
  if (finished_) return;
  Opened("abandoned").Inc();
  connection_->Close();  // the object goes with the opener, not inside its own callback
  Finish(nullptr);
}

void SmtpOpener::Fail(std::string_view reason, link::OpenError error) {
  if (finished_) return;
  Opened(error == link::TARGET_PROTOCOL ? "target_protocol" : "connection_failed").Inc();
  CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
  spdlog::warn("smtp {}: {}", envelope_.rcpt(), reason);
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Refuse(reason, error);
  }
  if (connection_) connection_->Close();
  Finish(nullptr);
}

void SmtpOpener::Finish(std::unique_ptr<TcpConnection> connection) {
  finished_ = true;
  Done done = std::move(done_);
  done(*this, std::move(connection));
}

}  // namespace rdv
