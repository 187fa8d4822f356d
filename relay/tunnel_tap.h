// tunnel_tap_file (relay config): every byte the relay forwards between the two ends of a
// tunnel, both directions, appended as it passes, whether it is bridged between two link
// streams (relay/tunnel_bridge.cc) or spliced on a data path (relay/data_path_splice.cc). A
// debugging aid, and how a test shows that the relay sees only the tunnel's ciphertext.
#ifndef RDV_RELAY_TUNNEL_TAP_H_
#define RDV_RELAY_TUNNEL_TAP_H_

#include <string>
#include <string_view>

namespace rdv {

// Thread-safe: appends `bytes` to the file at `path` (opened once per path, kept open until
// exit, flushed on every write). Does nothing when `path` or `bytes` is empty; a file that
// cannot be opened is logged once and skipped from then on.
void TapAppend(const std::string& path, std::string_view bytes);

}  // namespace rdv

#endif  // RDV_RELAY_TUNNEL_TAP_H_
