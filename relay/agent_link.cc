#include "relay/agent_link.h"

#include <openssl/rand.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/relay.h"
#include "relay/relay_worker.h"
#include "relay/service_health.h"
#include "relay/tunnel_bridge.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// An Open for a client's connection to `service`, arriving on `entrypoint`.
link::Open ClientOpen(const link::ServiceSpec& service, const std::string& client_address,
                      const std::string& local_address, std::string_view entrypoint) {
  link::Open open;
  *open.mutable_service() = service;
  open.set_client_address(client_address);
  open.set_local_address(local_address);
  open.set_entrypoint(std::string(entrypoint));
  return open;
}

Counter& AuthRefused(std::string_view reason) {
  return CounterOf("rdv_auth_refused_total", "Agent links refused at authentication",
                   StrCat("reason=\"", reason, "\""));
}
Counter& RegisterRefused(std::string_view reason) {
  return CounterOf("rdv_register_refused_total", "Service registrations refused",
                   StrCat("reason=\"", reason, "\""));
}
Gauge& LinksActive() { return GaugeOf("rdv_links_active", "Authenticated agent links"); }
Gauge& ServicesRegistered() {
  return GaugeOf("rdv_services_registered", "Service registrations held by live links");
}

LinkOptions RelayLinkOptions(const LinkConfig& config) {
  LinkOptions options;
  options.is_relay_side = true;
  options.stream_window = config.stream_window;
  options.link_window = config.link_window;
  options.max_streams = config.max_streams_per_link;
  return options;
}

}  // namespace

AgentLink::AgentLink(RelayWorker& worker, std::unique_ptr<TlsSession> tls, uint64_t id)
    : worker_(worker),
      tls_(std::move(tls)),
      link_(*this, *this, RelayLinkOptions(worker.config().link)),
      id_(id),
      peer_(tls_->tcp().peer_address()),
      timer_(new uv_timer_t) {
  uv_timer_init(worker.loop(), timer_);
  timer_->data = this;
}

AgentLink::~AgentLink() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  tls_->Close();
}

void AgentLink::Start(uint64_t accepted_ms) {
  last_receive_ms_ = uv_now(worker_.loop());
  auto handshake_ms = static_cast<uint64_t>(
      absl::ToInt64Milliseconds(worker_.config().agent_listener.handshake_timeout));
  uint64_t elapsed =
      std::min(last_receive_ms_ - std::min(accepted_ms, last_receive_ms_), handshake_ms);
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<AgentLink*>(t->data)->OnTimer();
      },
      handshake_ms - elapsed, 0);
  tls_->Start(*this);
}

void AgentLink::OnTimer() {
  uint64_t now = uv_now(worker_.loop());
  if (state_ == State::kHandshake) {
    CounterOf("rdv_tls_handshake_errors_total", "TLS handshakes that failed", "listener=\"agent\"")
        .Inc();
    spdlog::info("agent listener: TLS handshake with {} did not finish in time", peer_);
    Close(absl::DeadlineExceededError("TLS handshake timeout"));
    return;
  }
  if (state_ != State::kReady) {
    AuthRefused("timeout").Inc();
    spdlog::warn("agent link {} from {}: no authentication within the handshake timeout", id_,
                 peer_);
    Close(absl::DeadlineExceededError("handshake timeout"));
    return;
  }
  auto idle_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(worker_.config().link.idle_timeout));
  if (now - last_receive_ms_ > idle_ms) {
    CounterOf("rdv_links_idle_closed_total", "Agent links closed after the idle timeout").Inc();
    spdlog::warn("agent link {} ({}): silent for {} ms, closing", id_, agent_id_,
                 now - last_receive_ms_);
    Close(absl::DeadlineExceededError("idle timeout"));
    return;
  }
  link_.SendPing(now);
}

void AgentLink::OnTlsReady() {
  state_ = State::kAwaitHello;
  tls_->tcp();  // peer already known
}

void AgentLink::OnTlsData(std::string_view plaintext) {
  last_receive_ms_ = uv_now(worker_.loop());
  link_.OnBytes(plaintext);
}

void AgentLink::OnTlsClosed(const absl::Status& status) {
  if (state_ == State::kHandshake) {
    CounterOf("rdv_tls_handshake_errors_total", "TLS handshakes that failed", "listener=\"agent\"")
        .Inc();
    spdlog::info("agent listener: TLS handshake with {} failed: {}", peer_, status.message());
  }
  Close(status);
}

void AgentLink::Close(const absl::Status& status) {
  if (state_ == State::kClosed) return;
  bool was_ready = state_ == State::kReady;
  state_ = State::kClosed;
  if (was_ready) {
    spdlog::info("agent link {} ({}, credential {}) closed: {}", id_, agent_id_, credential_name_,
                 status.message());
  }
  ReleaseRegistrations();
  if (counted_active_) {
    LinksActive().Dec();
    counted_active_ = false;
  }
  if (counted_for_credential_) {
    worker_.relay().RemoveLink(credential_name_);
    counted_for_credential_ = false;
  }
  link_.Close(status);  // fails open streams; their handlers answer their clients
  worker_.NoteLinkChurn();
  uv_timer_stop(timer_);
  tls_->Close();
  worker_.LinkClosed(*this);
}

void AgentLink::ReleaseRegistrations() {
  worker_.directory().Release(*this);
  ServicesRegistered().Add(-registered_);
  registered_ = 0;
  if (tunnel_registrations_ > 0) {
    tunnel_registrations_ = 0;
    worker_.relay().NoteTunnelServicesChanged();
  }
}

void AgentLink::OnLinkFailed(Link& link, const absl::Status& status) {
  if (state_ == State::kClosed) return;
  if (!status.ok() && status.code() != absl::StatusCode::kUnavailable) {
    spdlog::warn("agent link {} from {}: protocol error: {}", id_, peer_, status.message());
  }
  Close(status);
}

void AgentLink::Refuse(std::string_view counter_reason, std::string_view wire_reason,
                       std::string_view log_detail) {
  AuthRefused(counter_reason).Inc();
  spdlog::warn("agent link {} from {} refused ({}): {}", id_, peer_, counter_reason, log_detail);
  link::Control control;
  control.mutable_auth_result()->set_ok(false);
  control.mutable_auth_result()->set_reason(std::string(wire_reason));
  link_.SendControl(control);
  tls_->FlushNow();
  Close(absl::PermissionDeniedError(AbslView(wire_reason)));
}

void AgentLink::OnControl(Link& link, const link::Control& control) {
  switch (control.body_case()) {
    case link::Control::kHello:
      if (state_ != State::kAwaitHello) break;
      HandleHello(control.hello());
      return;
    case link::Control::kProof:
      if (state_ != State::kAwaitProof) break;
      HandleProof(control.proof());
      return;
    case link::Control::kRegister:
      if (state_ != State::kReady) break;
      HandleRegister(control.register_());
      return;
    case link::Control::kServiceHealth:
      if (state_ != State::kReady) break;
      ApplyServiceHealth(worker_.directory(), *this, control.service_health(),
                         StrCat("agent link ", id_, " (", agent_id_, ")"));
      return;
    case link::Control::kUnregister:
      if (state_ != State::kReady) break;
      HandleUnregister(control.unregister());
      return;
    case link::Control::kGoAway:
      // Released before the log line, which then tells (tests too) that no new client is
      // routed here.
      ReleaseRegistrations();
      spdlog::info("agent link {} ({}): agent is going away: {}", id_, agent_id_,
                   control.go_away().reason());
      return;
    default:
      break;
  }
  if (state_ != State::kReady) {
    Refuse("protocol", "protocol error",
           StrCat("unexpected control message ", control.body_case(), " before auth"));
    return;
  }
  CounterOf("rdv_frame_errors_total", "Links closed for a malformed or illegal frame",
            "reason=\"unexpected_control\"")
      .Inc();
  Close(absl::InvalidArgumentError(StrCat("unexpected control message ", control.body_case())));
}

void AgentLink::HandleHello(const link::Hello& hello) {
  if (hello.version() != kLinkProtocolVersion) {
    Refuse("protocol", "unsupported protocol version",
           StrCat("agent speaks version ", hello.version()));
    return;
  }
  agent_id_ = hello.agent_id();
  credential_name_ = hello.credential();
  takes_smtp_envelope_ = std::find(hello.features().begin(), hello.features().end(),
                                   kFeatureSmtpEnvelope) != hello.features().end();
  takes_tunnel_data_ = std::find(hello.features().begin(), hello.features().end(),
                                 kFeatureTunnelData) != hello.features().end();
  credentials_ = worker_.relay().credentials();
  credential_ = FindCredential(*credentials_, credential_name_);
  if (hello.initial_stream_window() >= 1024) {
    link_.set_peer_stream_window(hello.initial_stream_window());
  }
  link_.set_peer_link_window(hello.link_window());
  nonce_.resize(32);
  RAND_bytes(reinterpret_cast<unsigned char*>(nonce_.data()), 32);
  link::Control control;
  auto* challenge = control.mutable_challenge();
  challenge->set_nonce(nonce_);
  challenge->set_relay_id(worker_.config().relay_id);
  challenge->set_initial_stream_window(worker_.config().link.stream_window);
  challenge->set_link_window(link_.options().link_window);
  *challenge->mutable_hops() = hello.hops();
  challenge->add_hops(worker_.config().relay_id);
  link_.SendControl(control);
  state_ = State::kAwaitProof;
}

void AgentLink::HandleProof(const link::Proof& proof) {
  // Unknown credentials get the same challenge and the same wire answer as a wrong secret,
  // so the relay does not reveal which credential names exist.
  if (credential_ == nullptr) {
    Refuse("unknown_credential", "authentication failed",
           StrCat("unknown credential '", credential_name_, "' (agent ", agent_id_, ")"));
    return;
  }
  std::string binding = tls_->ExportKeyingMaterial(kAuthExporterLabel);
  if (!VerifyAuthMac(credential_->secret, nonce_, binding, proof.mac())) {
    Refuse("bad_secret", "authentication failed",
           StrCat("wrong secret for credential '", credential_name_, "' (agent ", agent_id_, ")"));
    return;
  }
  if (!credential_->networks.empty() &&
      !credential_->networks.Contains(
          reinterpret_cast<const sockaddr*>(&tls_->tcp().peer_sockaddr()))) {
    Refuse("source_network", "source address not allowed",
           StrCat("credential '", credential_name_, "' may not connect from ", peer_));
    return;
  }
  if (!worker_.relay().TryAddLink(credential_name_, credential_->max_links)) {
    Refuse("too_many_links", "too many links",
           StrCat("credential '", credential_name_, "' already has ", credential_->max_links,
                  " links"));
    return;
  }
  state_ = State::kReady;
  counted_for_credential_ = true;
  counted_active_ = true;
  LinksActive().Inc();
  CounterOf("rdv_links_accepted_total", "Agent links authenticated").Inc();
  worker_.NoteLinkChurn();
  link::Control control;
  control.mutable_auth_result()->set_ok(true);
  link_.SendControl(control);
  spdlog::info("agent link {} up: agent {} credential {} from {}", id_, agent_id_, credential_name_,
               peer_);
  auto ping_ms =
      static_cast<uint64_t>(absl::ToInt64Milliseconds(worker_.config().link.ping_interval));
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<AgentLink*>(t->data)->OnTimer();
      },
      ping_ms, ping_ms);
}

void AgentLink::HandleRegister(const link::Register& request) {
  for (const link::ServiceSpec& spec : request.services()) {
    link::Control control;
    *control.mutable_registered() = RegisterOne(spec);
    link_.SendControl(control);
  }
}

link::Registered AgentLink::RegisterOne(const link::ServiceSpec& spec) {
  link::Registered result;
  *result.mutable_service() = spec;
  auto refuse = [&](std::string_view reason, std::string text) {
    RegisterRefused(reason).Inc();
    spdlog::warn("agent link {} ({}, credential {}): registration of {} refused ({}): {}", id_,
                 agent_id_, credential_name_, spec.name(), reason, text);
    result.set_ok(false);
    result.set_reason(std::move(text));
    return result;
  };
  std::string name = spec.name();
  if (spec.kind() == link::HTTP || spec.kind() == link::TLS || spec.kind() == link::SMTP) {
    GrantKind grant_kind = spec.kind() == link::HTTP  ? GrantKind::kHttp
                           : spec.kind() == link::TLS ? GrantKind::kTls
                                                      : GrantKind::kSmtp;
    name = NormalizeHost(spec.name());
    if (!IsValidHostPattern(name)) return refuse("invalid", "invalid host name");
    if (!credential_->Grants(grant_kind, name)) {
      return refuse("not_granted", "name not granted to this credential");
    }
    if (spec.kind() == link::TLS && !worker_.config().tls) {
      return refuse("no_entrypoint", "this relay has no tls entrypoint");
    }
    if (spec.kind() == link::SMTP && !worker_.config().smtp) {
      return refuse("no_entrypoint", "this relay has no smtp entrypoint");
    }
    result.mutable_service()->set_name(name);
  } else if (spec.kind() == link::TCP) {
    if (!IsValidServiceName(name)) return refuse("invalid", "invalid service name");
    absl::StatusOr<uint16_t> port =
        worker_.relay().EnsureTcpPort(name, spec.port(), *credential_, worker_);
    if (!port.ok()) {
      bool not_granted = port.status().code() == absl::StatusCode::kPermissionDenied;
      return refuse(not_granted ? "not_granted" : "port_unavailable",
                    std::string(port.status().message()));
    }
    result.mutable_service()->set_port(*port);
  } else if (spec.kind() == link::UDP) {
    if (!IsValidServiceName(name)) return refuse("invalid", "invalid service name");
    absl::StatusOr<uint16_t> port =
        worker_.relay().EnsureUdpPort(name, spec.port(), *credential_, worker_);
    if (!port.ok()) {
      bool not_granted = port.status().code() == absl::StatusCode::kPermissionDenied;
      return refuse(not_granted ? "not_granted" : "port_unavailable",
                    std::string(port.status().message()));
    }
    result.mutable_service()->set_port(*port);
  } else if (IsTunnelKind(spec.kind())) {
    // Never on a public entrypoint: reached only by tunnel streams (tunnel_bridge.h).
    if (!IsValidServiceName(name)) return refuse("invalid", "invalid service name");
    GrantKind grant_kind = GrantKind::kPrivate;
    if (spec.kind() == link::PAIR) {
      grant_kind = GrantKind::kPair;
      if (!IsValidPairId(spec.pair_id())) {
        return refuse("invalid", "invalid pair id (expected 32 lowercase hex digits)");
      }
    } else {
      result.mutable_service()->clear_pair_id();
    }
    if (!credential_->Grants(grant_kind, name)) {
      return refuse("not_granted", "name not granted to this credential");
    }
    result.mutable_service()->set_port(0);
    result.mutable_service()->clear_alias();
    result.mutable_service()->set_rewrite_html(false);
  } else {
    return refuse("invalid", "unsupported service kind");
  }
  std::string alias;
  if (spec.kind() == link::HTTP) {
    alias = absl::AsciiStrToLower(spec.alias());
    if (alias.empty()) {
      alias = name;
      std::erase(alias, '*');
      if (!alias.empty() && alias.front() == '.') alias.erase(0, 1);
      std::replace(alias.begin(), alias.end(), '.', '-');
    }
    if (alias.find('.') != std::string::npos || !IsValidHostName(alias)) {
      return refuse("invalid", "invalid alias label");
    }
  }
  if (absl::Status claimed = worker_.directory().Claim(result.service(), alias, *this);
      !claimed.ok()) {
    std::string_view reason = claimed.code() == absl::StatusCode::kFailedPrecondition
                                  ? "balance_mismatch"
                              : claimed.code() == absl::StatusCode::kInvalidArgument ? "invalid"
                                                                                     : "name_taken";
    return refuse(reason, std::string(claimed.message()));
  }
  result.set_ok(true);
  for (std::string& route : worker_.relay().RoutesFor(result.service(), alias))
    result.add_routes(route);
  ServicesRegistered().Inc();
  ++registered_;
  spdlog::info("agent link {} ({}, credential {}): registered {} {}", id_, agent_id_,
               credential_name_, absl::AsciiStrToLower(link::ServiceKind_Name(spec.kind())),
               result.service().name());
  if (IsTunnelKind(spec.kind())) {
    ++tunnel_registrations_;
    worker_.relay().NoteTunnelServicesChanged();
  }
  return result;
}

void AgentLink::HandleUnregister(const link::Unregister& request) {
  bool tunnels_changed = false;
  for (const link::ServiceSpec& spec : request.services()) {
    link::ServiceSpec service = spec;
    if (spec.kind() == link::HTTP || spec.kind() == link::TLS || spec.kind() == link::SMTP) {
      service.set_name(NormalizeHost(spec.name()));
    }
    if (!worker_.directory().Withdraw(service, *this)) {
      spdlog::info("agent link {} ({}): unregister of {} {} it does not hold, ignored", id_,
                   agent_id_, absl::AsciiStrToLower(link::ServiceKind_Name(spec.kind())),
                   spec.name());
      continue;
    }
    ServicesRegistered().Dec();
    if (registered_ > 0) --registered_;
    if (IsTunnelKind(spec.kind())) {
      if (tunnel_registrations_ > 0) --tunnel_registrations_;
      tunnels_changed = true;
    }
    spdlog::info("agent link {} ({}, credential {}): unregistered {} {}", id_, agent_id_,
                 credential_name_, absl::AsciiStrToLower(link::ServiceKind_Name(spec.kind())),
                 service.name());
  }
  if (tunnels_changed) worker_.relay().NoteTunnelServicesChanged();
}

void AgentLink::OnStreamOpen(Link& link, Stream& stream, const link::Open& open) {
  open_streams_ = link.stream_count();
  if (state_ != State::kReady) {
    CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
    stream.Refuse("the link is not authenticated");
    return;
  }
  RouteTunnel(worker_, stream, open,
              TunnelOrigin{credential_, peer_, agent_id_, takes_tunnel_data_});
}

Stream* AgentLink::OpenTunnelStream(link::Open open, StreamHandler& handler) {
  return OpenPrepared(std::move(open), handler);
}

void AgentLink::SendTunnelNotice(const link::TunnelNotice& notice) {
  if (state_ != State::kReady) return;
  spdlog::info("agent link {} ({}): notice about {} {}: {}", id_, agent_id_,
               absl::AsciiStrToLower(link::ServiceKind_Name(notice.service().kind())),
               notice.service().name(), notice.detail());
  link::Control control;
  *control.mutable_tunnel_notice() = notice;
  link_.SendControl(control);
}

void AgentLink::OnPong(Link& link, uint64_t sent_ms) { rtt_ms_ = uv_now(worker_.loop()) - sent_ms; }

Stream* AgentLink::OpenStream(const link::ServiceSpec& service, const TcpConnection& client,
                              const std::string& entrypoint, StreamHandler& handler) {
  return OpenStream(service, client.peer_address(), client.local_address(), entrypoint, handler);
}

Stream* AgentLink::OpenStream(const link::ServiceSpec& service, const std::string& client_address,
                              const std::string& local_address, const std::string& entrypoint,
                              StreamHandler& handler) {
  return OpenPrepared(ClientOpen(service, client_address, local_address, entrypoint), handler);
}

Stream* AgentLink::OpenSmtpStream(const link::ServiceSpec& service, const TcpConnection& client,
                                  link::SmtpEnvelope envelope, StreamHandler& handler) {
  link::Open open = ClientOpen(service, client.peer_address(), client.local_address(), "smtp");
  *open.mutable_smtp() = std::move(envelope);
  return OpenPrepared(std::move(open), handler);
}

Stream* AgentLink::OpenPrepared(link::Open open, StreamHandler& handler) {
  if (state_ != State::kReady) return nullptr;
  Stream* stream = link_.OpenStream(std::move(open), handler);
  if (stream != nullptr) CounterOf("rdv_streams_opened_total", "Streams opened to agents").Inc();
  open_streams_ = link_.stream_count();
  return stream;
}

void AgentLink::GoAway(std::string_view reason) {
  if (state_ != State::kReady) return;
  // No new stream goes here: the agent's other links (or its replacement link) take them.
  ReleaseRegistrations();
  link_.SendGoAway(reason);
}

}  // namespace rdv
