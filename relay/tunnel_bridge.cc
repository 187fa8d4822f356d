// The flow of one tunnel stream through the relay (docs/protocol.md "Tunnels"):
//
// 1. check    on the opener's worker: the Open carries a TunnelSetup and names a PRIVATE or
//             PAIR service; the opener's credential holds connect:<name> / pair:<name>; our
//             relay_id extends the hop list without a loop and within kMaxTunnelHops.
// 2. route    the directory picks a member (PRIVATE by name, PAIR by pair_id, the entry's
//             balance policy); else the upstream relay (only for streams our own agents
//             opened); else refuse (with a TunnelNotice to the holders of a pair's name when
//             only its pairing secret differs).
// 3. open     on the far end's worker, a stream to it with the extended setup; the opener's
//             stream waits undecided (Stream::Defer), its early data buffered by the link.
// 4. answer   the far end's OpenResult goes back: accept with its TunnelSetup, or refuse with
//             its reason and error.
// 5. offer    when both ends are agents linked here directly that take data path offers, a
//             data path is offered (relay/tunnel_data_path.h) on the opener's worker, and each
//             end gets its token in Control TunnelData on its own link, the opener's after the
//             OpenResult that accepted its stream.
// 6. bridge   bytes flow unchanged both ways. A side returns credit (Stream::Consumed) to its
//             stream only once the other side's Write took the bytes, and owes it while that
//             Write pushed back (until OnStreamWritable). END becomes End(); a reset or a lost
//             link becomes Reset() of the other stream.
//
// Each stream is touched only on its own worker's loop. The two sides of a bridge talk by
// messages: direct calls when both live on one worker, RelayWorker::Post otherwise (FIFO per
// worker, so an answer always precedes the data that follows it).
#include "relay/tunnel_bridge.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/tcp_connection.h"
#include "relay/directory.h"
#include "relay/relay.h"
#include "relay/relay_worker.h"
#include "relay/tunnel_data_path.h"
#include "relay/tunnel_tap.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// A far end chosen on one worker may be gone by the time its worker looks; the fresh route
// may point at yet another worker. Give up after this many hops between workers.
constexpr int kMaxWorkerHops = 4;

Counter& Refused(std::string_view reason) {
  return CounterOf("rdv_tunnels_refused_total",
                   "Tunnel streams refused, by the relay or the far end",
                   StrCat("reason=\"", reason, "\""));
}
Counter& Bridged() {
  static Counter& counter =
      CounterOf("rdv_tunnels_bridged_total", "Tunnel streams joined to their far end");
  return counter;
}
Gauge& Active() {
  static Gauge& gauge = GaugeOf("rdv_tunnels_active", "Bridged tunnel streams open now");
  return gauge;
}
Counter& Abandoned() {
  static Counter& counter =
      CounterOf("rdv_tunnels_abandoned_total",
                "Tunnel streams whose opener went away before the far end answered");
  return counter;
}
Counter& NoticesSent() {
  static Counter& counter =
      CounterOf("rdv_tunnel_notices_sent_total", "TunnelNotice messages sent to agents");
  return counter;
}

std::string KindName(link::ServiceKind kind) {
  return absl::AsciiStrToLower(link::ServiceKind_Name(kind));
}

std::string Describe(const link::ServiceSpec& service) {
  return StrCat(KindName(service.kind()), " ", service.name());
}

std::string NoRouteReason(const link::ServiceSpec& service) {
  if (service.kind() == link::PAIR) {
    return StrCat("no agent holds pair '", service.name(), "' with this pairing secret");
  }
  return StrCat("no agent serves private service '", service.name(), "'");
}

// The reason to put in the RESET of the other stream when one side died with `status`: a
// peer's reset passes on with its own reason.
std::string ResetReason(const absl::Status& status) {
  std::string_view message(status.message().data(), status.message().size());
  if (message == "reset by peer") return "";
  if (absl::StartsWith(AbslView(message), "reset: ")) message.remove_prefix(7);
  return std::string(message);
}

class TunnelBridge;

// One stream of a bridge. Lives on one worker's loop: everything but `worker` is touched only
// there.
class BridgeSide final : public StreamHandler {
 public:
  enum class Role { kOpener, kFarEnd };
  BridgeSide(TunnelBridge& bridge, Role role) : bridge_(bridge), role_(role) {}

  // Takes `stream` (on worker `worker`'s loop); the bridge lives while the side has it.
  void Attach(Stream& stream, int worker, std::shared_ptr<TunnelBridge> keep);
  int worker() const { return worker_.load(std::memory_order_acquire); }

  // Messages from the other side, run on this side's loop.
  void Answer(const link::OpenResult& far);  // opener: the far end accepted
  void RefuseOpener(std::string_view counter, const std::string& reason, link::OpenError error);
  void Deliver(std::string_view data);  // write the other side's bytes, then return their credit
  void DeliverEnd();
  void Abort(const std::string& reason);
  void Credit(size_t bytes);
  // Control TunnelData{this stream's id, token} on this stream's link.
  void SendTunnelData(const std::string& token);

  // StreamHandler
  void OnStreamAccepted(Stream& stream) override;
  void OnStreamData(Stream& stream, std::string_view data) override;
  void OnStreamEnd(Stream& stream) override;
  void OnStreamWritable(Stream& stream) override;
  void OnStreamClosed(Stream& stream, const absl::Status& status) override;

 private:
  BridgeSide& other();
  // The stream is gone (or answered for good): no more callbacks. The bridge reference is
  // dropped after the current callbacks, never inside them.
  void Detach();

  TunnelBridge& bridge_;
  const Role role_;
  Stream* stream_ = nullptr;
  std::atomic<int> worker_{-1};
  bool open_ = false;  // opener: accepted by us; far end: accepted by its agent
  size_t owed_ = 0;    // bytes written for the other side whose credit it has not had back
  std::shared_ptr<TunnelBridge> keep_;
};

class TunnelBridge : public std::enable_shared_from_this<TunnelBridge> {
 public:
  // `opener_takes_data`: the opener is an agent linked here directly that takes data path
  // offers.
  TunnelBridge(Relay& relay, const link::ServiceSpec& service, std::string opener_agent,
               bool opener_takes_data)
      : relay_(relay),
        what_(Describe(service)),
        opener_agent_(std::move(opener_agent)),
        tap_file_(relay.config().tunnel_tap_file),
        opener_takes_data_(opener_takes_data && relay.config().tunnel_data_path) {}
  ~TunnelBridge() {
    if (bridged_.load()) Active().Dec();
  }

  Relay& relay() { return relay_; }
  const std::string& what() const { return what_; }
  const std::string& opener_agent() const { return opener_agent_; }
  // Written on the far end's loop before its answer is sent, read on the opener's after it.
  std::string& far_agent() { return far_agent_; }
  // Same: the far end is an agent's link here that takes data path offers.
  bool& far_takes_data() { return far_takes_data_; }
  // On the opener's loop, once the far end accepted with `far`: whether to offer a data path.
  // The far end echoes the hops it got; ours last means no relay stands behind us on its side.
  bool OffersDataPath(const link::OpenResult& far) const {
    const auto& hops = far.tunnel().hops();
    return opener_takes_data_ && far_takes_data_ && !hops.empty() &&
           *hops.rbegin() == relay_.config().relay_id;
  }
  const std::string& tap_file() const { return tap_file_; }
  BridgeSide& opener() { return opener_; }
  BridgeSide& far_end() { return far_end_; }
  std::atomic<bool>& opener_gone() { return opener_gone_; }
  void MarkBridged() {
    bridged_.store(true);
    Bridged().Inc();
    Active().Inc();
  }

  // Runs `task` on `to`'s loop: at once when the caller (on `from_worker`) is on it already,
  // else posted there. Dropped when `to` has no worker yet or that worker is stopping.
  void Send(BridgeSide& to, int from_worker, std::function<void(BridgeSide&)> task) {
    int worker = to.worker();
    if (worker < 0) return;
    if (worker == from_worker) {
      task(to);
      return;
    }
    relay_.worker(worker).Post(
        [self = shared_from_this(), &to, task = std::move(task)] { task(to); });
  }

 private:
  Relay& relay_;
  const std::string what_;  // "pair site-b", for logs
  const std::string opener_agent_;
  std::string far_agent_;
  const std::string tap_file_;
  const bool opener_takes_data_;
  bool far_takes_data_ = false;
  BridgeSide opener_{*this, BridgeSide::Role::kOpener};
  BridgeSide far_end_{*this, BridgeSide::Role::kFarEnd};
  std::atomic<bool> bridged_{false};
  std::atomic<bool> opener_gone_{false};  // the opener left before the far end answered
};

BridgeSide& BridgeSide::other() {
  return role_ == Role::kOpener ? bridge_.far_end() : bridge_.opener();
}

void BridgeSide::Attach(Stream& stream, int worker, std::shared_ptr<TunnelBridge> keep) {
  stream_ = &stream;
  worker_.store(worker, std::memory_order_release);
  keep_ = std::move(keep);
  bridge_.relay().worker(worker).AddTunnelStream();
}

void BridgeSide::Detach() {
  if (stream_ != nullptr) bridge_.relay().worker(worker()).RemoveTunnelStream();
  stream_ = nullptr;
  if (keep_) {
    bridge_.relay().worker(worker()).tasks().Defer([keep = std::move(keep_)] {});
    keep_ = nullptr;
  }
}

void BridgeSide::Answer(const link::OpenResult& far) {
  if (stream_ == nullptr) {
    // The opener went away while the far end was answering.
    bridge_.Send(other(), worker(),
                 [](BridgeSide& far_end) { far_end.Abort("the tunnel's opener went away"); });
    return;
  }
  link::OpenResult result;
  *result.mutable_tunnel() = far.tunnel();
  open_ = true;
  bridge_.MarkBridged();
  spdlog::info("tunnel {} bridged: {} -> {}", bridge_.what(), bridge_.opener_agent(),
               bridge_.far_agent());
  // Accept delivers the opener's early data at once, to the far end.
  stream_->Accept(*this, std::move(result));
  if (stream_ == nullptr || !bridge_.OffersDataPath(far)) return;
  DataPathTokens tokens = OfferDataPath(
      bridge_.relay().worker(worker()),
      StrCat(bridge_.what(), " (", bridge_.opener_agent(), " -> ", bridge_.far_agent(), ")"));
  SendTunnelData(tokens.opener);  // after the OpenResult that Accept sent
  bridge_.Send(other(), worker(), [token = std::move(tokens.far_end)](BridgeSide& far_end) {
    far_end.SendTunnelData(token);
  });
}

void BridgeSide::SendTunnelData(const std::string& token) {
  if (stream_ == nullptr || !open_) return;  // gone: the offer expires unused
  link::Control control;
  control.mutable_tunnel_data()->set_stream_id(stream_->id());
  control.mutable_tunnel_data()->set_token(token);
  stream_->link().SendControl(control);
}

void BridgeSide::RefuseOpener(std::string_view counter, const std::string& reason,
                              link::OpenError error) {
  if (stream_ == nullptr) return;
  Refused(counter).Inc();
  spdlog::warn("tunnel {} from {} refused ({}): {}", bridge_.what(), bridge_.opener_agent(),
               counter, reason);
  Stream* stream = stream_;
  Detach();
  stream->Refuse(reason, error);
}

void BridgeSide::Deliver(std::string_view data) {
  if (stream_ == nullptr || !open_) return;
  size_t size = data.size();
  if (stream_->Write(data)) {
    bridge_.Send(other(), worker(), [size](BridgeSide& from) { from.Credit(size); });
  } else {
    owed_ += size;  // queued, but past the watermark: credit waits for OnStreamWritable
  }
}

void BridgeSide::DeliverEnd() {
  if (stream_ != nullptr && open_) stream_->End();
}

void BridgeSide::Abort(const std::string& reason) {
  if (stream_ == nullptr) return;
  Stream* stream = stream_;
  bool undecided_opener = role_ == Role::kOpener && !open_;
  Detach();
  if (undecided_opener) {
    stream->Refuse(reason);
  } else {
    stream->Reset(reason);  // also cancels a far end's stream still waiting for its answer
  }
}

void BridgeSide::Credit(size_t bytes) {
  if (stream_ != nullptr) stream_->Consumed(bytes);
}

void BridgeSide::OnStreamAccepted(Stream& stream) {
  // The far end accepted: its setup goes back to the opener.
  open_ = true;
  link::OpenResult far = stream.result();
  bridge_.Send(other(), worker(), [far](BridgeSide& opener) { opener.Answer(far); });
}

void BridgeSide::OnStreamData(Stream& stream, std::string_view data) {
  // Data from a far end that has not answered yet breaks the protocol; it gets no credit and
  // goes nowhere (the stream stalls, the others on the link go on).
  if (!open_) return;
  TapAppend(bridge_.tap_file(), data);
  BridgeSide& to = other();
  if (to.worker() == worker()) {
    to.Deliver(data);
    return;
  }
  bridge_.Send(to, worker(),
               [bytes = std::string(data)](BridgeSide& side) { side.Deliver(bytes); });
}

void BridgeSide::OnStreamEnd(Stream& stream) {
  bridge_.Send(other(), worker(), [](BridgeSide& side) { side.DeliverEnd(); });
}

void BridgeSide::OnStreamWritable(Stream& stream) {
  if (owed_ == 0) return;
  size_t owed = std::exchange(owed_, 0);
  bridge_.Send(other(), worker(), [owed](BridgeSide& from) { from.Credit(owed); });
}

void BridgeSide::OnStreamClosed(Stream& stream, const absl::Status& status) {
  bool was_open = open_;
  Detach();
  if (role_ == Role::kOpener && !was_open) {
    // Reset or link lost while the far end was being asked; its answer will find us gone.
    bridge_.opener_gone().store(true);
    Abandoned().Inc();
    spdlog::info("tunnel {} from {}: the opener went away before the far end answered: {}",
                 bridge_.what(), bridge_.opener_agent(), status.message());
    return;
  }
  if (role_ == Role::kFarEnd && !was_open) {
    // Refused by the far end (its reason and error), or its link lost before it answered.
    link::OpenResult result = stream.result();
    std::string reason = result.reason().empty() ? std::string(status.message()) : result.reason();
    link::OpenError error = result.error();
    bridge_.Send(other(), worker(), [reason, error](BridgeSide& opener) {
      opener.RefuseOpener("far_end_refused", reason, error);
    });
    return;
  }
  if (status.ok()) return;  // finished cleanly: the other stream finishes on its own
  spdlog::info("tunnel {} ({} -> {}): {} stream ended: {}", bridge_.what(), bridge_.opener_agent(),
               bridge_.far_agent(), role_ == Role::kOpener ? "opener's" : "far end's",
               status.message());
  std::string reason = ResetReason(status);
  bridge_.Send(other(), worker(), [reason](BridgeSide& side) { side.Abort(reason); });
}

// What travels to the worker that opens the far end.
struct FarEndRequest {
  link::Open open;  // for the far end; its service is replaced by the registered one
  link::ServiceKind kind = link::PRIVATE;
  std::string key;  // the directory key: a PRIVATE name or a pair_id
  std::string client_ip;
  bool upstream = false;                  // forward to our upstream relay
  const StreamCarrier* chosen = nullptr;  // the member the first route picked
  int worker_hops = 0;
};

// On `worker`'s loop: opens the far end's stream, or has the opener refused.
void OpenFarEnd(RelayWorker& worker, const std::shared_ptr<TunnelBridge>& bridge,
                FarEndRequest request) {
  if (bridge->opener_gone().load()) return;  // nobody to answer
  auto refuse = [&](std::string_view counter, std::string reason, link::OpenError error) {
    bridge->Send(bridge->opener(), worker.index(),
                 [counter, reason = std::move(reason), error](BridgeSide& opener) {
                   opener.RefuseOpener(counter, reason, error);
                 });
  };
  StreamCarrier* carrier = nullptr;
  if (request.upstream) {
    carrier = worker.relay().upstream();
    if (carrier == nullptr || carrier->worker() != worker.index()) {
      refuse("no_route", NoRouteReason(request.open.service()), link::HOST_UNREACHABLE);
      return;
    }
  } else {
    RouteResult route = worker.directory().Reroute(request.kind, request.key, worker.index(),
                                                   request.client_ip, request.chosen);
    if (route.outcome != RouteResult::Outcome::kFound) {
      refuse("no_route", NoRouteReason(request.open.service()), link::HOST_UNREACHABLE);
      return;
    }
    if (route.worker != worker.index()) {
      if (++request.worker_hops > kMaxWorkerHops) {
        refuse("no_route", NoRouteReason(request.open.service()), link::HOST_UNREACHABLE);
        return;
      }
      request.chosen = route.carrier;
      RelayWorker& next = worker.relay().worker(route.worker);
      next.Post([&next, bridge, request = std::move(request)]() mutable {
        OpenFarEnd(next, bridge, std::move(request));
      });
      return;
    }
    carrier = route.carrier;
    *request.open.mutable_service() = route.service;
  }
  bridge->far_agent() = carrier->agent();
  bridge->far_takes_data() = !request.upstream && carrier->takes_tunnel_data();
  Stream* stream = carrier->OpenTunnelStream(request.open, bridge->far_end());
  if (stream == nullptr) {
    refuse("no_route", StrCat("the link serving ", bridge->what(), " cannot take a stream now"),
           link::HOST_UNREACHABLE);
    return;
  }
  bridge->far_end().Attach(*stream, worker.index(), bridge);
}

}  // namespace

bool IsValidPairId(std::string_view pair_id) {
  if (pair_id.size() != 32) return false;
  for (char c : pair_id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void NotifyOtherPairHolders(Relay& relay, const link::ServiceSpec& asked,
                            const std::string& detail) {
  for (const RouteResult& holder :
       relay.directory().OtherPairHolders(asked.name(), asked.pair_id())) {
    RelayWorker& worker = relay.worker(holder.worker);
    const StreamCarrier* carrier = holder.carrier;
    worker.Post([&worker, carrier, asked, detail] {
      // On the holder's loop: only a carrier still listed is alive to be told.
      for (const RouteResult& now :
           worker.directory().OtherPairHolders(asked.name(), asked.pair_id())) {
        if (now.carrier != carrier || now.worker != worker.index()) continue;
        link::TunnelNotice notice;
        *notice.mutable_service() = now.service;
        notice.set_detail(detail);
        now.carrier->SendTunnelNotice(notice);
        NoticesSent().Inc();
        return;
      }
    });
  }
}

void RouteTunnel(RelayWorker& worker, Stream& stream, const link::Open& open,
                 const TunnelOrigin& origin) {
  const link::ServiceSpec& asked = open.service();
  const RelayConfig& config = worker.config();
  auto refuse = [&](std::string_view counter, const std::string& reason, link::OpenError error,
                    std::string_view detail = "") {
    Refused(counter).Inc();
    spdlog::warn("tunnel {} from {} refused ({}): {}{}", Describe(asked), origin.agent, counter,
                 reason, detail);
    stream.Refuse(reason, error);
  };

  // 1. Check.
  if (!open.has_tunnel() || !IsTunnelKind(asked.kind())) {
    refuse("not_tunnel", "the relay accepts only tunnel streams (private or pair) from agents",
           link::NOT_ALLOWED);
    return;
  }
  if (!IsValidServiceName(asked.name())) {
    refuse("invalid", "invalid service name", link::OPEN_ERROR_UNSPECIFIED);
    return;
  }
  if (asked.kind() == link::PAIR && !IsValidPairId(asked.pair_id())) {
    refuse("invalid", "invalid pair id (expected 32 lowercase hex digits)",
           link::OPEN_ERROR_UNSPECIFIED);
    return;
  }
  if (origin.credential != nullptr) {
    GrantKind needed = asked.kind() == link::PAIR ? GrantKind::kPair : GrantKind::kConnect;
    if (!origin.credential->Grants(needed, asked.name())) {
      refuse("not_granted", "not granted", link::NOT_ALLOWED,
             StrCat(" (credential '", origin.credential->name, "' has no grant for ",
                    GrantKindName(needed), ":", asked.name(), ")"));
      return;
    }
  }
  const auto& hops = open.tunnel().hops();
  if (std::find(hops.begin(), hops.end(), config.relay_id) != hops.end()) {
    refuse("loop", StrCat("tunnel loop: relay ", config.relay_id, " is already on the path"),
           link::OPEN_ERROR_UNSPECIFIED);
    return;
  }
  if (hops.size() >= kMaxTunnelHops) {
    refuse("too_many_hops", StrCat("tunnel path longer than ", kMaxTunnelHops, " relays"),
           link::OPEN_ERROR_UNSPECIFIED);
    return;
  }

  FarEndRequest request;
  *request.open.mutable_service() = asked;
  *request.open.mutable_tunnel() = open.tunnel();
  request.open.mutable_tunnel()->add_hops(config.relay_id);
  request.open.set_entrypoint("tunnel");
  request.open.set_client_address(origin.peer_address);
  request.kind = asked.kind();
  request.key = asked.kind() == link::PAIR ? asked.pair_id() : asked.name();
  request.client_ip = HostOfAddress(origin.peer_address);

  // 2. Route.
  int far_worker = -1;
  RouteResult route =
      worker.directory().RouteService(request.kind, request.key, worker.index(), request.client_ip);
  StreamCarrier* upstream = nullptr;
  if (route.outcome == RouteResult::Outcome::kFound) {
    request.chosen = route.carrier;
    far_worker = route.worker;
  } else if (origin.credential != nullptr && (upstream = worker.relay().upstream()) != nullptr) {
    request.upstream = true;
    far_worker = upstream->worker();
  } else if (asked.kind() == link::PAIR &&
             !worker.directory().OtherPairHolders(asked.name(), asked.pair_id()).empty()) {
    std::string asker = open.tunnel().agent_id().empty() ? origin.agent : open.tunnel().agent_id();
    refuse("pair_secret_mismatch",
           StrCat("pair '", asked.name(), "' is registered with a different pairing secret"),
           link::HOST_UNREACHABLE);
    NotifyOtherPairHolders(worker.relay(), asked,
                           StrCat("an agent (", asker, ") asked for pair '", asked.name(),
                                  "' with a different pairing secret"));
    return;
  } else {
    std::string reason = NoRouteReason(asked);
    if (route.unhealthy) reason += " (every agent serving it reported it unhealthy)";
    refuse("no_route", reason, link::HOST_UNREACHABLE);
    return;
  }

  // 3. Open the far end, on its worker; the opener's stream waits for its answer (4, 5).
  // A downstream relay's Open carries the hops before us; an agent's carries none.
  bool opener_takes_data = origin.takes_tunnel_data && hops.empty();
  auto bridge =
      std::make_shared<TunnelBridge>(worker.relay(), asked, origin.agent, opener_takes_data);
  bridge->opener().Attach(stream, worker.index(), bridge);
  stream.Defer(bridge->opener());
  if (far_worker == worker.index()) {
    OpenFarEnd(worker, bridge, std::move(request));
    return;
  }
  RelayWorker& far = worker.relay().worker(far_worker);
  far.Post([&far, bridge, request = std::move(request)]() mutable {
    OpenFarEnd(far, bridge, std::move(request));
  });
}

}  // namespace rdv
