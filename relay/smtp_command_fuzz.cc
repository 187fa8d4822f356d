// libFuzzer target: the SMTP command-line parsers must never crash, hang or read out of bounds on
// any input. The input is split into lines as the session would split it, and every line goes
// through every parser; the whole input also goes through the DATA terminator scanner in pieces
// whose size the first byte chooses.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/smtp_command.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = data[0] % 31 + 1;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  std::string_view rest = input;
  while (!rest.empty()) {
    rdv::smtp::LineSplit split = rdv::smtp::SplitLine(rest);
    std::string_view line = rest;
    if (split.outcome == rdv::smtp::LineSplit::Outcome::kLine) {
      line = split.line;
      rest.remove_prefix(split.consumed);
    } else {
      rest = {};
    }
    rdv::smtp::Command command = rdv::smtp::ParseCommand(line);
    (void)rdv::smtp::ParseMailFrom(command.argument);
    if (absl::StatusOr<rdv::smtp::RcptTo> rcpt = rdv::smtp::ParseRcptTo(command.argument);
        rcpt.ok() && !rcpt->domain.empty() && rcpt->domain.size() > 253) {
      __builtin_trap();  // a routable domain is always a valid host name
    }
    (void)rdv::smtp::RoutableDomain(line);
    (void)rdv::smtp::ParseReplyLine(line);
  }

  rdv::smtp::DataEndScanner scanner;
  for (size_t offset = 0; offset < input.size(); offset += chunk) {
    std::string_view piece = input.substr(offset, chunk);
    if (std::optional<size_t> end = scanner.Scan(piece)) {
      if (*end == 0 || *end > piece.size()) __builtin_trap();
      scanner.Reset();
    }
  }
  return 0;
}
