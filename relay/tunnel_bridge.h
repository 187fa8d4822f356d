// Routing and bridging of agent-opened tunnel streams (docs/protocol.md "Tunnels", steps 2-4,
// and "Bridging").
//
// An agent (or, in a cascade, a downstream relay) opens a stream on its link naming a PRIVATE
// service or a PAIR. The relay checks it, finds the far end (a member of the directory entry,
// else its upstream relay), opens a second stream there and, once the far end accepted, joins
// the two: bytes flow unchanged both ways, and the relay never holds a key for them.
#ifndef RDV_RELAY_TUNNEL_BRIDGE_H_
#define RDV_RELAY_TUNNEL_BRIDGE_H_

#include <string>
#include <string_view>

#include "common/link.h"
#include "proto/link.pb.h"
#include "relay/relay_config.h"

namespace rdv {

class Relay;
class RelayWorker;

// Tunnel paths longer than this many relays are refused.
inline constexpr int kMaxTunnelHops = 16;

// A pair id as ServiceSpec.pair_id carries it: 32 lowercase hex digits.
bool IsValidPairId(std::string_view pair_id);

// Who opened a tunnel stream.
struct TunnelOrigin {
  // The opener's credential; null = the stream came from our upstream relay (no grant check,
  // never forwarded upstream again).
  const CredentialConfig* credential = nullptr;
  std::string peer_address;  // the opener link's peer "ip:port", for Open.client_address
  std::string agent;         // the opener's agent id, for logs
  // The opener's agent takes tunnel data path offers (docs/protocol.md "Tunnel data path").
  bool takes_tunnel_data = false;
};

// On `worker`'s loop, from a LinkHandler::OnStreamOpen: refuses `stream`, or routes it and
// bridges it to a stream opened to the far end. `stream` must not be accepted or refused by the
// caller; the bridge takes care of it (it is answered once the far end answered). Once bridged,
// a tunnel between two agents linked here directly that both take data path offers (and
// tunnel_data_path on) is offered one: each end gets Control TunnelData on its link.
void RouteTunnel(RelayWorker& worker, Stream& stream, const link::Open& open,
                 const TunnelOrigin& origin);

// Thread-safe: sends TunnelNotice{service, detail} to one link of every agent holding a PAIR
// labelled `asked.name()` under another pair_id than `asked.pair_id()` (posted to each
// holder's worker). Used when someone asked for the name with another pairing secret.
void NotifyOtherPairHolders(Relay& relay, const link::ServiceSpec& asked,
                            const std::string& detail);

}  // namespace rdv

#endif  // RDV_RELAY_TUNNEL_BRIDGE_H_
