#include "agent/connect_listener.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "agent/agent.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/stream_splice.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// A SOCKS client has this long from connecting to a complete CONNECT request.
constexpr uint64_t kSocksHandshakeTimeoutMs = 10000;
// After a refusal reply: how long to wait for the client to close before closing on it (closing
// with unread input would send a RST that can destroy the reply in flight).
constexpr uint64_t kLingerMs = 1000;

bool SameBytes(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool UserMatches(const std::vector<ConnectConfig::User>& users, std::string_view name,
                 std::string_view password) {
  bool match = false;
  for (const ConnectConfig::User& user : users) {
    // Both compared for every user, so timing does not tell which part was wrong.
    bool name_ok = SameBytes(user.username, name);
    bool password_ok = SameBytes(user.password, password);
    match |= name_ok && password_ok;
  }
  return match;
}

}  // namespace

socks5::Reply SocksReplyFor(link::OpenError error) {
  switch (error) {
    case link::NOT_ALLOWED:
      return socks5::Reply::kNotAllowed;
    case link::NETWORK_UNREACHABLE:
      return socks5::Reply::kNetworkUnreachable;
    case link::HOST_UNREACHABLE:
      return socks5::Reply::kHostUnreachable;
    case link::CONNECTION_REFUSED:
      return socks5::Reply::kConnectionRefused;
    case link::TIMED_OUT:
      return socks5::Reply::kTtlExpired;  // 0x06, "TTL expired": what SOCKS has for a timeout
    case link::ADDRESS_NOT_SUPPORTED:
      return socks5::Reply::kAddressTypeNotSupported;
    default:
      return socks5::Reply::kGeneralFailure;
  }
}

// One local connection. Until the serving end answers it handles both the socket (the SOCKS
// handshake) and the nested stream; once accepted a StreamSplice does, and the stream's events
// (whose handler cannot change) are passed on to it.
class LocalClient : public TcpConnection::Handler, public StreamHandler {
 public:
  LocalClient(ConnectListener& owner, std::unique_ptr<TcpConnection> socket)
      : owner_(owner),
        socket_(std::move(socket)),
        peer_(socket_->peer_address()),
        socks_(owner.config().socks5),
        timer_(new uv_timer_t) {
    uv_timer_init(socket_->loop(), timer_);
    timer_->data = this;
  }
  ~LocalClient() override {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    if (splice_ == nullptr && stream_ != nullptr) stream_->Reset("client went away");
    if (socket_ != nullptr) socket_->Close();
  }

  void Start() {
    socket_->Start(*this);
    if (socks_) {
      phase_ = Phase::kGreeting;
      ArmTimer(kSocksHandshakeTimeoutMs);
      return;
    }
    Wait();
  }

  // Opens the nested stream if the tunnel is up (else keeps waiting).
  void TryOpen() {
    if (phase_ != Phase::kWaiting) return;
    Tunnel* tunnel = owner_.usable_tunnel();
    if (tunnel == nullptr) return;
    stream_ = tunnel->OpenStream(destination_, peer_, *this);
    if (stream_ == nullptr) return;
    phase_ = Phase::kOpening;
    // The serving end answers within its own connect timeout; this only guards against a
    // peer that never does.
    ArmTimer(2 * ConnectTimeoutMs() + 5000);
  }

  // TcpConnection::Handler, until the splice takes the socket.
  void OnRead(std::string_view data) override {
    if (phase_ == Phase::kClosing) return;  // discarded while the refusal lingers
    input_.append(data);
    if (phase_ == Phase::kGreeting || phase_ == Phase::kCredentials || phase_ == Phase::kRequest) {
      HandleSocks();
    }
  }
  void OnEof() override {
    eof_ = true;
    if (phase_ == Phase::kClosing) {
      if (socket_->queued_bytes() == 0) Done();
      return;
    }
    // The client gave up before its stream was accepted.
    Done();
  }
  void OnError(const absl::Status& status) override { Done(); }
  void OnDrained() override {
    if (phase_ == Phase::kClosing && eof_ && socket_->queued_bytes() == 0) Done();
  }

  // StreamHandler
  void OnStreamAccepted(Stream& stream) override {
    uv_timer_stop(timer_);
    phase_ = Phase::kSpliced;
    if (socks_) socket_->Write(socks5::EncodeReply(socks5::Reply::kSucceeded));
    splice_ = std::make_unique<StreamSplice>(
        std::move(socket_), stream_, [this](StreamSplice&, const absl::Status& status) {
          if (!status.ok()) {
            spdlog::debug("connect stream ended: {}", status.message());
          }
          Done();
        });
    std::string initial = std::move(input_);
    input_.clear();
    splice_->Start(initial);
  }
  void OnStreamData(Stream& stream, std::string_view data) override {
    if (splice_ != nullptr) splice_->OnStreamData(stream, data);
  }
  void OnStreamEnd(Stream& stream) override {
    if (splice_ != nullptr) splice_->OnStreamEnd(stream);
  }
  void OnStreamWritable(Stream& stream) override {
    if (splice_ != nullptr) splice_->OnStreamWritable(stream);
  }
  void OnStreamClosed(Stream& stream, const absl::Status& status) override {
    stream_ = nullptr;
    if (splice_ != nullptr) {
      splice_->OnStreamClosed(stream, status);
      return;
    }
    // Refused by the serving end, or the tunnel went down before it answered.
    if (stream.result().stream_id() == stream.id()) {
      link::OpenError error = stream.result().error();
      Refuse(OpenErrorLabel(error), SocksReplyFor(error), stream.result().reason());
    } else {
      Refuse("tunnel_down", socks5::Reply::kGeneralFailure,
             StrCat("the tunnel went down: ", status.message()));
    }
  }

 private:
  enum class Phase {
    kGreeting,
    kCredentials,
    kRequest,
    kWaiting,
    kOpening,
    kSpliced,
    kClosing,
    kDone
  };

  uint64_t ConnectTimeoutMs() const {
    return static_cast<uint64_t>(absl::ToInt64Milliseconds(owner_.agent_.config().connect_timeout));
  }

  // RFC 1928 (and 1929) server side, one message at a time from input_.
  void HandleSocks() {
    while (phase_ == Phase::kGreeting || phase_ == Phase::kCredentials ||
           phase_ == Phase::kRequest) {
      if (phase_ == Phase::kGreeting) {
        socks5::Greeting greeting;
        absl::StatusOr<size_t> used = socks5::ParseGreeting(input_, greeting);
        if (!used.ok())
          return Refuse("malformed", std::nullopt, std::string(used.status().message()));
        if (*used == 0) return;
        input_.erase(0, *used);
        const std::vector<ConnectConfig::User>& users = owner_.config().users;
        uint8_t method = socks5::ChooseMethod(greeting, !users.empty());
        socket_->Write(socks5::EncodeMethodSelection(method));
        if (method == socks5::kMethodNoneAcceptable) {
          return Refuse("auth", std::nullopt,
                        users.empty() ? "the client offers no acceptable method"
                                      : "the client does not offer username/password");
        }
        phase_ = method == socks5::kMethodUserPass ? Phase::kCredentials : Phase::kRequest;
      } else if (phase_ == Phase::kCredentials) {
        socks5::Credentials credentials;
        absl::StatusOr<size_t> used = socks5::ParseCredentials(input_, credentials);
        if (!used.ok())
          return Refuse("malformed", std::nullopt, std::string(used.status().message()));
        if (*used == 0) return;
        input_.erase(0, *used);
        bool ok = UserMatches(owner_.config().users, credentials.username, credentials.password);
        socket_->Write(socks5::EncodeAuthStatus(ok));
        if (!ok) {
          return Refuse("auth", std::nullopt,
                        StrCat("wrong username or password (user '", credentials.username, "')"));
        }
        phase_ = Phase::kRequest;
      } else {
        socks5::Request request;
        absl::StatusOr<size_t> used = socks5::ParseRequest(input_, request);
        if (!used.ok()) {
          if (used.status().code() == absl::StatusCode::kUnimplemented) {
            return Refuse("address_type", socks5::Reply::kAddressTypeNotSupported,
                          std::string(used.status().message()));
          }
          return Refuse("malformed", socks5::Reply::kGeneralFailure,
                        std::string(used.status().message()));
        }
        if (*used == 0) return;
        input_.erase(0, *used);  // what remains is the client's first bytes for the stream
        if (request.command != socks5::kCommandConnect) {
          return Refuse("command_not_supported", socks5::Reply::kCommandNotSupported,
                        StrCat("SOCKS command ", request.command, " (only CONNECT is supported)"));
        }
        destination_ = FormatHostPort(HostPort{request.host, request.port});
        Wait();
      }
    }
  }

  // Holds the client (not reading) until the tunnel is up, at most connect_timeout.
  void Wait() {
    phase_ = Phase::kWaiting;
    socket_->PauseReading();
    ArmTimer(ConnectTimeoutMs());
    TryOpen();
  }

  void ArmTimer(uint64_t ms) {
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data != nullptr) static_cast<LocalClient*>(t->data)->OnTimer();
        },
        ms, 0);
  }

  void OnTimer() {
    switch (phase_) {
      case Phase::kGreeting:
      case Phase::kCredentials:
      case Phase::kRequest:
        return Refuse("handshake_timeout", std::nullopt, "the SOCKS handshake did not complete");
      case Phase::kWaiting:
        return Refuse("tunnel_down", socks5::Reply::kGeneralFailure,
                      StrCat("the tunnel is not up (waited ", ConnectTimeoutMs(), " ms)"));
      case Phase::kOpening: {
        Stream* stream = stream_;
        stream_ = nullptr;
        if (stream != nullptr) stream->Reset("timed out");
        return Refuse("timed_out", socks5::Reply::kTtlExpired, "the serving end did not answer");
      }
      case Phase::kClosing:
        return Done();
      case Phase::kSpliced:
      case Phase::kDone:
        return;
    }
  }

  // Counts, logs, sends the SOCKS reply (a plain port has none: it just closes) and closes.
  void Refuse(std::string_view label, std::optional<socks5::Reply> reply, std::string detail) {
    if (phase_ == Phase::kClosing || phase_ == Phase::kDone) return;
    if (socks_) {
      CounterOf("rdv_agent_socks_refused_total",
                "SOCKS5 clients of connect listeners answered with an error, by reason",
                StrCat("reason=\"", label, "\""))
          .Inc();
    } else {
      CounterOf("rdv_agent_connect_refused_total",
                "Plain connect-port clients closed without a stream, by reason",
                StrCat("reason=\"", label, "\""))
          .Inc();
    }
    std::string what = destination_.empty() ? "" : StrCat(" to ", destination_);
    if (socks_ && reply) {
      spdlog::info("connect {}: refused {}{} (SOCKS reply {:#04x}): {}", owner_.Describe(), peer_,
                   what, static_cast<int>(*reply), detail);
    } else {
      spdlog::info("connect {}: closing {}{}: {}", owner_.Describe(), peer_, what, detail);
    }
    if (stream_ != nullptr) {
      Stream* stream = stream_;
      stream_ = nullptr;
      stream->Reset("refused");
    }
    if (!socks_ || !reply || socket_ == nullptr) return Done();
    phase_ = Phase::kClosing;
    socket_->Write(socks5::EncodeReply(*reply));
    socket_->Shutdown();
    socket_->ResumeReading();
    ArmTimer(kLingerMs);
  }

  void Done() {
    if (phase_ == Phase::kDone) return;
    phase_ = Phase::kDone;
    uv_timer_stop(timer_);
    if (splice_ == nullptr && stream_ != nullptr) {
      Stream* stream = stream_;
      stream_ = nullptr;
      stream->Reset("client went away");
    }
    if (socket_ != nullptr) socket_->Close();
    owner_.Finish(this);
  }

  ConnectListener& owner_;
  std::unique_ptr<TcpConnection> socket_;  // until accepted, then owned by splice_
  const std::string peer_;
  const bool socks_;
  uv_timer_t* timer_;
  Phase phase_ = Phase::kWaiting;
  Stream* stream_ = nullptr;
  std::unique_ptr<StreamSplice> splice_;
  std::string input_;        // SOCKS bytes not parsed yet; then the client's first bytes
  std::string destination_;  // "" = the serving end's target
  bool eof_ = false;

 public:
  bool waiting() const { return phase_ == Phase::kWaiting; }
};

// ---- ConnectListener ---------------------------------------------------------------------------

ConnectListener::ConnectListener(Agent& agent, const ConnectConfig& config)
    : agent_(agent),
      config_(config),
      endpoint_(ConnectingEndpoint(config)),
      redial_timer_(new uv_timer_t),
      backoff_(agent.config().reconnect),
      alive_(std::make_shared<ConnectListener*>(this)) {
  uv_timer_init(agent.loop(), redial_timer_);
  redial_timer_->data = this;
}

ConnectListener::~ConnectListener() {
  Shutdown();
  redial_timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(redial_timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
}

absl::StatusOr<std::unique_ptr<ConnectListener>> ConnectListener::Create(
    Agent& agent, const ConnectConfig& config) {
  std::unique_ptr<ConnectListener> listener(new ConnectListener(agent, config));
  ConnectListener* raw = listener.get();
  absl::StatusOr<std::unique_ptr<TcpListener>> socket =
      TcpListener::Create(agent.loop(), config.listen.host, config.listen.port,
                          [raw](uv_stream_t* server) { raw->OnAccept(server); });
  if (!socket.ok()) {
    return absl::Status(socket.status().code(),
                        StrCat("connect ", raw->Describe(), ": listen ",
                               FormatHostPort(config.listen), ": ", socket.status().message()));
  }
  listener->listener_ = *std::move(socket);
  spdlog::info("connect {} listening {} ({})", raw->Describe(), listener->address(),
               config.socks5 ? "socks5" : "plain");
  return listener;
}

std::string ConnectListener::Describe() const {
  return StrCat(config_.kind_name(), " ", config_.name);
}

void ConnectListener::Start() { Dial(); }

void ConnectListener::OnAccept(uv_stream_t* server) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> socket = TcpConnection::Accept(server);
  if (!socket.ok()) {
    spdlog::warn("connect {}: accept failed: {}", Describe(), socket.status().message());
    return;
  }
  if (shutting_down_ || draining_accepts_) {
    (*socket)->Close();
    return;
  }
  auto client = std::make_unique<LocalClient>(*this, *std::move(socket));
  LocalClient* raw = client.get();
  clients_.emplace(raw, std::move(client));
  raw->Start();
}

Tunnel* ConnectListener::usable_tunnel() {
  if (tunnel_ == nullptr || tunnel_->state() != Tunnel::State::kUp || tunnel_->draining()) {
    return nullptr;
  }
  return tunnel_.get();
}

void ConnectListener::Dial() {
  if (shutting_down_ || draining_accepts_ || tunnel_ != nullptr) return;
  Link* link = agent_.ReadyRelayLink();
  if (link == nullptr) {
    waiting_for_link_ = true;  // OnRelayLinkReady dials
    return;
  }
  waiting_for_link_ = false;
  absl::StatusOr<std::unique_ptr<Tunnel>> tunnel =
      Tunnel::Connect(agent_.TunnelContext(), endpoint_, *link, *this);
  if (!tunnel.ok()) {
    spdlog::warn("tunnel {}: {}", Describe(), tunnel.status().message());
    ScheduleRedial();
    return;
  }
  tunnel_ = *std::move(tunnel);
}

void ConnectListener::ScheduleRedial() {
  if (shutting_down_ || draining_accepts_) return;
  uv_timer_start(
      redial_timer_,
      [](uv_timer_t* t) {
        if (t->data != nullptr) static_cast<ConnectListener*>(t->data)->Dial();
      },
      backoff_.NextDelayMs(), 0);
}

void ConnectListener::OnRelayLinkReady() {
  if (!waiting_for_link_ || tunnel_ != nullptr) return;
  uv_timer_stop(redial_timer_);
  Dial();
}

void ConnectListener::OnTunnelUp(Tunnel& tunnel) {
  backoff_.Reset();
  last_refusal_.clear();
  moving_ = false;
  std::vector<LocalClient*> waiting;
  for (auto& [raw, client] : clients_) {
    if (client->waiting()) waiting.push_back(raw);
  }
  for (LocalClient* client : waiting) client->TryOpen();
}

void ConnectListener::OnRelayGoingAway(uint64_t link_serial) {
  if (tunnel_ == nullptr || tunnel_->relay_link_serial() != link_serial) return;
  Tunnel* old = tunnel_.get();
  spdlog::info(
      "tunnel {}: its relay is going away; new connections wait for a new tunnel, {} open "
      "streams finish on this one",
      Describe(), old->stream_count());
  draining_.emplace(old, std::move(tunnel_));
  old->Retire("relay going away");
  moving_ = true;
  // The new tunnel goes on the next link that comes up: the replacement of the link that heard
  // GoAway (behind a load balancer, on another replica). A link to the same relay that has not
  // heard its GoAway yet would refuse it. Without a link coming up, the redial timer dials.
  waiting_for_link_ = true;
  ScheduleRedial();
}

std::vector<const Tunnel*> ConnectListener::retiring_tunnels() const {
  std::vector<const Tunnel*> tunnels;
  for (const auto& [raw, tunnel] : draining_) tunnels.push_back(raw);
  return tunnels;
}

void ConnectListener::OnTunnelDraining(Tunnel& tunnel) {
  if (&tunnel != tunnel_.get()) return;
  draining_.emplace(&tunnel, std::move(tunnel_));
  tunnel.Retire("retired after the other end's GoAway");
  moving_ = true;
  Dial();
}

void ConnectListener::OnTunnelClosed(Tunnel& tunnel, const absl::Status& status) {
  std::unique_ptr<Tunnel> dead;
  if (&tunnel == tunnel_.get()) {
    dead = std::move(tunnel_);
  } else if (auto it = draining_.find(&tunnel); it != draining_.end()) {
    dead = std::move(it->second);
    draining_.erase(it);
  }
  if (tunnel.refused() && moving_) {
    spdlog::info("tunnel {}: relay refused: {} (the tunnel is moving; retrying)", Describe(),
                 tunnel.refusal());
    moving_ = false;
  } else if (tunnel.refused() && tunnel.refusal() != last_refusal_) {
    spdlog::error("tunnel {}: relay refused: {}", Describe(), tunnel.refusal());
    last_refusal_ = tunnel.refusal();
  }
  // Destroyed after the current callbacks: we are inside one of the tunnel's.
  if (dead != nullptr) agent_.tasks().Defer([dead = std::shared_ptr<Tunnel>(std::move(dead))] {});
  if (tunnel_ == nullptr) ScheduleRedial();
}

void ConnectListener::Finish(LocalClient* client) {
  std::weak_ptr<ConnectListener*> weak = alive_;
  agent_.tasks().Defer([this, weak, client] {
    if (!weak.expired()) clients_.erase(client);
  });
}

void ConnectListener::Drain() {
  if (shutting_down_ || draining_accepts_) return;
  draining_accepts_ = true;
  uv_timer_stop(redial_timer_);
  if (listener_ != nullptr) listener_->Close();
}

void ConnectListener::Shutdown() {
  if (shutting_down_) return;
  shutting_down_ = true;
  uv_timer_stop(redial_timer_);
  if (listener_ != nullptr) listener_->Close();
  clients_.clear();
  if (tunnel_ != nullptr) {
    tunnel_->SendGoAway("agent shutting down");
    tunnel_.reset();
  }
  draining_.clear();
}

}  // namespace rdv
