// Strict reading of YAML configuration files (relay and agent).
//
// Every error names where the user must look: `file:line: dotted.path: what was expected, got
// 'value'`. Unknown keys, duplicate keys, wrong types and out-of-range values are all errors;
// nothing is silently ignored. yaml-cpp exceptions never escape: they become
// absl::InvalidArgumentError.
//
// A key whose value is YAML null (`zone:` with nothing after it, or `~`) reads as if the key
// were absent, so the default applies.
//
// Typical use (config structs are initialised with their defaults, then overridden):
//   absl::StatusOr<YamlDocument> doc = YamlDocument::LoadFile(path);
//   if (!doc.ok()) return doc.status();
//   absl::StatusOr<YamlMap> root = doc->Root();
//   if (!root.ok()) return root.status();
//   if (absl::Status s = root->CheckKeys({"workers", "http"}); !s.ok()) return s;
//   if (absl::Status s = root->ReadUint<uint32_t>("workers", 0, 1024, &config.workers); !s.ok()) {
//     return s;
//   }
#ifndef RDV_COMMON_YAML_CONFIG_H_
#define RDV_COMMON_YAML_CONFIG_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "yaml-cpp/yaml.h"

namespace rdv {

// Bounds for every *_ms timeout in the configuration files. Below 10 ms is a typo, yet tests
// can still run fast timers; above a day is a typo too.
inline constexpr int64_t kMinConfigTimeoutMs = 10;
inline constexpr int64_t kMaxConfigTimeoutMs = 24 * 3600 * 1000;

// Identifiers that end up in logs and on the wire (relay_id, agent_id, credential names):
// 1..128 printable ASCII characters, no spaces.
bool IsPrintableToken(std::string_view text);

// A network endpoint as written in configuration. `host` never carries brackets: "[::1]:80"
// parses to {"::1", 80}.
struct HostPort {
  std::string host;
  uint16_t port = 0;

  friend bool operator==(const HostPort&, const HostPort&) = default;
};

// Parses "host:port", "1.2.3.4:port" or "[v6]:port". The host is an IPv4 literal, an IPv6
// literal (brackets required) or a DNS name; port 0 is accepted (callers that need a real port
// check for it).
absl::StatusOr<HostPort> ParseHostPort(std::string_view text);

// Inverse of ParseHostPort: "[::1]:80" for IPv6 hosts, "host:80" otherwise.
std::string FormatHostPort(const HostPort& host_port);

// True for an IPv4 or IPv6 address literal (no brackets, no port).
bool IsIpLiteral(std::string_view text);

class YamlMap;

// One node of a loaded document together with the dotted path that names it in errors
// ("credentials[0].grants[2]"). Cheap to copy: YAML::Node is reference counted.
class YamlValue {
 public:
  YamlValue(std::shared_ptr<const std::string> file_name, const YAML::Node& node, std::string path);
  // `mark` overrides the node's own position (yaml-cpp has none for some null nodes).
  YamlValue(std::shared_ptr<const std::string> file_name, const YAML::Node& node, std::string path,
            YAML::Mark mark);

  const YAML::Node& node() const { return node_; }
  const std::string& path() const { return path_; }
  const std::string& file_name() const { return *file_name_; }
  bool IsNull() const;

  // "file:line" (1-based line), or just "file" when the position is unknown.
  std::string Location() const;
  // InvalidArgumentError "file:line: path: message" ("file:line: message" at the root).
  absl::Status Error(std::string_view message) const;

  // Scalars only; numbers and booleans are returned as written.
  absl::StatusOr<std::string> AsString() const;
  // Decimal digits only (no sign, no hex), within [min, max].
  absl::StatusOr<uint64_t> AsUint(uint64_t min, uint64_t max) const;
  // `true` or `false` (any case).
  absl::StatusOr<bool> AsBool() const;
  // An integer number of milliseconds within [min_ms, max_ms].
  absl::StatusOr<absl::Duration> AsDurationMs(int64_t min_ms, int64_t max_ms) const;
  // A sequence; items are named "path[i]". Null reads as an empty list.
  absl::StatusOr<std::vector<YamlValue>> AsList() const;
  absl::StatusOr<std::vector<std::string>> AsStringList() const;
  // A map; null reads as an empty map.
  absl::StatusOr<YamlMap> AsMap() const;
  // A host:port (see ParseHostPort). With `require_ip_literal` the host must be an address.
  absl::StatusOr<HostPort> AsHostPort(bool allow_port_zero, bool require_ip_literal) const;

  // "got 'abc'" / "got a list" / "got a map", to end messages about this node.
  std::string Got() const;

 private:
  friend class YamlMap;

  std::shared_ptr<const std::string> file_name_;
  YAML::Node node_;
  std::string path_;
  YAML::Mark mark_;
};

// A YAML map read strictly. Create it with YamlValue::AsMap() or YamlDocument::Root().
//
// The Read* helpers leave `*value` untouched when the key is absent or null, so a config struct
// initialised with its defaults can be filled in place. They fail when the key is present with a
// value of the wrong type or out of range.
class YamlMap {
 public:
  const YamlValue& value() const { return value_; }
  const std::string& path() const { return value_.path(); }

  // Fails on the first key not in `allowed`: "file:line: unknown key 'foo' in 'http'"
  // ("at top level" for the root map). Also rejects duplicate and non-scalar keys.
  absl::Status CheckKeys(std::initializer_list<std::string_view> allowed) const;

  // Whether `key` is written at all, even with a null value.
  bool HasKey(std::string_view key) const;
  // The value of `key`, or nullopt when the key is absent or null.
  std::optional<YamlValue> Find(std::string_view key) const;
  // Like Find, but absence is an error: "file:line: missing required key 'name' in 'x'".
  absl::StatusOr<YamlValue> Require(std::string_view key) const;
  // The items of the list under `key`, which is required and must not be empty: an empty list
  // fails with "file:line: path.key: <empty_message>".
  absl::StatusOr<std::vector<YamlValue>> RequireNonEmptyList(std::string_view key,
                                                             std::string_view empty_message) const;
  // Error attributed to this map: "file:line: path: message".
  absl::Status Error(std::string_view message) const { return value_.Error(message); }
  // Dotted path of a child key ("http.listen").
  std::string ChildPath(std::string_view key) const;

  absl::Status ReadString(std::string_view key, std::string* value) const;
  // A string that must be one of `allowed`.
  absl::Status ReadEnum(std::string_view key, std::initializer_list<std::string_view> allowed,
                        std::string* value) const;
  absl::Status ReadBool(std::string_view key, bool* value) const;
  absl::Status ReadDurationMs(std::string_view key, int64_t min_ms, int64_t max_ms,
                              absl::Duration* value) const;
  // A *_ms timeout within [kMinConfigTimeoutMs, kMaxConfigTimeoutMs].
  absl::Status ReadTimeoutMs(std::string_view key, absl::Duration* value) const {
    return ReadDurationMs(key, kMinConfigTimeoutMs, kMaxConfigTimeoutMs, value);
  }
  absl::Status ReadStringList(std::string_view key, std::vector<std::string>* value) const;
  absl::Status ReadHostPortList(std::string_view key, bool allow_port_zero, bool require_ip_literal,
                                std::vector<HostPort>* value) const;
  // A file path that, when not empty, must name a file readable now: a typo in a path is then
  // a configuration error rather than a failure at first use.
  absl::Status ReadReadablePath(std::string_view key, std::string* value) const;
  // A secret given either inline under `inline_key` or as the contents of the file named under
  // `file_key` (trailing newlines stripped). Exactly one of the two is required, and the secret
  // must have at least `min_length` bytes. Messages never echo the secret.
  absl::StatusOr<std::string> ReadSecret(std::string_view inline_key, std::string_view file_key,
                                         size_t min_length) const;

  template <typename Int>
  absl::Status ReadUint(std::string_view key, Int min, Int max, Int* value) const {
    static_assert(std::is_unsigned_v<Int>);
    std::optional<YamlValue> found = Find(key);
    if (!found) return absl::OkStatus();
    absl::StatusOr<uint64_t> parsed = found->AsUint(min, max);
    if (!parsed.ok()) return parsed.status();
    *value = static_cast<Int>(*parsed);
    return absl::OkStatus();
  }

 private:
  friend class YamlValue;
  explicit YamlMap(YamlValue value) : value_(std::move(value)) {}

  YamlValue value_;
};

// A parsed YAML file holding exactly one document (a second "---" document is an error).
class YamlDocument {
 public:
  // Reads and parses `path`. Errors: "cannot read 'path': reason" or "path:line:col: reason".
  static absl::StatusOr<YamlDocument> LoadFile(const std::string& path);
  // Parses `text`; `file_name` is used only in error messages.
  static absl::StatusOr<YamlDocument> Parse(std::string_view text, std::string_view file_name);

  const YamlValue& root_value() const { return root_; }
  // The root as a map (an empty document reads as an empty map).
  absl::StatusOr<YamlMap> Root() const { return root_.AsMap(); }

 private:
  explicit YamlDocument(YamlValue root) : root_(std::move(root)) {}

  YamlValue root_;
};

// Turns a loaded or parsed document into a config with `parse_document`, passing on the error
// of a document that did not load. It gives LoadRelayConfig/ParseRelayConfig (and the agent's
// pair) one shape:
//   return ParseConfigDocument(YamlDocument::LoadFile(path), ParseRelayDocument);
template <typename Config>
absl::StatusOr<Config> ParseConfigDocument(
    const absl::StatusOr<YamlDocument>& document,
    absl::StatusOr<Config> (*parse_document)(const YamlDocument&)) {
  if (!document.ok()) return document.status();
  return parse_document(*document);
}

// Reads a whole (small) file, e.g. a secret_file. Errors: "cannot read 'path': reason".
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);

}  // namespace rdv

#endif  // RDV_COMMON_YAML_CONFIG_H_
