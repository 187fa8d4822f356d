#include "common/yaml_config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/auth.h"
#include "common/str_cat.h"

namespace rdv {

namespace {

// Values echoed in messages are cut so a pasted certificate does not flood the log.
constexpr size_t kMaxEchoedValue = 80;

std::string Quote(std::string_view text) {
  std::string escaped = absl::CHexEscape(AbslView(text.substr(0, kMaxEchoedValue)));
  if (text.size() > kMaxEchoedValue) escaped += "...";
  return absl::StrCat("'", escaped, "'");
}

// yaml-cpp marks are 0-based; people count lines from 1.
std::string MarkLocation(const std::string& file_name, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return file_name;
  return absl::StrCat(file_name, ":", mark.line + 1);
}

bool IsAllDigits(std::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

absl::Status HostPortError(std::string_view text, std::string_view reason) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid address ", Quote(text), ": ", AbslView(reason)));
}

}  // namespace

bool IsPrintableToken(std::string_view text) {
  if (text.empty() || text.size() > 128) return false;
  for (char c : text) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

// ---- HostPort ------------------------------------------------------------------------------

bool IsIpLiteral(std::string_view text) {
  std::string copy(text);
  in6_addr buffer;
  return inet_pton(AF_INET, copy.c_str(), &buffer) == 1 ||
         inet_pton(AF_INET6, copy.c_str(), &buffer) == 1;
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view text) {
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return HostPortError(text, "missing ']'");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      return HostPortError(text, "expected ':port' after ']'");
    }
    port_text = rest.substr(1);
    std::string host_copy(host);
    in6_addr buffer;
    if (inet_pton(AF_INET6, host_copy.c_str(), &buffer) != 1) {
      return HostPortError(text, "brackets must hold an IPv6 address");
    }
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return HostPortError(text, "expected host:port, e.g. 127.0.0.1:7000 or [::1]:7000");
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return HostPortError(text, "an IPv6 address must be in brackets, e.g. [::1]:7000");
    }
    if (host.empty()) return HostPortError(text, "missing host");
    if (!IsIpLiteral(host) && !IsValidHostName(host)) {
      return HostPortError(text, "host is neither an IP address nor a valid host name");
    }
  }
  if (!IsAllDigits(port_text) || port_text.size() > 5) {
    return HostPortError(text, "port must be a number between 0 and 65535");
  }
  uint32_t port = 0;
  for (char c : port_text) port = port * 10 + static_cast<uint32_t>(c - '0');
  if (port > 65535) return HostPortError(text, "port must be a number between 0 and 65535");
  return HostPort{std::string(host), static_cast<uint16_t>(port)};
}

std::string FormatHostPort(const HostPort& host_port) {
  if (host_port.host.find(':') != std::string::npos) {
    return absl::StrCat("[", host_port.host, "]:", host_port.port);
  }
  return absl::StrCat(host_port.host, ":", host_port.port);
}

// ---- YamlValue -----------------------------------------------------------------------------

YamlValue::YamlValue(std::shared_ptr<const std::string> file_name, const YAML::Node& node,
                     std::string path)
    : file_name_(std::move(file_name)), node_(node), path_(std::move(path)) {
  mark_ = node_.IsDefined() ? node_.Mark() : YAML::Mark::null_mark();
}

YamlValue::YamlValue(std::shared_ptr<const std::string> file_name, const YAML::Node& node,
                     std::string path, YAML::Mark mark)
    : file_name_(std::move(file_name)), node_(node), path_(std::move(path)), mark_(mark) {}

bool YamlValue::IsNull() const { return !node_.IsDefined() || node_.IsNull(); }

std::string YamlValue::Location() const { return MarkLocation(*file_name_, mark_); }

absl::Status YamlValue::Error(std::string_view message) const {
  if (path_.empty())
    return absl::InvalidArgumentError(absl::StrCat(Location(), ": ", AbslView(message)));
  return absl::InvalidArgumentError(absl::StrCat(Location(), ": ", path_, ": ", AbslView(message)));
}

std::string YamlValue::Got() const {
  if (IsNull()) return "got nothing";
  if (node_.IsSequence()) return "got a list";
  if (node_.IsMap()) return "got a map";
  return absl::StrCat("got ", Quote(node_.Scalar()));
}

absl::StatusOr<std::string> YamlValue::AsString() const {
  if (!node_.IsDefined() || !node_.IsScalar()) {
    return Error(absl::StrCat("expected a string, ", Got()));
  }
  return node_.Scalar();
}

absl::StatusOr<uint64_t> YamlValue::AsUint(uint64_t min, uint64_t max) const {
  auto fail = [&] {
    return Error(absl::StrCat("expected an integer between ", min, " and ", max, ", ", Got()));
  };
  if (!node_.IsDefined() || !node_.IsScalar()) return fail();
  const std::string& text = node_.Scalar();
  // 20 digits is the most a uint64_t can need; anything longer overflows.
  if (!IsAllDigits(text) || text.size() > 20) return fail();
  uint64_t value = 0;
  for (char c : text) {
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (UINT64_MAX - digit) / 10) return fail();
    value = value * 10 + digit;
  }
  if (value < min || value > max) return fail();
  return value;
}

absl::StatusOr<bool> YamlValue::AsBool() const {
  if (node_.IsDefined() && node_.IsScalar()) {
    std::string lower = absl::AsciiStrToLower(node_.Scalar());
    if (lower == "true") return true;
    if (lower == "false") return false;
  }
  return Error(absl::StrCat("expected true or false, ", Got()));
}

absl::StatusOr<absl::Duration> YamlValue::AsDurationMs(int64_t min_ms, int64_t max_ms) const {
  absl::StatusOr<uint64_t> ms =
      AsUint(static_cast<uint64_t>(min_ms), static_cast<uint64_t>(max_ms));
  if (!ms.ok()) {
    return Error(absl::StrCat("expected a duration in milliseconds between ", min_ms, " and ",
                              max_ms, ", ", Got()));
  }
  return absl::Milliseconds(static_cast<int64_t>(*ms));
}

absl::StatusOr<std::vector<YamlValue>> YamlValue::AsList() const {
  std::vector<YamlValue> items;
  if (IsNull()) return items;
  if (!node_.IsSequence()) return Error(absl::StrCat("expected a list, ", Got()));
  size_t index = 0;
  for (const YAML::Node& item : node_) {
    // A null item ("- " alone) has no position of its own in yaml-cpp; the list's is close.
    YAML::Mark mark = item.Mark().is_null() ? mark_ : item.Mark();
    items.emplace_back(file_name_, item, absl::StrCat(path_, "[", index, "]"), mark);
    ++index;
  }
  return items;
}

absl::StatusOr<std::vector<std::string>> YamlValue::AsStringList() const {
  absl::StatusOr<std::vector<YamlValue>> items = AsList();
  if (!items.ok()) return items.status();
  std::vector<std::string> strings;
  strings.reserve(items->size());
  for (const YamlValue& item : *items) {
    absl::StatusOr<std::string> text = item.AsString();
    if (!text.ok()) return text.status();
    strings.push_back(*std::move(text));
  }
  return strings;
}

absl::StatusOr<YamlMap> YamlValue::AsMap() const {
  if (!IsNull() && !node_.IsMap()) return Error(absl::StrCat("expected a map, ", Got()));
  return YamlMap(*this);
}

absl::StatusOr<HostPort> YamlValue::AsHostPort(bool allow_port_zero,
                                               bool require_ip_literal) const {
  absl::StatusOr<std::string> text = AsString();
  if (!text.ok()) return text.status();
  absl::StatusOr<HostPort> host_port = ParseHostPort(*text);
  if (!host_port.ok()) return Error(std::string(host_port.status().message()));
  if (!allow_port_zero && host_port->port == 0) {
    return Error(absl::StrCat("invalid address ", Quote(*text), ": port 0 is not allowed here"));
  }
  if (require_ip_literal && !IsIpLiteral(host_port->host)) {
    return Error(absl::StrCat("invalid address ", Quote(*text),
                              ": the host must be an IP address, e.g. 0.0.0.0 or [::]"));
  }
  return host_port;
}

// ---- YamlMap -------------------------------------------------------------------------------

std::string YamlMap::ChildPath(std::string_view key) const {
  if (path().empty()) return std::string(key);
  return absl::StrCat(path(), ".", AbslView(key));
}

absl::Status YamlMap::CheckKeys(std::initializer_list<std::string_view> allowed) const {
  const YAML::Node& node = value_.node();
  if (value_.IsNull()) return absl::OkStatus();
  std::string where = path().empty() ? "at top level" : absl::StrCat("in '", path(), "'");
  std::set<std::string> seen;
  for (const auto& entry : node) {
    YamlValue key(value_.file_name_, entry.first, path());
    if (!entry.first.IsScalar()) {
      return absl::InvalidArgumentError(
          absl::StrCat(key.Location(), ": keys must be plain strings ", where));
    }
    const std::string& name = entry.first.Scalar();
    bool known = false;
    for (std::string_view candidate : allowed) known = known || candidate == name;
    if (!known) {
      return absl::InvalidArgumentError(
          absl::StrCat(key.Location(), ": unknown key ", Quote(name), " ", where));
    }
    // yaml-cpp keeps both copies of a repeated key and lookups see the first; refuse instead of
    // silently ignoring the second.
    if (!seen.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(key.Location(), ": duplicate key ", Quote(name), " ", where));
    }
  }
  return absl::OkStatus();
}

bool YamlMap::HasKey(std::string_view key) const {
  if (value_.IsNull()) return false;
  for (const auto& entry : value_.node()) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return true;
  }
  return false;
}

std::optional<YamlValue> YamlMap::Find(std::string_view key) const {
  const YAML::Node& node = value_.node();
  if (value_.IsNull()) return std::nullopt;
  for (const auto& entry : node) {
    if (!entry.first.IsScalar() || entry.first.Scalar() != key) continue;
    if (!entry.second.IsDefined() || entry.second.IsNull()) return std::nullopt;
    YAML::Mark mark = entry.second.Mark().is_null() ? entry.first.Mark() : entry.second.Mark();
    return YamlValue(value_.file_name_, entry.second, ChildPath(key), mark);
  }
  return std::nullopt;
}

absl::StatusOr<YamlValue> YamlMap::Require(std::string_view key) const {
  std::optional<YamlValue> found = Find(key);
  if (found) return *std::move(found);
  std::string where = path().empty() ? "at top level" : absl::StrCat("in '", path(), "'");
  return absl::InvalidArgumentError(
      absl::StrCat(value_.Location(), ": missing required key ", Quote(key), " ", where));
}

absl::StatusOr<std::vector<YamlValue>> YamlMap::RequireNonEmptyList(
    std::string_view key, std::string_view empty_message) const {
  absl::StatusOr<YamlValue> list = Require(key);
  if (!list.ok()) return list.status();
  absl::StatusOr<std::vector<YamlValue>> items = list->AsList();
  if (!items.ok()) return items.status();
  if (items->empty()) return list->Error(empty_message);
  return items;
}

absl::Status YamlMap::ReadString(std::string_view key, std::string* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<std::string> text = found->AsString();
  if (!text.ok()) return text.status();
  *value = *std::move(text);
  return absl::OkStatus();
}

absl::Status YamlMap::ReadEnum(std::string_view key,
                               std::initializer_list<std::string_view> allowed,
                               std::string* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<std::string> text = found->AsString();
  if (text.ok()) {
    for (std::string_view candidate : allowed) {
      if (candidate == *text) {
        *value = *std::move(text);
        return absl::OkStatus();
      }
    }
  }
  return found->Error(absl::StrCat(
      "expected one of ",
      absl::StrJoin(allowed.begin(), allowed.end(), "|",
                    [](std::string* out, std::string_view item) { out->append(item); }),
      ", ", found->Got()));
}

absl::Status YamlMap::ReadBool(std::string_view key, bool* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<bool> parsed = found->AsBool();
  if (!parsed.ok()) return parsed.status();
  *value = *parsed;
  return absl::OkStatus();
}

absl::Status YamlMap::ReadDurationMs(std::string_view key, int64_t min_ms, int64_t max_ms,
                                     absl::Duration* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<absl::Duration> parsed = found->AsDurationMs(min_ms, max_ms);
  if (!parsed.ok()) return parsed.status();
  *value = *parsed;
  return absl::OkStatus();
}

absl::Status YamlMap::ReadStringList(std::string_view key, std::vector<std::string>* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<std::vector<std::string>> parsed = found->AsStringList();
  if (!parsed.ok()) return parsed.status();
  *value = *std::move(parsed);
  return absl::OkStatus();
}

absl::Status YamlMap::ReadHostPortList(std::string_view key, bool allow_port_zero,
                                       bool require_ip_literal,
                                       std::vector<HostPort>* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<std::vector<YamlValue>> items = found->AsList();
  if (!items.ok()) return items.status();
  std::vector<HostPort> parsed;
  for (const YamlValue& item : *items) {
    absl::StatusOr<HostPort> host_port = item.AsHostPort(allow_port_zero, require_ip_literal);
    if (!host_port.ok()) return host_port.status();
    parsed.push_back(*std::move(host_port));
  }
  *value = std::move(parsed);
  return absl::OkStatus();
}

absl::Status YamlMap::ReadReadablePath(std::string_view key, std::string* value) const {
  std::optional<YamlValue> found = Find(key);
  if (!found) return absl::OkStatus();
  absl::StatusOr<std::string> path = found->AsString();
  if (!path.ok()) return path.status();
  if (!path->empty()) {
    absl::StatusOr<std::string> contents = ReadSmallFile(*path);
    if (!contents.ok()) return found->Error(std::string(contents.status().message()));
  }
  *value = *std::move(path);
  return absl::OkStatus();
}

absl::StatusOr<std::string> YamlMap::ReadSecret(std::string_view inline_key,
                                                std::string_view file_key,
                                                size_t min_length) const {
  // An empty string counts as not set, so templates can carry `secret_file: ""`.
  auto find_non_empty = [&](std::string_view key) -> absl::StatusOr<std::optional<YamlValue>> {
    std::optional<YamlValue> found = Find(key);
    if (!found) return std::nullopt;
    absl::StatusOr<std::string> text = found->AsString();
    if (!text.ok()) return text.status();
    if (text->empty()) return std::nullopt;
    return found;
  };
  absl::StatusOr<std::optional<YamlValue>> inline_secret = find_non_empty(inline_key);
  if (!inline_secret.ok()) return inline_secret.status();
  absl::StatusOr<std::optional<YamlValue>> secret_file = find_non_empty(file_key);
  if (!secret_file.ok()) return secret_file.status();
  if (*inline_secret && *secret_file) {
    return (*secret_file)
        ->Error(absl::StrCat("set either ", AbslView(inline_key), " or ", AbslView(file_key),
                             ", not both"));
  }
  if (!*inline_secret && !*secret_file) {
    return Error(
        absl::StrCat("one of ", AbslView(inline_key), " or ", AbslView(file_key), " is required"));
  }
  const YamlValue& where = *inline_secret ? **inline_secret : **secret_file;
  std::string secret = where.node().Scalar();
  if (*secret_file) {
    absl::StatusOr<std::string> contents = ReadSmallFile(secret);
    if (!contents.ok()) return where.Error(std::string(contents.status().message()));
    secret = *std::move(contents);
    // Editors and `echo` end the file with a newline that is not part of the secret.
    while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  }
  if (secret.size() < min_length) {
    return where.Error(absl::StrCat("the secret must be at least ", min_length,
                                    " characters long (it has ", secret.size(), ")"));
  }
  return secret;
}

// ---- YamlDocument --------------------------------------------------------------------------

absl::StatusOr<YamlDocument> YamlDocument::Parse(std::string_view text,
                                                 std::string_view file_name) {
  auto name = std::make_shared<const std::string>(file_name);
  try {
    std::vector<YAML::Node> documents = YAML::LoadAll(std::string(text));
    if (documents.size() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(MarkLocation(*name, documents[1].Mark()),
                       ": only one YAML document is allowed (found a second '---')"));
    }
    YAML::Node root = documents.empty() ? YAML::Node() : documents.front();
    // An empty document still has a position worth reporting: line 1.
    YAML::Mark mark = root.Mark().is_null() ? YAML::Mark() : root.Mark();
    return YamlDocument(YamlValue(name, root, "", mark));
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(*name, ": ", e.msg));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(*name, ":", e.mark.line + 1, ":", e.mark.column + 1, ": ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(*name, ": ", e.what()));
  }
}

absl::StatusOr<YamlDocument> YamlDocument::LoadFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallFile(path);
  if (!text.ok()) return text.status();
  return Parse(*text, path);
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  // Configuration, secrets and PEM files are small; the cap stops a mistaken path such as
  // /dev/zero from eating memory.
  constexpr size_t kMaxSize = 4 << 20;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read ", Quote(path), ": ", std::strerror(errno)));
  }
  std::string contents;
  char buffer[16384];
  while (true) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int error = errno;
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read ", Quote(path), ": ", std::strerror(error)));
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
    if (contents.size() > kMaxSize) {
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read ", Quote(path), ": larger than ", kMaxSize, " bytes"));
    }
  }
  close(fd);
  return contents;
}

}  // namespace rdv
