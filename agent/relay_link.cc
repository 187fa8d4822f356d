#include "agent/relay_link.h"

#include "absl/strings/ascii.h"
#include "agent/smtp_opener.h"
#include "agent/tunnel.h"
#include "common/auth.h"
#include "common/data_path.h"
#include "common/metrics.h"
#include "common/proxy_protocol.h"
#include "common/secure_channel.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

link::ServiceKind WireKind(ServiceConfig::Kind kind) {
  switch (kind) {
    case ServiceConfig::Kind::kHttp:
      return link::HTTP;
    case ServiceConfig::Kind::kTcp:
      return link::TCP;
    case ServiceConfig::Kind::kTls:
      return link::TLS;
    case ServiceConfig::Kind::kSmtp:
      return link::SMTP;
    case ServiceConfig::Kind::kUdp:
      return link::UDP;
    case ServiceConfig::Kind::kPair:
      return link::PAIR;
    case ServiceConfig::Kind::kPrivate:
      return link::PRIVATE;
  }
  return link::SERVICE_KIND_UNSPECIFIED;
}

LinkClientOptions ClientOptions(const Agent& agent, int index, HostPort relay) {
  const AgentConfig& config = agent.config();
  LinkClientOptions options;
  options.log_name = StrCat("link ", index);
  options.server_name = config.ServerNameFor(relay);
  options.relay = std::move(relay);
  options.tls_context = agent.tls_context();
  options.fingerprint = config.relay_fingerprint;
  options.id = config.agent_id;
  options.credential = config.credential;
  options.features = {std::string(kFeatureSmtpEnvelope)};
  if (config.tunnel_data_path) options.features.emplace_back(kFeatureTunnelData);
  options.reconnect = config.reconnect;
  return options;
}

}  // namespace

RelayLink::RelayLink(Agent& agent, int index, HostPort relay)
    : LinkClient(agent.loop(), agent.tasks(), ClientOptions(agent, index, std::move(relay))),
      agent_(agent),
      index_(index),
      alive_(std::make_shared<RelayLink*>(this)),
      udp_flows_(agent.loop(), agent.tasks(), kUdpFlowIdleTimeoutMs) {}

RelayLink::~RelayLink() {
  // Before udp_flows_ goes: the link's streams still point at their flows.
  if (link_) link_->Close(absl::CancelledError("agent stopping"));
}

void RelayLink::Shutdown() {
  if (ready() && !retired_) LinksUp().Dec();
  LinkClient::Shutdown("agent shutting down");
}

void RelayLink::Drain() { LinkClient::Drain("agent shutting down"); }

void RelayLink::OnPeerGoingAway() { agent_.ReplaceRelayLink(*this); }

void RelayLink::Retire() {
  if (retired_) return;
  retired_ = true;
  if (ready()) LinksUp().Dec();
  LinkClient::Retire();
  StopIfRetiredAndIdle();
}

void RelayLink::OnStreamRemoved(Link& link) {
  if (retired_) StopIfRetiredAndIdle();
}

void RelayLink::OnRetiredLinkStopped() { agent_.OnRetiredLinkStopped(*this); }

size_t RelayLink::ServiceStreamCount() const {
  if (link_ == nullptr) return 0;
  return link_->CountStreams([](const Stream& stream) {
    switch (stream.open().service().kind()) {
      case link::UDP:
      case link::PAIR:
      case link::PRIVATE:
        return false;
      default:
        return true;
    }
  });
}

void RelayLink::OnLinkReady() {
  const AgentConfig& config = agent_.config();
  LinksUp().Inc();
  link::Control reg;
  for (const ServiceConfig& service : config.services) {
    link::ServiceSpec* spec = reg.mutable_register_()->add_services();
    spec->set_kind(WireKind(service.kind));
    spec->set_name(service.name);
    spec->set_port(service.port);
    spec->set_alias(service.alias);
    spec->set_balance(service.balance);
    spec->set_rewrite_html(service.rewrite_html);
    if (service.kind == ServiceConfig::Kind::kPair) {
      spec->set_pair_id(PairId(service.secret, service.name));
    }
  }
  if (!config.services.empty()) link_->SendControl(reg);
  agent_.SendHealth(*this);  // after Register, so the relay knows the services
  agent_.OnRelayLinkReady();
}

bool RelayLink::OnReadyControl(const link::Control& control) {
  switch (control.body_case()) {
    case link::Control::kRegistered: {
      const link::Registered& registered = control.registered();
      std::string kind = absl::AsciiStrToLower(link::ServiceKind_Name(registered.service().kind()));
      if (registered.ok()) {
        spdlog::info("registered {} {} {}", kind, registered.service().name(),
                     registered.routes_size() > 0 ? registered.routes(0) : "");
      } else {
        spdlog::error("refused {} {}: {}", kind, registered.service().name(), registered.reason());
      }
      return true;
    }
    case link::Control::kTunnelNotice:
      agent_.OnTunnelNotice(control.tunnel_notice());
      return true;
    case link::Control::kTunnelData:
      OfferDataPath(control.tunnel_data());
      return true;
    default:
      return false;
  }
}

void RelayLink::OfferDataPath(const link::TunnelData& offer) {
  // Hands the offer on; otherwise says why not.
  auto hand_on = [&]() -> std::string_view {
    // A relay offers only to agents whose Hello asked for offers; one that offers anyway is
    // not obeyed.
    if (!agent_.config().tunnel_data_path) return "disabled";
    if (offer.token().size() != kDataPathTokenSize) return "bad_token";
    Stream* stream = link_->FindStream(offer.stream_id());
    if (stream == nullptr) return "unknown_stream";
    auto* tunnel = dynamic_cast<Tunnel*>(stream->handler());
    if (tunnel == nullptr) return "not_tunnel";
    // The data path goes to the address this link is connected to: the same relay.
    if (!tunnel->OfferDataPath(tls_->tcp().peer_sockaddr(), offer.token())) return "not_now";
    return "";
  };
  std::string_view ignored = hand_on();
  if (ignored.empty()) return;
  CounterOf("rdv_agent_tunnel_data_offers_ignored_total",
            "Data path offers (TunnelData) this agent ignored, by reason",
            StrCat("reason=\"", ignored, "\""))
      .Inc();
  // An unknown stream is the usual race with a tunnel that just closed.
  spdlog::log(ignored == "unknown_stream" ? spdlog::level::debug : spdlog::level::info,
              "{}: data path offer for stream {} ignored: {}", options().log_name,
              offer.stream_id(), ignored);
}

void RelayLink::OnLinkDown(const absl::Status& status, bool was_ready) {
  if (retired_) {
    agent_.OnRetiredLinkStopped(*this);
    return;
  }
  if (was_ready) {
    LinksUp().Dec();
    CounterOf("rdv_agent_link_drops_total", "Links to the relay that dropped after coming up")
        .Inc();
  }
}

void RelayLink::SendServiceHealth(const ServiceConfig& service, bool healthy,
                                  const std::string& detail) {
  if (!ready()) return;
  link::Control control;
  link::ServiceHealth* report = control.mutable_service_health();
  report->set_kind(WireKind(service.kind));
  report->set_name(service.name);
  report->set_healthy(healthy);
  report->set_detail(detail);
  link_->SendControl(control);
}

void RelayLink::OnStreamOpen(Link& link, Stream& stream, const link::Open& open) {
  if (!AcceptingStreams()) return;
  if (open.has_tunnel() || open.service().kind() == link::PAIR ||
      open.service().kind() == link::PRIVATE) {
    ServeTunnel(stream, open);
    return;
  }
  for (const ServiceConfig& service : agent_.config().services) {
    if (service.is_tunnel()) continue;
    if (WireKind(service.kind) == open.service().kind() &&
        (service.name == open.service().name() ||
         (service.named_by_host() && NormalizeHost(service.name) == open.service().name()))) {
      if (service.kind == ServiceConfig::Kind::kUdp) {
        udp_flows_.Open(stream, service);
        return;
      }
      ConnectTarget(stream.id(), service);
      return;
    }
  }
  CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
  stream.Refuse(StrCat("this agent does not serve ", open.service().name()));
}

void RelayLink::ServeTunnel(Stream& stream, const link::Open& open) {
  const link::ServiceSpec& wanted = open.service();
  std::string kind = absl::AsciiStrToLower(link::ServiceKind_Name(wanted.kind()));
  if (!open.has_tunnel() || (wanted.kind() != link::PAIR && wanted.kind() != link::PRIVATE)) {
    CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
    stream.Refuse(StrCat("not a tunnel stream: ", kind, " ", wanted.name()), link::NOT_ALLOWED);
    return;
  }
  for (const ServiceConfig& service : agent_.config().services) {
    if (WireKind(service.kind) != wanted.kind() || service.name != wanted.name()) continue;
    if (service.kind == ServiceConfig::Kind::kPair &&
        PairId(service.secret, service.name) != wanted.pair_id()) {
      continue;
    }
    agent_.ServeTunnel(stream, service);
    return;
  }
  CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
  stream.Refuse(StrCat("this agent does not serve ", kind, " ", wanted.name()),
                link::HOST_UNREACHABLE);
}

void RelayLink::ConnectTarget(uint32_t stream_id, const ServiceConfig& service) {
  std::string target = FormatHostPort(service.target);
  Link* link = link_.get();
  auto refuse = [link, stream_id, target](const absl::Status& status) {
    CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
    spdlog::warn("connect {} failed: {}", target, status.message());
    if (Stream* stream = link->FindStream(stream_id)) {
      stream->Refuse(StrCat("connect ", target, ": ", status.message()));
    }
  };
  std::weak_ptr<RelayLink*> weak = alive_;
  ResolveAsync(loop(), service.target.host, service.target.port, SOCK_STREAM,
               [this, weak, link, stream_id, refuse,
                proxy = service.proxy_protocol](absl::StatusOr<sockaddr_storage> address) {
                 if (weak.expired() || link != link_.get()) return;
                 if (!address.ok()) {
                   refuse(address.status());
                   return;
                 }
                 ConnectResolved(stream_id, *address, proxy, refuse);
               });
}

void RelayLink::ConnectResolved(uint32_t stream_id, const sockaddr_storage& address,
                                const std::string& proxy_protocol,
                                std::function<void(const absl::Status&)> refuse) {
  Link* link = link_.get();
  std::weak_ptr<RelayLink*> weak = alive_;
  TcpConnection::ConnectWithin(
      loop(), address,
      static_cast<uint64_t>(absl::ToInt64Milliseconds(agent_.config().connect_timeout)),
      [this, weak, refuse, link, proxy_protocol,
       stream_id](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
        if (weak.expired() || link != link_.get()) {
          if (tcp.ok()) (*tcp)->Close();
          return;
        }
        if (!tcp.ok()) {
          refuse(tcp.status());
          return;
        }
        Stream* stream = link->FindStream(stream_id);
        if (stream == nullptr) {
          (*tcp)->Close();
          return;
        }
        if (proxy_protocol != "off") {
          // The target learns the real client before any of the client's bytes.
          (*tcp)->Write(EncodeProxyHeader(
              proxy_protocol == "v1" ? ProxyProtocolVersion::kV1 : ProxyProtocolVersion::kV2,
              stream->open().client_address(), stream->open().local_address()));
        }
        if (!stream->open().has_smtp()) {
          AcceptAndSplice(*stream, std::move(*tcp));
          return;
        }
        // The relay sent its client's envelope: open the mail conversation here first.
        auto opener = std::make_unique<SmtpOpener>(
            std::move(*tcp), *stream, stream->open().smtp(),
            [this, weak, link](SmtpOpener& opener, std::unique_ptr<TcpConnection> connection) {
              Stream* opened = opener.stream();
              agent_.Finish(opener);
              if (connection == nullptr) return;
              if (weak.expired() || link != link_.get() || opened == nullptr) {
                connection->Close();
                return;
              }
              AcceptAndSplice(*opened, std::move(connection));
            });
        SmtpOpener* raw = opener.get();
        agent_.Adopt(std::move(opener));
        raw->Start();
      });
}

void RelayLink::AcceptAndSplice(Stream& stream, std::unique_ptr<TcpConnection> connection) {
  auto splice = std::make_unique<StreamSplice>(
      std::move(connection), &stream,
      [this](StreamSplice& splice, const absl::Status&) { agent_.Finish(splice); });
  StreamSplice* raw = splice.get();
  agent_.Adopt(std::move(splice));
  stream.Accept(*raw);
  raw->Start();
}

Gauge& RelayLink::LinksUp() {
  static Gauge& gauge =
      GaugeOf("rdv_agent_links_up", "Links of this agent that are up (authenticated)");
  return gauge;
}

}  // namespace rdv
