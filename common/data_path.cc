#include "common/data_path.h"

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "common/str_cat.h"

namespace rdv {
namespace {

std::string_view StripCrlf(std::string_view line) {
  if (absl::EndsWith(AbslView(line), "\r\n")) line.remove_suffix(2);
  return line;
}

bool IsLowerHex(std::string_view text) {
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

std::string DataPathRequest(std::string_view token) {
  return StrCat(kDataPathMagic, absl::BytesToHexString(AbslView(token)), "\r\n");
}

std::string DataPathError(std::string_view reason) {
  std::string clean;
  for (char c : reason) clean.push_back(c == '\r' || c == '\n' ? ' ' : c);
  constexpr size_t kRoom = kMaxDataPathLine - 6;  // "ERR " and CRLF
  if (clean.size() > kRoom) clean.resize(kRoom);
  return StrCat("ERR ", clean, "\r\n");
}

absl::StatusOr<size_t> DataPathLineEnd(std::string_view buffer) {
  size_t crlf = buffer.find("\r\n");
  if (crlf != std::string_view::npos && crlf + 2 <= kMaxDataPathLine) return crlf + 2;
  if (crlf != std::string_view::npos || buffer.size() >= kMaxDataPathLine) {
    return absl::InvalidArgumentError(
        StrCat("data path line longer than ", kMaxDataPathLine, " bytes"));
  }
  return 0;
}

absl::StatusOr<std::string> ParseDataPathRequest(std::string_view line) {
  line = StripCrlf(line);
  if (!absl::StartsWith(AbslView(line), AbslView(kDataPathMagic))) {
    return absl::InvalidArgumentError("not a data path request (expected \"RDV-DATA/1 <token>\")");
  }
  std::string_view hex = line.substr(kDataPathMagic.size());
  if (hex.size() != kDataPathTokenSize * 2) {
    return absl::InvalidArgumentError(StrCat("data path token of ", hex.size(),
                                             " hex digits, expected ", kDataPathTokenSize * 2));
  }
  if (!IsLowerHex(hex)) {
    return absl::InvalidArgumentError("data path token is not lowercase hex");
  }
  return absl::HexStringToBytes(AbslView(hex));
}

absl::Status ParseDataPathReply(std::string_view line) {
  line = StripCrlf(line);
  if (line == StripCrlf(kDataPathOk)) return absl::OkStatus();
  if (absl::StartsWith(AbslView(line), "ERR ")) {
    return absl::FailedPreconditionError(
        StrCat("the relay refused the data path: ", line.substr(4)));
  }
  return absl::InvalidArgumentError("unexpected data path reply from the relay");
}

}  // namespace rdv
