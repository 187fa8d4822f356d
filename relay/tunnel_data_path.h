// Tunnel data paths at the relay (docs/protocol.md "Tunnel data path"):
//
// 1. offer    once a tunnel between two agents linked here directly is bridged, the bridge
//             (relay/tunnel_bridge.cc) calls OfferDataPath on the opener's worker: two fresh
//             random tokens, registered relay-wide in the DataPathRegistry, and an offer
//             waiting for them on that worker. The bridge sends each end its token.
// 2. present  a connection to the agent listener whose first byte is 'R' has its request line
//             read (relay/agent_listener_session.h) and its token presented here. A token whose
//             offer lives on another worker moves there with its socket (RelayWorker::HandOff),
//             once; an unknown, used or expired one is answered ERR.
// 3. pair     the offer takes each token once. When both ends arrived it answers OK on both and
//             splices them (relay/data_path_splice.h). An offer still missing an end
//             kDataPathPairTimeout after it was made answers the end that came ERR, closes it
//             and forgets its tokens.
//
// Every connection refused is counted in rdv_tunnel_data_paths_total{result} and logged with
// its peer's address; each spliced pair counts once as result="spliced".
#ifndef RDV_RELAY_TUNNEL_DATA_PATH_H_
#define RDV_RELAY_TUNNEL_DATA_PATH_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/data_path.h"
#include "common/tcp_connection.h"

namespace rdv {

class DataPathOffer;
class RelayWorker;

// The refusal reasons sent on the wire.
inline constexpr std::string_view kUnknownDataPathToken = "unknown or expired token";
inline constexpr std::string_view kDataPathPartnerMissing =
    "the other end of the tunnel did not arrive";

// The two tokens of one offer (kDataPathTokenSize raw bytes each).
struct DataPathTokens {
  std::string opener;
  std::string far_end;
};

// Relay-wide: which worker holds the offer of each live token. Thread-safe.
class DataPathRegistry {
 public:
  struct Ticket {
    int worker = -1;                 // the offer's worker
    DataPathOffer* offer = nullptr;  // valid only on `worker`'s loop, while the ticket is held
    int end = 0;                     // 0: the opener's token, 1: the far end's
  };

  void Add(const std::string& token, Ticket ticket);
  // The worker holding the offer of `token`, -1 when the token is unknown (or used, expired).
  int WorkerOf(std::string_view token) const;
  // On `worker`'s loop: removes `token` and returns its ticket when its offer is held there.
  std::optional<Ticket> Take(std::string_view token, int worker);
  void Remove(std::string_view token);

  // The protocol's timeouts; tests shorten them. Read when an offer or a connection starts.
  absl::Duration pair_timeout() const;
  absl::Duration request_timeout() const;
  void set_timeouts_for_test(absl::Duration pair, absl::Duration request);

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Ticket> tickets_ ABSL_GUARDED_BY(mu_);
  absl::Duration pair_timeout_ ABSL_GUARDED_BY(mu_) = kDataPathPairTimeout;
  absl::Duration request_timeout_ ABSL_GUARDED_BY(mu_) = kDataPathRequestTimeout;
};

// On `owner`'s loop: makes an offer held there and returns its tokens. `label` names the
// tunnel in logs ("pair site-b (agent-a -> agent-b)").
DataPathTokens OfferDataPath(RelayWorker& owner, std::string label);

// On `worker`'s loop: `connection` (reading paused) presented `token` (raw bytes) and then sent
// `early`. Joins it to its offer, here or on the offer's worker, or answers ERR and closes it.
void PresentDataPathToken(RelayWorker& worker, std::unique_ptr<TcpConnection> connection,
                          std::string token, std::string early);

// Answers `ERR <reason>` on `connection` and closes it, counted under `result` and logged with
// the peer's address. Nothing may have been written on the connection before: the line then
// fits the empty socket buffer, so closing right away loses nothing.
void RefuseDataPath(TcpConnection& connection, std::string_view result, std::string_view reason);

}  // namespace rdv

#endif  // RDV_RELAY_TUNNEL_DATA_PATH_H_
