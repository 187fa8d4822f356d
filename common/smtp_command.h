// SMTP (RFC 5321) command-line parsing for the smtp entrypoint and for the agent that opens a
// routed mail connection on the relay's behalf (agent/smtp_opener.h): pure functions, no I/O.
//
// The relay reads a client's commands only up to the routing decision and, after the splice, only
// enough of them to keep every recipient of a connection in the routed domain and to find where
// message content starts and ends. So this parses command lines, the MAIL FROM / RCPT TO
// arguments the relay acts on, and server reply lines; it never parses message content.
#ifndef RDV_COMMON_SMTP_COMMAND_H_
#define RDV_COMMON_SMTP_COMMAND_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rdv::smtp {

// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including the CRLF.
inline constexpr size_t kMaxCommandLine = 512;
// A server reply line longer than this (with its CRLF) is a broken server.
inline constexpr size_t kMaxReplyLine = 4096;

// One line split off the front of a buffer.
struct LineSplit {
  enum class Outcome {
    kLine,      // `line` (without CRLF or LF) is complete; drop `consumed` bytes
    kNeedMore,  // no line end yet and the buffer is within the limit
    kTooLong,   // the line exceeds `max_length` (counting its CRLF): refuse it
  };
  Outcome outcome = Outcome::kNeedMore;
  std::string_view line;
  size_t consumed = 0;
};

// Splits the first line off `buffer`. Lines end with LF; a CR before it is removed (bare LF is
// accepted, as Postfix does). `max_length` counts the line with its CRLF.
LineSplit SplitLine(std::string_view buffer, size_t max_length = kMaxCommandLine);

enum class Verb {
  kEhlo,
  kHelo,
  kMail,
  kRcpt,
  kData,
  kBdat,
  kRset,
  kNoop,
  kQuit,
  kVrfy,
  kExpn,
  kHelp,
  kStartTls,
  kAuth,
  kUnknown,
};

struct Command {
  Verb verb = Verb::kUnknown;
  std::string_view argument;  // after the verb and one or more spaces, trailing spaces removed
};

// Parses a command line (without its line end). The verb is case-insensitive; a verb must be
// followed by a space or the end of the line ("MAILFROM" is unknown).
Command ParseCommand(std::string_view line);

// The argument of MAIL: "FROM:<reverse-path> [params]".
struct MailFrom {
  std::string address;           // "" for the null reverse-path <>
  std::optional<uint64_t> size;  // SIZE=
  bool body_8bitmime = false;    // BODY=8BITMIME
};

// Errors carry the reply to send: InvalidArgument -> 501 syntax, Unimplemented -> 555 parameter.
absl::StatusOr<MailFrom> ParseMailFrom(std::string_view argument);

// The argument of RCPT: "TO:<forward-path>". No parameters are accepted (no DSN is advertised).
struct RcptTo {
  std::string address;
  std::string domain;  // lowercase, one trailing dot removed; "" when the address has none
};
absl::StatusOr<RcptTo> ParseRcptTo(std::string_view argument);

// The domain of "local@domain" (the last '@' outside a quoted local part), lowercased, one
// trailing dot removed. nullopt: no '@', an empty or invalid domain, or an address literal.
std::optional<std::string> RoutableDomain(std::string_view address);

// One server reply line: "250-..." (more follow) or "250 ..." (last).
struct ReplyLine {
  int code = 0;
  bool last = true;
};
// nullopt: not a reply line (fewer than three digits, or a fourth character that is neither
// ' ', '-' nor the end of the line).
std::optional<ReplyLine> ParseReplyLine(std::string_view line);

// End of DATA content: finds the line "." (CRLF.CRLF, also accepting bare LF line ends) in a
// stream of content. Content starts at a line start; feed it in pieces.
class DataEndScanner {
 public:
  // Returns the number of bytes of `piece` up to and including the terminating ".\r\n" (or
  // ".\n"), or nullopt when the terminator is not in this piece.
  std::optional<size_t> Scan(std::string_view piece);
  void Reset() { state_ = State::kLineStart; }

 private:
  enum class State { kLineStart, kDot, kDotCr, kMidLine };
  State state_ = State::kLineStart;
};

}  // namespace rdv::smtp

#endif  // RDV_COMMON_SMTP_COMMAND_H_
