#include "common/smtp_command.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "common/auth.h"

namespace rdv::smtp {
namespace {

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

std::string_view TrimSpaces(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// "<path>" at the start of `text` (after `keyword:` and optional spaces). Returns the path without
// brackets and leaves `text` at what follows the '>'.
absl::StatusOr<std::string> TakePath(std::string_view& text, std::string_view keyword) {
  if (text.size() < keyword.size() || !EqualsIgnoreCase(text.substr(0, keyword.size()), keyword)) {
    return absl::InvalidArgumentError("Syntax error");
  }
  text.remove_prefix(keyword.size());
  // Many clients write "MAIL FROM: <a@b>"; Postfix accepts it, so do we.
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  if (text.empty() || text.front() != '<') return absl::InvalidArgumentError("Syntax error");
  bool quoted = false;
  size_t end = std::string_view::npos;
  for (size_t i = 1; i < text.size(); ++i) {
    char c = text[i];
    if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == '>') {
      end = i;
      break;
    } else if (!quoted && c == '<') {
      return absl::InvalidArgumentError("Syntax error");
    }
  }
  if (end == std::string_view::npos) return absl::InvalidArgumentError("Syntax error");
  std::string_view path = text.substr(1, end - 1);
  text.remove_prefix(end + 1);
  if (!text.empty() && text.front() != ' ') return absl::InvalidArgumentError("Syntax error");
  // An obsolete source route "@a,@b:user@domain" names the same mailbox as "user@domain".
  if (!path.empty() && path.front() == '@') {
    size_t colon = path.find(':');
    if (colon == std::string_view::npos) return absl::InvalidArgumentError("Syntax error");
    path.remove_prefix(colon + 1);
  }
  for (char c : path) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError("Syntax error");
    }
  }
  return std::string(path);
}

}  // namespace

LineSplit SplitLine(std::string_view buffer, size_t max_length) {
  LineSplit split;
  size_t scan = std::min(buffer.size(), max_length);
  const void* found = scan == 0 ? nullptr : std::memchr(buffer.data(), '\n', scan);
  if (found == nullptr) {
    // A line of exactly max_length-1 characters plus a CR can still end in LF at max_length.
    split.outcome =
        buffer.size() >= max_length ? LineSplit::Outcome::kTooLong : LineSplit::Outcome::kNeedMore;
    return split;
  }
  size_t lf = static_cast<const char*>(found) - buffer.data();
  split.outcome = LineSplit::Outcome::kLine;
  split.consumed = lf + 1;
  split.line = buffer.substr(0, lf);
  if (!split.line.empty() && split.line.back() == '\r') split.line.remove_suffix(1);
  return split;
}

Command ParseCommand(std::string_view line) {
  static constexpr struct {
    std::string_view name;
    Verb verb;
  } kVerbs[] = {
      {"EHLO", Verb::kEhlo},         {"HELO", Verb::kHelo}, {"MAIL", Verb::kMail},
      {"RCPT", Verb::kRcpt},         {"DATA", Verb::kData}, {"BDAT", Verb::kBdat},
      {"RSET", Verb::kRset},         {"NOOP", Verb::kNoop}, {"QUIT", Verb::kQuit},
      {"VRFY", Verb::kVrfy},         {"EXPN", Verb::kExpn}, {"HELP", Verb::kHelp},
      {"STARTTLS", Verb::kStartTls}, {"AUTH", Verb::kAuth},
  };
  Command command;
  size_t space = line.find(' ');
  std::string_view verb = line.substr(0, space);
  for (const auto& known : kVerbs) {
    if (EqualsIgnoreCase(verb, known.name)) {
      command.verb = known.verb;
      break;
    }
  }
  if (command.verb == Verb::kUnknown) return command;
  command.argument = space == std::string_view::npos ? "" : TrimSpaces(line.substr(space + 1));
  return command;
}

absl::StatusOr<MailFrom> ParseMailFrom(std::string_view argument) {
  absl::StatusOr<std::string> path = TakePath(argument, "FROM:");
  if (!path.ok()) return path.status();
  MailFrom mail;
  mail.address = std::move(*path);
  if (!mail.address.empty() && !RoutableDomain(mail.address)) {
    return absl::InvalidArgumentError("Syntax error in sender address");
  }
  while (!argument.empty()) {
    size_t space = argument.find(' ');
    std::string_view param = argument.substr(0, space);
    argument.remove_prefix(space == std::string_view::npos ? argument.size() : space + 1);
    if (param.empty()) continue;
    size_t eq = param.find('=');
    std::string_view key = param.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? "" : param.substr(eq + 1);
    if (EqualsIgnoreCase(key, "SIZE") && eq != std::string_view::npos) {
      uint64_t size = 0;
      auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), size);
      if (value.empty() || !IsDigit(value.front()) || error != std::errc() ||
          end != value.data() + value.size()) {
        return absl::InvalidArgumentError("Bad SIZE parameter");
      }
      mail.size = size;
    } else if (EqualsIgnoreCase(key, "BODY") && eq != std::string_view::npos) {
      if (EqualsIgnoreCase(value, "8BITMIME")) {
        mail.body_8bitmime = true;
      } else if (!EqualsIgnoreCase(value, "7BIT")) {
        return absl::UnimplementedError("Unsupported BODY parameter");
      }
    } else {
      return absl::UnimplementedError("Unsupported MAIL parameter");
    }
  }
  return mail;
}

absl::StatusOr<RcptTo> ParseRcptTo(std::string_view argument) {
  absl::StatusOr<std::string> path = TakePath(argument, "TO:");
  if (!path.ok()) return path.status();
  if (path->empty()) return absl::InvalidArgumentError("Syntax error in recipient address");
  if (!TrimSpaces(argument).empty()) return absl::UnimplementedError("Unsupported RCPT parameter");
  RcptTo rcpt;
  rcpt.address = std::move(*path);
  rcpt.domain = RoutableDomain(rcpt.address).value_or("");
  return rcpt;
}

std::optional<std::string> RoutableDomain(std::string_view address) {
  bool quoted = false;
  size_t at = std::string_view::npos;
  for (size_t i = 0; i < address.size(); ++i) {
    char c = address[i];
    if (quoted && c == '\\') {
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (!quoted && c == '@') {
      at = i;
    }
  }
  if (at == std::string_view::npos || at == 0) return std::nullopt;
  std::string domain(address.substr(at + 1));
  for (char& c : domain) c = Lower(c);
  if (!domain.empty() && domain.back() == '.') domain.pop_back();
  if (!IsValidHostName(domain)) return std::nullopt;
  return domain;
}

std::optional<ReplyLine> ParseReplyLine(std::string_view line) {
  if (line.size() < 3) return std::nullopt;
  for (int i = 0; i < 3; ++i) {
    if (!IsDigit(line[i])) return std::nullopt;
  }
  ReplyLine reply;
  reply.code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (line.size() == 3 || line[3] == ' ') return reply;
  if (line[3] == '-') {
    reply.last = false;
    return reply;
  }
  return std::nullopt;
}

std::optional<size_t> DataEndScanner::Scan(std::string_view piece) {
  for (size_t i = 0; i < piece.size(); ++i) {
    char c = piece[i];
    switch (state_) {
      case State::kMidLine: {
        const void* lf = std::memchr(piece.data() + i, '\n', piece.size() - i);
        if (lf == nullptr) return std::nullopt;
        i = static_cast<const char*>(lf) - piece.data();
        state_ = State::kLineStart;
        break;
      }
      case State::kLineStart:
        state_ = c == '.' ? State::kDot : c == '\n' ? State::kLineStart : State::kMidLine;
        break;
      case State::kDot:
        if (c == '\n') {
          state_ = State::kLineStart;
          return i + 1;
        }
        state_ = c == '\r' ? State::kDotCr : State::kMidLine;
        break;
      case State::kDotCr:
        if (c == '\n') {
          state_ = State::kLineStart;
          return i + 1;
        }
        state_ = State::kMidLine;
        break;
    }
  }
  return std::nullopt;
}

}  // namespace rdv::smtp
