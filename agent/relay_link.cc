#include "agent/relay_link.h"

#include "absl/strings/ascii.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/proxy_protocol.h"
#include "common/secure_channel.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr uint32_t kProtocolVersion = 1;
constexpr std::string_view kExporterLabel = "EXPORTER-rdv-auth";
constexpr uint64_t kPingIntervalMs = 10000;
constexpr uint64_t kIdleTimeoutMs = 30000;

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

}  // namespace

RelayLink::RelayLink(Agent& agent, int index, HostPort relay)
    : agent_(agent),
      index_(index),
      relay_(std::move(relay)),
      timer_(new uv_timer_t),
      backoff_(agent.config().reconnect),
      alive_(std::make_shared<RelayLink*>(this)),
      udp_flows_(agent.loop(), agent.tasks(), kUdpFlowIdleTimeoutMs) {
  uv_timer_init(agent.loop(), timer_);
  timer_->data = this;
}

RelayLink::~RelayLink() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (link_) link_->Close(absl::CancelledError("agent stopping"));
  if (tls_) tls_->Close();
}

void RelayLink::Dial() {
  if (state_ == State::kStopped) return;
  state_ = State::kDialing;
  uint64_t generation = ++dial_generation_;
  std::weak_ptr<RelayLink*> weak = alive_;
  ResolveAsync(
      agent_.loop(), relay_.host, relay_.port, SOCK_STREAM,
      [this, weak, generation](absl::StatusOr<sockaddr_storage> addr) {
        if (weak.expired() || generation != dial_generation_) return;
        if (!addr.ok()) {
          Down(addr.status());
          return;
        }
        TcpConnection::Connect(
            agent_.loop(), reinterpret_cast<const sockaddr*>(&*addr),
            [this, weak, generation](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
              if (weak.expired() || generation != dial_generation_ || state_ != State::kDialing) {
                if (tcp.ok()) (*tcp)->Close();
                return;
              }
              if (!tcp.ok()) {
                Down(tcp.status());
                return;
              }
              Connected(std::move(*tcp));
            });
      });
}

void RelayLink::Connected(std::unique_ptr<TcpConnection> tcp) {
  const AgentConfig& config = agent_.config();
  state_ = State::kHandshake;
  tls_ = TlsSession::Create(std::move(tcp), agent_.tls_context(), /*is_server=*/false,
                            agent_.tasks(), config.ServerNameFor(relay_), config.relay_fingerprint);
  LinkOptions options;
  options.is_relay_side = false;
  link_ = std::make_unique<Link>(*this, *this, options);
  last_receive_ms_ = uv_now(agent_.loop());
  // Handshake and authentication share the idle deadline.
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<RelayLink*>(t->data)->OnTimer();
      },
      kPingIntervalMs, kPingIntervalMs);
  tls_->Start(*this);
}

void RelayLink::OnTlsReady() {
  state_ = State::kAuth;
  link::Control control;
  auto* hello = control.mutable_hello();
  hello->set_version(kProtocolVersion);
  hello->set_agent_id(agent_.config().agent_id);
  hello->set_credential(agent_.config().credential.name);
  hello->set_initial_stream_window(link_->options().stream_window);
  hello->add_hops(agent_.config().agent_id);
  link_->SendControl(control);
}

void RelayLink::OnTlsData(std::string_view plaintext) {
  last_receive_ms_ = uv_now(agent_.loop());
  link_->OnBytes(plaintext);
}

void RelayLink::OnTlsDrained() {
  if (link_) link_->OnTransportDrained();
}

void RelayLink::OnTlsClosed(const absl::Status& status) { Down(status); }

void RelayLink::OnLinkFailed(Link& link, const absl::Status& status) { Down(status); }

void RelayLink::OnControl(Link& link, const link::Control& control) {
  const AgentConfig& config = agent_.config();
  switch (control.body_case()) {
    case link::Control::kChallenge: {
      if (state_ != State::kAuth) break;
      const link::Challenge& challenge = control.challenge();
      if (challenge.initial_stream_window() >= 1024) {
        link_->set_peer_stream_window(challenge.initial_stream_window());
      }
      link::Control reply;
      reply.mutable_proof()->set_mac(ComputeAuthMac(config.credential.secret, challenge.nonce(),
                                                    tls_->ExportKeyingMaterial(kExporterLabel)));
      link_->SendControl(reply);
      return;
    }
    case link::Control::kAuthResult: {
      if (state_ != State::kAuth) break;
      if (!control.auth_result().ok()) {
        spdlog::error("link {} refused by {}:{}: {}", index_, relay_.host, relay_.port,
                      control.auth_result().reason());
        Down(absl::PermissionDeniedError(AbslView(control.auth_result().reason())));
        return;
      }
      state_ = State::kReady;
      backoff_.Reset();
      LinksUp().Inc();
      spdlog::info("link {} up {}", index_, FormatHostPort(relay_));
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
      return;
    }
    case link::Control::kRegistered: {
      const link::Registered& registered = control.registered();
      std::string kind = absl::AsciiStrToLower(link::ServiceKind_Name(registered.service().kind()));
      if (registered.ok()) {
        spdlog::info("registered {} {} {}", kind, registered.service().name(),
                     registered.routes_size() > 0 ? registered.routes(0) : "");
      } else {
        spdlog::error("refused {} {}: {}", kind, registered.service().name(), registered.reason());
      }
      return;
    }
    case link::Control::kGoAway:
      spdlog::info("link {}: relay is going away: {}", index_, control.go_away().reason());
      return;
    case link::Control::kTunnelNotice:
      agent_.OnTunnelNotice(control.tunnel_notice());
      return;
    default:
      break;
  }
  CounterOf("rdv_frame_errors_total", "Links closed for a malformed or illegal frame",
            "reason=\"unexpected_control\"")
      .Inc();
  link_->Close(absl::InvalidArgumentError(
      StrCat("unexpected control message ", static_cast<int>(control.body_case()))));
}

void RelayLink::SendServiceHealth(const ServiceConfig& service, bool healthy,
                                  const std::string& detail) {
  if (state_ != State::kReady) return;
  link::Control control;
  link::ServiceHealth* report = control.mutable_service_health();
  report->set_kind(WireKind(service.kind));
  report->set_name(service.name);
  report->set_healthy(healthy);
  report->set_detail(detail);
  link_->SendControl(control);
}

void RelayLink::OnStreamOpen(Link& link, Stream& stream, const link::Open& open) {
  if (state_ != State::kReady) {
    // A relay that opens streams before authenticating us breaks the protocol.
    CounterOf("rdv_frame_errors_total", "Links closed for a malformed or illegal frame",
              "reason=\"open_before_auth\"")
        .Inc();
    link_->Close(absl::InvalidArgumentError("relay opened a stream before authentication"));
    return;
  }
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

Link* RelayLink::ready_link() {
  if (state_ != State::kReady || link_ == nullptr || link_->failed() || link_->peer_going_away()) {
    return nullptr;
  }
  return link_.get();
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
  ResolveAsync(agent_.loop(), service.target.host, service.target.port, SOCK_STREAM,
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
      agent_.loop(), address,
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
        auto splice = std::make_unique<StreamSplice>(
            std::move(*tcp), stream,
            [this](StreamSplice& splice, const absl::Status&) { agent_.Finish(splice); });
        StreamSplice* raw = splice.get();
        agent_.Adopt(std::move(splice));
        stream->Accept(*raw);
        raw->Start();
      });
}

void RelayLink::OnTimer() {
  uint64_t now = uv_now(agent_.loop());
  if (state_ == State::kIdle) {
    Dial();
    return;
  }
  if (now - last_receive_ms_ > kIdleTimeoutMs) {
    Down(absl::DeadlineExceededError("relay silent past the idle timeout"));
    return;
  }
  if (state_ == State::kReady) link_->SendPing(now);
}

void RelayLink::Down(const absl::Status& status) {
  if (state_ == State::kStopped || state_ == State::kIdle) return;
  bool was_ready = state_ == State::kReady;
  if (was_ready) LinksUp().Dec();
  state_ = State::kIdle;
  ++dial_generation_;
  spdlog::warn("link {} down: {}", index_, status.message());
  if (was_ready) {
    CounterOf("rdv_agent_link_drops_total", "Links to the relay that dropped after coming up")
        .Inc();
  }
  // Tear down after the current callbacks: we may be inside the link's or the session's.
  std::shared_ptr<Link> link(link_.release());
  std::shared_ptr<TlsSession> tls(tls_.release());
  if (link) link->Close(status);
  if (tls) tls->Close();
  agent_.tasks().Defer([link, tls] {});
  ScheduleRedial();
}

void RelayLink::ScheduleRedial() {
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<RelayLink*>(t->data)->OnTimer();
      },
      backoff_.NextDelayMs(), 0);
}

void RelayLink::Shutdown() {
  if (state_ == State::kReady) {
    LinksUp().Dec();
    link_->SendGoAway("agent shutting down");
    tls_->FlushNow();
  }
  state_ = State::kStopped;
  ++dial_generation_;
  uv_timer_stop(timer_);
  if (link_) link_->Close(absl::CancelledError("agent shutting down"));
  if (tls_) tls_->Close();
}

std::string_view RelayLink::state_name() const {
  switch (state_) {
    case State::kReady:
      return "up";
    case State::kDialing:
    case State::kHandshake:
    case State::kAuth:
      return "connecting";
    case State::kIdle:
      return "down";
    case State::kStopped:
      return "stopped";
  }
  return "?";
}

Gauge& RelayLink::LinksUp() {
  static Gauge& gauge =
      GaugeOf("rdv_agent_links_up", "Links of this agent that are up (authenticated)");
  return gauge;
}

}  // namespace rdv
