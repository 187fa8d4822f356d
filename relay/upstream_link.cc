#include "relay/upstream_link.h"

#include <set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/relay.h"
#include "relay/relay_worker.h"
#include "relay/tunnel_bridge.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

Gauge& UpstreamUp() {
  static Gauge& gauge =
      GaugeOf("rdv_upstream_relay_up", "1 while the link to the upstream relay is authenticated");
  return gauge;
}

std::string KindName(link::ServiceKind kind) {
  return absl::AsciiStrToLower(link::ServiceKind_Name(kind));
}

// Identifies one registration upstream: a PAIR by its pair_id (its name is a label), a PRIVATE
// service by its name.
std::string RegistrationKey(const link::ServiceSpec& service) {
  return StrCat(KindName(service.kind()), " ",
                service.kind() == link::PAIR ? service.pair_id() : service.name());
}

LinkClientOptions ClientOptions(const RelayConfig& config, const UpstreamConfig& upstream,
                                SSL_CTX* tls_context) {
  LinkClientOptions options;
  options.log_name = "upstream link";
  options.relay = upstream.relay;
  options.tls_context = tls_context;
  options.server_name = upstream.ServerName();
  options.fingerprint = upstream.trust.relay_fingerprint;
  options.id = config.relay_id;
  options.credential = upstream.credential;
  options.link.stream_window = config.link.stream_window;
  options.link.link_window = config.link.link_window;
  options.link.max_streams = config.link.max_streams_per_link;
  options.ping_interval_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(config.link.ping_interval));
  options.idle_timeout_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(config.link.idle_timeout));
  return options;
}

}  // namespace

absl::StatusOr<std::unique_ptr<UpstreamLink>> UpstreamLink::Create(RelayWorker& worker,
                                                                   const UpstreamConfig& upstream) {
  absl::StatusOr<SslCtxPtr> context = CreateLinkClientContext(upstream.trust.relay_ca_file);
  if (!context.ok()) return context.status();
  LinkClientOptions options = ClientOptions(worker.config(), upstream, context->get());
  // Declared now, so /metrics shows the link as down before the first dial completes.
  UpstreamUp().Set(0);
  return std::unique_ptr<UpstreamLink>(
      new UpstreamLink(worker, *std::move(context), std::move(options)));
}

UpstreamLink::UpstreamLink(RelayWorker& worker, SslCtxPtr tls_context, LinkClientOptions options)
    : LinkClient(worker.loop(), worker.tasks(), std::move(options)),
      worker_(worker),
      tls_context_(std::move(tls_context)),
      label_(StrCat("upstream ", FormatHostPort(this->options().relay))) {}

UpstreamLink::~UpstreamLink() = default;

int UpstreamLink::worker() const { return worker_.index(); }

void UpstreamLink::Stop() {
  if (authenticated_.exchange(false)) UpstreamUp().Set(0);
  Shutdown("relay shutting down");
}

void UpstreamLink::Retire() {
  retired_ = true;
  authenticated_.store(false, std::memory_order_release);  // the replacement owns the gauge
  LinkClient::Retire();
  StopIfRetiredAndIdle();
}

void UpstreamLink::OnPeerGoingAway() { worker_.relay().ReplaceUpstream(*this); }

void UpstreamLink::OnStreamRemoved(Link& link) {
  open_streams_ = link.stream_count();
  if (retired_) StopIfRetiredAndIdle();
}

void UpstreamLink::OnLinkReady() {
  authenticated_.store(true, std::memory_order_release);
  UpstreamUp().Set(1);
  CounterOf("rdv_upstream_relay_links_total", "Links to the upstream relay that authenticated")
      .Inc();
  spdlog::info("upstream link: authenticated at relay {} as {}", relay_id(),
               options().credential.name);
  registered_.clear();
  SyncTunnelServices();  // everything, on a fresh link
}

void UpstreamLink::OnLinkDown(const absl::Status& status, bool was_ready) {
  if (!was_ready || retired_) return;
  authenticated_.store(false, std::memory_order_release);
  UpstreamUp().Set(0);
  CounterOf("rdv_upstream_relay_drops_total",
            "Links to the upstream relay that dropped after authenticating")
      .Inc();
  registered_.clear();  // the upstream released them with the link
}

void UpstreamLink::NoteTunnelServicesChanged() {
  if (sync_posted_.exchange(true)) return;
  worker_.Post([this] {
    // Cleared before reading the directory: a change noted from now on posts another sync.
    sync_posted_.store(false);
    if (retired_) {
      worker_.relay().NoteTunnelServicesChanged();  // replaced meanwhile: the new link syncs
      return;
    }
    SyncTunnelServices();
  });
}

void UpstreamLink::SyncTunnelServices() {
  if (!ready()) return;  // the next link registers everything
  std::map<std::string, link::ServiceSpec> wanted;
  for (link::ServiceSpec& service : worker_.directory().TunnelServices()) {
    std::string key = RegistrationKey(service);
    wanted.emplace(std::move(key), std::move(service));
  }
  link::Control add;
  link::Control remove;
  for (const auto& [key, service] : wanted) {
    if (registered_.contains(key)) continue;
    *add.mutable_register_()->add_services() = service;
    registered_.emplace(key, service);
  }
  for (auto it = registered_.begin(); it != registered_.end();) {
    if (wanted.contains(it->first)) {
      ++it;
      continue;
    }
    link::ServiceSpec* gone = remove.mutable_unregister()->add_services();
    gone->set_kind(it->second.kind());
    gone->set_name(it->second.name());
    gone->set_pair_id(it->second.pair_id());
    spdlog::info("upstream link: unregistering {} {}", KindName(gone->kind()), gone->name());
    it = registered_.erase(it);
  }
  if (remove.has_unregister()) link_->SendControl(remove);
  if (add.has_register_()) link_->SendControl(add);
}

bool UpstreamLink::OnReadyControl(const link::Control& control) {
  switch (control.body_case()) {
    case link::Control::kRegistered:
      HandleRegistered(control.registered());
      return true;
    case link::Control::kTunnelNotice:
      HandleTunnelNotice(control.tunnel_notice());
      return true;
    default:
      return false;
  }
}

void UpstreamLink::HandleRegistered(const link::Registered& registered) {
  const link::ServiceSpec& service = registered.service();
  if (registered.ok()) {
    spdlog::info("upstream link: registered {} {} at relay {}", KindName(service.kind()),
                 service.name(), relay_id());
    return;
  }
  // It stays in registered_: asking again on every change would only be refused again. It is
  // retried when the link is redialed, or when it goes away here and comes back.
  CounterOf("rdv_upstream_relay_register_refused_total", "Registrations the upstream relay refused")
      .Inc();
  spdlog::error("upstream link: relay {} refused {} {}: {}", relay_id(), KindName(service.kind()),
                service.name(), registered.reason());
}

void UpstreamLink::HandleTunnelNotice(const link::TunnelNotice& notice) {
  const link::ServiceSpec& service = notice.service();
  spdlog::warn("upstream link: notice from relay {} for {} {}: {}", relay_id(),
               KindName(service.kind()), service.name(), notice.detail());
  if (service.kind() != link::PAIR) return;
  // The notice is about a pair our agents registered: pass it on to them (every local holder
  // of the name; none holds it under the asker's pairing secret, or the upstream had not asked).
  link::ServiceSpec holders;
  holders.set_kind(link::PAIR);
  holders.set_name(service.name());
  NotifyOtherPairHolders(worker_.relay(), holders, notice.detail());
}

Stream* UpstreamLink::OpenTunnelStream(link::Open open, StreamHandler& handler) {
  Link* link = ready_link();
  if (link == nullptr) return nullptr;
  Stream* stream = link->OpenStream(std::move(open), handler);
  open_streams_ = link->stream_count();
  return stream;
}

void UpstreamLink::OnStreamOpen(Link& link, Stream& stream, const link::Open& open) {
  if (!AcceptingStreams()) return;
  open_streams_ = link.stream_count();
  RouteTunnel(worker_, stream, open,
              TunnelOrigin{nullptr, tls_->tcp().peer_address(), StrCat("upstream ", relay_id())});
}

}  // namespace rdv
