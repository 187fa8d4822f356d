#include "common/link_client_config.h"

#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/auth.h"

namespace rdv {

absl::StatusOr<std::string> NormalizeFingerprint(std::string_view text) {
  std::string_view rest = text;
  if (rest.size() >= 7 && absl::AsciiStrToLower(std::string(rest.substr(0, 7))) == "sha256:") {
    rest.remove_prefix(7);
  }
  std::string hex;
  for (char c : rest) {
    if (c == ':') continue;
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          "expected a SHA-256 fingerprint: 64 hex digits, optionally prefixed with 'sha256:' "
          "and separated by ':'");
    }
    hex.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a SHA-256 fingerprint of 64 hex digits, got ", hex.size()));
  }
  return hex;
}

absl::Status ReadRelayTrust(const YamlMap& map, RelayTrustConfig* trust) {
  if (absl::Status s = map.ReadString("server_name", &trust->server_name); !s.ok()) return s;
  if (!trust->server_name.empty()) {
    std::string lower = absl::AsciiStrToLower(trust->server_name);
    if (!IsValidHostName(lower)) {
      std::optional<YamlValue> where = map.Find("server_name");
      return where->Error(absl::StrCat("expected a DNS name, ", where->Got()));
    }
    trust->server_name = std::move(lower);
  }
  if (absl::Status s = map.ReadReadablePath("relay_ca_file", &trust->relay_ca_file); !s.ok()) {
    return s;
  }
  std::string fingerprint;
  if (absl::Status s = map.ReadString("relay_fingerprint", &fingerprint); !s.ok()) return s;
  if (!fingerprint.empty()) {
    absl::StatusOr<std::string> normalized = NormalizeFingerprint(fingerprint);
    if (!normalized.ok()) {
      return map.Find("relay_fingerprint")->Error(std::string(normalized.status().message()));
    }
    trust->relay_fingerprint = *std::move(normalized);
  }
  if (!trust->relay_ca_file.empty() && !trust->relay_fingerprint.empty()) {
    return map.Find("relay_fingerprint")
        ->Error("set either relay_ca_file or relay_fingerprint, not both");
  }
  if (trust->relay_ca_file.empty() && trust->relay_fingerprint.empty()) {
    return map.Error(
        "one of relay_ca_file or relay_fingerprint is required to authenticate the relay");
  }
  return absl::OkStatus();
}

absl::Status ReadLinkCredential(const YamlMap& map, std::string_view key,
                                LinkCredentialConfig* credential) {
  absl::StatusOr<YamlValue> value = map.Require(key);
  if (!value.ok()) return value.status();
  absl::StatusOr<YamlMap> entry = value->AsMap();
  if (!entry.ok()) return entry.status();
  if (absl::Status s = entry->CheckKeys({"name", "secret", "secret_file"}); !s.ok()) return s;
  return ReadCredentialNameAndSecret(*entry, credential);
}

absl::Status ReadCredentialNameAndSecret(const YamlMap& entry, LinkCredentialConfig* credential) {
  absl::StatusOr<YamlValue> name_value = entry.Require("name");
  if (!name_value.ok()) return name_value.status();
  absl::StatusOr<std::string> name = name_value->AsString();
  if (!name.ok()) return name.status();
  if (!IsPrintableToken(*name)) {
    return name_value->Error(absl::StrCat(
        "expected a name of printable characters without spaces, ", name_value->Got()));
  }
  credential->name = *std::move(name);
  absl::StatusOr<std::string> secret = entry.ReadSecret("secret", "secret_file", kMinSecretLength);
  if (!secret.ok()) return secret.status();
  credential->secret = *std::move(secret);
  return absl::OkStatus();
}

}  // namespace rdv
