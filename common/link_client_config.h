// What the dialling end of a link is configured with (docs/configuration.md): how it verifies the
// relay it dials and the credential it proves there. The agent reads these keys at the top level
// of agent.yaml; a relay reads them in its `upstream` section (cascaded relays).
#ifndef RDV_COMMON_LINK_CLIENT_CONFIG_H_
#define RDV_COMMON_LINK_CLIENT_CONFIG_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/yaml_config.h"

namespace rdv {

struct LinkCredentialConfig {
  std::string name;
  // Resolved: from `secret`, or the contents of `secret_file` without trailing newlines.
  std::string secret;
};

// How the relay's certificate is checked: exactly one of `relay_ca_file` and
// `relay_fingerprint` is set.
struct RelayTrustConfig {
  std::string server_name;        // "" = the host part of the relay address
  std::string relay_ca_file;      // PEM CA certificates the relay's chain must verify against
  std::string relay_fingerprint;  // 64 lowercase hex digits (SHA-256 of the relay cert DER)
};

// The redial schedule (common/reconnect_backoff.h); agent.yaml's `reconnect`.
struct ReconnectConfig {
  absl::Duration initial = absl::Milliseconds(100);
  absl::Duration max = absl::Milliseconds(10000);  // >= initial
};

// "sha256:AB:CD:..." / "abcd..." -> 64 lowercase hex digits; error if that is not what remains.
absl::StatusOr<std::string> NormalizeFingerprint(std::string_view text);

// Reads `server_name` (a DNS name, lowercased), `relay_ca_file` and `relay_fingerprint` from
// `map` into `trust`; exactly one of the last two is required.
absl::Status ReadRelayTrust(const YamlMap& map, RelayTrustConfig* trust);

// Reads the required map under `key` ({name, secret | secret_file}) into `credential`.
absl::Status ReadLinkCredential(const YamlMap& map, std::string_view key,
                                LinkCredentialConfig* credential);

// Reads `name` (printable, no spaces) and the secret (`secret` or `secret_file`, at least
// kMinSecretLength) of a credential map whose keys the caller has checked; the relay's
// credentials add grants and limits to these.
absl::Status ReadCredentialNameAndSecret(const YamlMap& entry, LinkCredentialConfig* credential);

}  // namespace rdv

#endif  // RDV_COMMON_LINK_CLIENT_CONFIG_H_
