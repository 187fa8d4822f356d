#include "agent/relay_link.h"

#include "absl/strings/ascii.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/proxy_protocol.h"
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
  options.reconnect_initial_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(config.reconnect.initial));
  options.reconnect_max_ms = static_cast<uint64_t>(absl::ToInt64Milliseconds(config.reconnect.max));
  return options;
}

}  // namespace

RelayLink::RelayLink(Agent& agent, int index, HostPort relay)
    : LinkClient(agent.loop(), agent.tasks(), ClientOptions(agent, index, std::move(relay))),
      agent_(agent),
      alive_(std::make_shared<RelayLink*>(this)),
      udp_flows_(agent.loop(), agent.tasks(), kUdpFlowIdleTimeoutMs) {}

RelayLink::~RelayLink() {
  // Before udp_flows_ goes: the link's streams still point at their flows.
  if (link_) link_->Close(absl::CancelledError("agent stopping"));
}

void RelayLink::OnLinkReady() {
  link::Control reg;
  for (const ServiceConfig& service : agent_.config().services) {
    link::ServiceSpec* spec = reg.mutable_register_()->add_services();
    spec->set_kind(WireKind(service.kind));
    spec->set_name(service.name);
    spec->set_port(service.port);
    spec->set_alias(service.alias);
    spec->set_balance(service.balance);
    spec->set_rewrite_html(service.rewrite_html);
  }
  link_->SendControl(reg);
  agent_.SendHealth(*this);  // after Register, so the relay knows the services
}

bool RelayLink::OnReadyControl(const link::Control& control) {
  if (control.body_case() != link::Control::kRegistered) return false;
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

void RelayLink::OnLinkDown(const absl::Status& status, bool was_ready) {
  if (was_ready) {
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
  for (const ServiceConfig& service : agent_.config().services) {
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
  // The timer and the connect race; whichever comes first settles the stream.
  struct Pending {
    uv_timer_t timer;
    bool settled = false;
  };
  auto* pending = new Pending;
  uv_timer_init(loop(), &pending->timer);
  std::weak_ptr<RelayLink*> weak = alive_;
  pending->timer.data = new std::function<void()>([this, pending, refuse, weak, link] {
    if (pending->settled) return;
    pending->settled = true;
    if (!weak.expired() && link == link_.get()) refuse(absl::DeadlineExceededError("timed out"));
  });
  uv_timer_start(
      &pending->timer, [](uv_timer_t* t) { (*static_cast<std::function<void()>*>(t->data))(); },
      static_cast<uint64_t>(absl::ToInt64Milliseconds(agent_.config().connect_timeout)), 0);
  auto release = [](Pending* p) {
    delete static_cast<std::function<void()>*>(p->timer.data);
    uv_close(reinterpret_cast<uv_handle_t*>(&p->timer),
             [](uv_handle_t* h) { delete reinterpret_cast<Pending*>(h); });
  };
  TcpConnection::Connect(
      loop(), reinterpret_cast<const sockaddr*>(&address),
      [this, weak, pending, release, refuse, link, proxy_protocol,
       stream_id](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
        bool late = pending->settled;
        pending->settled = true;
        release(pending);
        if (weak.expired() || late || link != link_.get()) {
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
        auto splice = std::make_unique<StreamSplice>(
            std::move(*tcp), stream,
            [this](StreamSplice& splice, const absl::Status&) { agent_.Finish(splice); });
        StreamSplice* raw = splice.get();
        agent_.Adopt(std::move(splice));
        stream->Accept(*raw);
        raw->Start();
      });
}

}  // namespace rdv
