#include "common/link_client.h"

#include "common/auth.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

Counter& FrameErrors(std::string_view reason) {
  return CounterOf("rdv_frame_errors_total", "Links closed for a malformed or illegal frame",
                   StrCat("reason=\"", reason, "\""));
}

}  // namespace

LinkClient::LinkClient(uv_loop_t* loop, LoopTasks& tasks, LinkClientOptions options)
    : loop_(loop),
      tasks_(tasks),
      options_(std::move(options)),
      timer_(new uv_timer_t),
      backoff_(options_.reconnect),
      alive_(std::make_shared<LinkClient*>(this)) {
  uv_timer_init(loop_, timer_);
  timer_->data = this;
}

LinkClient::~LinkClient() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (link_) link_->Close(absl::CancelledError("stopping"));
  if (tls_) tls_->Close();
}

void LinkClient::Dial() {
  if (state_ == State::kStopped) return;
  state_ = State::kDialing;
  uint64_t generation = ++dial_generation_;
  std::weak_ptr<LinkClient*> weak = alive_;
  ResolveAsync(
      loop_, options_.relay.host, options_.relay.port, SOCK_STREAM,
      [this, weak, generation](absl::StatusOr<sockaddr_storage> addr) {
        if (weak.expired() || generation != dial_generation_) return;
        if (!addr.ok()) {
          Down(addr.status());
          return;
        }
        TcpConnection::Connect(
            loop_, reinterpret_cast<const sockaddr*>(&*addr),
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

void LinkClient::Connected(std::unique_ptr<TcpConnection> tcp) {
  state_ = State::kHandshake;
  tls_ = TlsSession::Create(std::move(tcp), options_.tls_context, /*is_server=*/false, tasks_,
                            options_.server_name, options_.fingerprint);
  LinkOptions link_options = options_.link;
  link_options.is_relay_side = false;
  link_ = std::make_unique<Link>(*this, *this, link_options);
  last_receive_ms_ = uv_now(loop_);
  // Handshake and authentication share the idle deadline.
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<LinkClient*>(t->data)->OnTimer();
      },
      options_.ping_interval_ms, options_.ping_interval_ms);
  tls_->Start(*this);
}

void LinkClient::OnTlsReady() {
  state_ = State::kAuth;
  link::Control control;
  auto* hello = control.mutable_hello();
  hello->set_version(kLinkProtocolVersion);
  hello->set_agent_id(options_.id);
  hello->set_credential(options_.credential.name);
  hello->set_initial_stream_window(link_->options().stream_window);
  hello->set_link_window(link_->options().link_window);
  hello->add_hops(options_.id);
  for (const std::string& feature : options_.features) hello->add_features(feature);
  link_->SendControl(control);
}

void LinkClient::OnTlsData(std::string_view plaintext) {
  last_receive_ms_ = uv_now(loop_);
  link_->OnBytes(plaintext);
}

void LinkClient::OnTlsDrained() {
  if (link_) link_->OnTransportDrained();
}

void LinkClient::OnTlsClosed(const absl::Status& status) { Down(status); }

void LinkClient::OnLinkFailed(Link& link, const absl::Status& status) { Down(status); }

void LinkClient::OnControl(Link& link, const link::Control& control) {
  switch (control.body_case()) {
    case link::Control::kChallenge: {
      if (state_ != State::kAuth) break;
      const link::Challenge& challenge = control.challenge();
      if (challenge.initial_stream_window() >= 1024) {
        link_->set_peer_stream_window(challenge.initial_stream_window());
      }
      link_->set_peer_link_window(challenge.link_window());
      relay_id_ = challenge.relay_id();
      link::Control reply;
      reply.mutable_proof()->set_mac(
          ComputeAuthMac(options_.credential.secret, challenge.nonce(),
                         tls_->ExportKeyingMaterial(kAuthExporterLabel)));
      link_->SendControl(reply);
      return;
    }
    case link::Control::kAuthResult: {
      if (state_ != State::kAuth) break;
      if (!control.auth_result().ok()) {
        spdlog::error("{} refused by {}: {}", options_.log_name, FormatHostPort(options_.relay),
                      control.auth_result().reason());
        Down(absl::PermissionDeniedError(AbslView(control.auth_result().reason())));
        return;
      }
      state_ = State::kReady;
      backoff_.Reset();
      spdlog::info("{} up {}", options_.log_name, FormatHostPort(options_.relay));
      OnLinkReady();
      return;
    }
    case link::Control::kGoAway:
      spdlog::info("{}: relay is going away: {}", options_.log_name, control.go_away().reason());
      if (state_ == State::kReady) OnPeerGoingAway();
      return;
    default:
      if (state_ == State::kReady && OnReadyControl(control)) return;
      break;
  }
  FrameErrors("unexpected_control").Inc();
  link_->Close(absl::InvalidArgumentError(
      StrCat("unexpected control message ", static_cast<int>(control.body_case()))));
}

bool LinkClient::AcceptingStreams() {
  if (state_ == State::kReady) return true;
  FrameErrors("open_before_auth").Inc();
  link_->Close(absl::InvalidArgumentError("relay opened a stream before authentication"));
  return false;
}

void LinkClient::OnTimer() {
  uint64_t now = uv_now(loop_);
  if (state_ == State::kIdle) {
    Dial();
    return;
  }
  if (now - last_receive_ms_ > options_.idle_timeout_ms) {
    Down(absl::DeadlineExceededError("relay silent past the idle timeout"));
    return;
  }
  if (state_ == State::kReady) link_->SendPing(now);
}

void LinkClient::Down(const absl::Status& status) {
  if (state_ == State::kStopped || state_ == State::kIdle) return;
  bool was_ready = state_ == State::kReady;
  state_ = State::kIdle;
  ++dial_generation_;
  spdlog::warn("{} down: {}", options_.log_name, status.message());
  OnLinkDown(status, was_ready);
  // Tear down after the current callbacks: we may be inside the link's or the session's.
  std::shared_ptr<Link> link(link_.release());
  std::shared_ptr<TlsSession> tls(tls_.release());
  if (link) link->Close(status);
  if (tls) tls->Close();
  tasks_.Defer([link, tls] {});
  if (draining_) {
    state_ = State::kStopped;
    uv_timer_stop(timer_);
    return;
  }
  ScheduleRedial();
}

void LinkClient::ScheduleRedial() {
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<LinkClient*>(t->data)->OnTimer();
      },
      backoff_.NextDelayMs(), 0);
}

Link* LinkClient::ready_link() {
  if (state_ != State::kReady || link_ == nullptr || link_->failed() || link_->peer_going_away()) {
    return nullptr;
  }
  return link_.get();
}

std::string_view LinkClient::state_name() const {
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

void LinkClient::Drain(std::string_view reason) {
  if (state_ != State::kReady) {
    Shutdown(reason);
    return;
  }
  draining_ = true;
  link_->SendGoAway(reason);
}

void LinkClient::Retire() {
  if (state_ != State::kReady) {
    Shutdown("relay going away");
    return;
  }
  draining_ = true;
}

void LinkClient::StopIfRetiredAndIdle() {
  if (link_ != nullptr && link_->stream_count() > 0) return;
  std::weak_ptr<LinkClient*> weak = alive_;
  tasks_.Defer([weak] {
    if (weak.expired()) return;
    LinkClient* self = *weak.lock();
    if (self->state_ == State::kStopped) return;
    if (self->link_ != nullptr && self->link_->stream_count() > 0) return;
    spdlog::info("{}: retired link has no stream left; closing it", self->options_.log_name);
    self->LinkClient::Shutdown("link retired after the peer's GoAway");
    self->OnRetiredLinkStopped();
  });
}

void LinkClient::Shutdown(std::string_view reason) {
  if (state_ == State::kReady) {
    link_->SendGoAway(reason);
    tls_->FlushNow();
  }
  state_ = State::kStopped;
  ++dial_generation_;
  uv_timer_stop(timer_);
  if (link_) link_->Close(absl::CancelledError(AbslView(reason)));
  if (tls_) tls_->Close();
}

}  // namespace rdv
