#include "agent/tunnel.h"

#include <openssl/rand.h>

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "common/data_path.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr uint32_t kProtocolVersion = 1;
// Nested-link output past this is encrypted at once rather than at the end of the iteration.
constexpr size_t kNestedFlushBytes = 256 * 1024;
// Dialing the relay for a data path is given up after this (the offer as a whole after
// kDataPathPairTimeout).
constexpr absl::Duration kDataPathDialTimeout = absl::Seconds(5);
// Data path bytes held during the switch past this stay in the kernel (reading pauses) until
// the peer's END on the relay stream.
constexpr size_t kDataPathHoldLimit = 1 << 20;

uint64_t Milliseconds(absl::Duration duration) {
  return static_cast<uint64_t>(absl::ToInt64Milliseconds(duration));
}

Counter& TunnelFailures(std::string_view reason) {
  return CounterOf("rdv_agent_tunnel_failures_total",
                   "Tunnels that were refused, failed to set up or broke",
                   StrCat("reason=\"", reason, "\""));
}

// Offers taken up, by result: switched (the relay answered OK), refused (ERR), connect_failed
// (dial or socket error before an answer), timeout (no answer within kDataPathPairTimeout),
// protocol (a malformed answer, or EOF without one).
Counter& DataPaths(std::string_view result) {
  return CounterOf("rdv_agent_tunnel_data_paths_total",
                   "Tunnel data path offers this agent took up, by result",
                   StrCat("result=\"", result, "\""));
}

Gauge& TunnelsUp() {
  static Gauge& gauge = GaugeOf("rdv_agent_tunnels_up", "End-to-end tunnels up on this agent");
  return gauge;
}

std::string RandomNonce() {
  std::string nonce(kTunnelNonceSize, '\0');
  // RAND_bytes fails only when the CSPRNG cannot be seeded, which leaves nothing safe to do.
  if (RAND_bytes(reinterpret_cast<unsigned char*>(nonce.data()), static_cast<int>(nonce.size())) !=
      1) {
    std::abort();
  }
  return nonce;
}

}  // namespace

TunnelEndpoint ServingEndpoint(const ServiceConfig& service) {
  TunnelEndpoint endpoint;
  endpoint.kind = service.kind == ServiceConfig::Kind::kPair ? link::PAIR : link::PRIVATE;
  endpoint.name = service.name;
  endpoint.security = std::string(service.security());
  if (service.kind == ServiceConfig::Kind::kPair) {
    endpoint.pair_id = PairId(service.secret, service.name);
  }
  if (service.certificate_file.empty()) {
    endpoint.channel.psk = TunnelPsk(service.secret, service.kind_name(), service.name);
  } else {
    endpoint.channel.certificate_file = service.certificate_file;
    endpoint.channel.key_file = service.key_file;
  }
  endpoint.service = &service;
  return endpoint;
}

TunnelEndpoint ConnectingEndpoint(const ConnectConfig& connect) {
  TunnelEndpoint endpoint;
  endpoint.kind = connect.kind == ServiceConfig::Kind::kPair ? link::PAIR : link::PRIVATE;
  endpoint.name = connect.name;
  endpoint.security = std::string(connect.security());
  if (connect.kind == ServiceConfig::Kind::kPair) {
    endpoint.pair_id = PairId(connect.secret, connect.name);
  }
  if (!connect.secret.empty()) {
    endpoint.channel.psk = TunnelPsk(connect.secret, connect.kind_name(), connect.name);
  } else {
    endpoint.channel.peer_fingerprint = connect.peer_fingerprint;
    endpoint.channel.peer_ca_file = connect.peer_ca_file;
  }
  return endpoint;
}

absl::StatusOr<bool> ElectTlsClient(std::string_view security, TunnelRole role,
                                    std::string_view own_nonce, std::string_view peer_nonce) {
  if (own_nonce.size() != kTunnelNonceSize || peer_nonce.size() != kTunnelNonceSize) {
    return absl::InvalidArgumentError("a tunnel nonce must be 32 bytes");
  }
  // The certificate is the serving end's, so it must be the TLS server.
  if (security == "certificate") return role == TunnelRole::kConnect;
  int order = own_nonce.compare(peer_nonce);  // bytewise: std::string_view compares as unsigned
  if (order == 0) return absl::InvalidArgumentError("both ends of the tunnel chose the same nonce");
  return order < 0;
}

std::string_view OpenErrorLabel(link::OpenError error) {
  switch (error) {
    case link::NOT_ALLOWED:
      return "not_allowed";
    case link::NETWORK_UNREACHABLE:
      return "network_unreachable";
    case link::HOST_UNREACHABLE:
      return "host_unreachable";
    case link::CONNECTION_REFUSED:
      return "connection_refused";
    case link::TIMED_OUT:
      return "timed_out";
    case link::ADDRESS_NOT_SUPPORTED:
      return "address_not_supported";
    default:
      return "other";
  }
}

link::OpenError OpenErrorForConnect(const absl::Status& status) {
  if (status.code() == absl::StatusCode::kDeadlineExceeded) return link::TIMED_OUT;
  std::string_view message(status.message().data(), status.message().size());
  // TcpConnection and ResolveAsync put libuv's error name first ("ECONNREFUSED: ...").
  static constexpr std::pair<std::string_view, link::OpenError> kErrors[] = {
      {"cannot resolve", link::HOST_UNREACHABLE},
      {"ECONNREFUSED", link::CONNECTION_REFUSED},
      {"ENETUNREACH", link::NETWORK_UNREACHABLE},
      {"EHOSTUNREACH", link::HOST_UNREACHABLE},
      {"ETIMEDOUT", link::TIMED_OUT},
      {"EAFNOSUPPORT", link::ADDRESS_NOT_SUPPORTED},
  };
  for (const auto& [prefix, error] : kErrors) {
    if (message.substr(0, prefix.size()) == prefix) return error;
  }
  return link::OPEN_ERROR_UNSPECIFIED;
}

// ---- Setup -------------------------------------------------------------------------------------

Tunnel::Tunnel(Context context, TunnelEndpoint endpoint, TunnelRole role, Owner& owner)
    : context_(std::move(context)),
      endpoint_(std::move(endpoint)),
      role_(role),
      owner_(owner),
      nonce_(RandomNonce()),
      setup_timer_(new uv_timer_t),
      alive_(std::make_shared<Tunnel*>(this)),
      data_path_timer_(new uv_timer_t) {
  uv_timer_init(context_.loop, setup_timer_);
  setup_timer_->data = this;
  uv_timer_init(context_.loop, data_path_timer_);
  data_path_timer_->data = this;
}

Tunnel::~Tunnel() {
  if (state_ != State::kClosed) {
    owner_told_ = true;
    Fail(absl::CancelledError("agent stopping"), "");
  }
  if (flush_scheduled_) context_.tasks->Cancel(this);
  if (data_ != nullptr) data_->Close();
  setup_timer_->data = nullptr;
  data_path_timer_->data = nullptr;
  for (uv_timer_t* timer : {setup_timer_, data_path_timer_}) {
    uv_close(reinterpret_cast<uv_handle_t*>(timer),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
}

absl::StatusOr<std::unique_ptr<Tunnel>> Tunnel::Connect(Context context, TunnelEndpoint endpoint,
                                                        Link& relay_link, Owner& owner) {
  std::unique_ptr<Tunnel> tunnel(
      new Tunnel(std::move(context), std::move(endpoint), TunnelRole::kConnect, owner));
  link::Open open;
  link::ServiceSpec* service = open.mutable_service();
  service->set_kind(tunnel->endpoint_.kind);
  service->set_name(tunnel->endpoint_.name);
  service->set_pair_id(tunnel->endpoint_.pair_id);
  *open.mutable_tunnel() = tunnel->OwnSetup();
  tunnel->relay_link_serial_ = relay_link.serial();
  tunnel->relay_stream_ = relay_link.OpenStream(std::move(open), *tunnel);
  if (tunnel->relay_stream_ == nullptr) {
    tunnel->owner_told_ = true;
    tunnel->state_ = State::kClosed;
    return absl::UnavailableError("the relay link takes no new streams");
  }
  tunnel->ArmSetupTimer();
  return tunnel;
}

absl::StatusOr<std::unique_ptr<Tunnel>> Tunnel::Serve(Context context, TunnelEndpoint endpoint,
                                                      Stream& stream, Owner& owner) {
  std::unique_ptr<Tunnel> tunnel(
      new Tunnel(std::move(context), std::move(endpoint), TunnelRole::kServe, owner));
  if (absl::Status status = tunnel->TakePeerSetup(stream.open().tunnel()); !status.ok()) {
    TunnelFailures("bad_setup").Inc();
    stream.Refuse(std::string(status.message()), link::NOT_ALLOWED);
    tunnel->owner_told_ = true;
    tunnel->state_ = State::kClosed;
    return status;
  }
  tunnel->relay_link_serial_ = stream.link().serial();
  tunnel->relay_stream_ = &stream;
  tunnel->state_ = State::kSecuring;
  tunnel->ArmSetupTimer();
  link::OpenResult result;
  *result.mutable_tunnel() = tunnel->OwnSetup();
  // Accept first: the channel must not send (a TLS client's first flight) before OpenResult.
  stream.Accept(*tunnel, std::move(result));
  if (tunnel->state_ == State::kSecuring) tunnel->channel_->Start();
  return tunnel;
}

link::TunnelSetup Tunnel::OwnSetup() const {
  link::TunnelSetup setup;
  setup.set_agent_id(context_.agent_id);
  setup.set_nonce(nonce_);
  for (const std::string& hop : hops_) setup.add_hops(hop);
  setup.set_security(endpoint_.security);
  return setup;
}

absl::Status Tunnel::TakePeerSetup(const link::TunnelSetup& setup) {
  if (setup.security() != endpoint_.security) {
    return absl::PermissionDeniedError(StrCat(
        "security mismatch: this end of ", kind_name(), " '", name(), "' uses ", endpoint_.security,
        ", the other end ", setup.security().empty() ? "none" : setup.security()));
  }
  if (setup.agent_id().empty() || setup.agent_id().size() > 128) {
    return absl::InvalidArgumentError("tunnel setup without a valid agent id");
  }
  if (static_cast<size_t>(setup.hops_size()) > kMaxTunnelHops) {
    return absl::InvalidArgumentError(
        StrCat("tunnel setup with more than ", kMaxTunnelHops, " hops"));
  }
  absl::StatusOr<bool> client = ElectTlsClient(endpoint_.security, role_, nonce_, setup.nonce());
  if (!client.ok()) return client.status();
  tls_client_ = *client;
  peer_setup_ = setup;
  hops_.assign(setup.hops().begin(), setup.hops().end());
  SecureChannelOptions options = endpoint_.channel;
  options.is_client = tls_client_;
  absl::StatusOr<std::unique_ptr<SecureChannel>> channel = SecureChannel::Create(options, *this);
  if (!channel.ok()) return channel.status();
  channel_ = *std::move(channel);
  return absl::OkStatus();
}

void Tunnel::ArmSetupTimer() {
  uv_timer_start(
      setup_timer_,
      [](uv_timer_t* t) {
        auto* tunnel = static_cast<Tunnel*>(t->data);
        if (tunnel == nullptr || tunnel->state_ == State::kUp) return;
        tunnel->Fail(absl::DeadlineExceededError(StrCat(
                         "not up after ", absl::FormatDuration(tunnel->context_.setup_timeout))),
                     "setup_timeout");
      },
      static_cast<uint64_t>(absl::ToInt64Milliseconds(context_.setup_timeout)), 0);
}

// ---- The relay stream ----------------------------------------------------------------------

void Tunnel::OnStreamAccepted(Stream& stream) {
  if (state_ != State::kOpening) return;
  state_ = State::kSecuring;
  if (absl::Status status = TakePeerSetup(stream.result().tunnel()); !status.ok()) {
    Fail(status, "bad_setup");
    return;
  }
  channel_->Start();
}

void Tunnel::OnStreamData(Stream& stream, std::string_view data) {
  if (state_ == State::kClosed || channel_ == nullptr) return;
  channel_->OnCiphertext(data);
  // The nested link's stream windows bound what piles up behind this.
  if (relay_stream_ != nullptr) relay_stream_->Consumed(data.size());
}

void Tunnel::OnStreamEnd(Stream& stream) {
  switch (data_path_) {
    case DataPath::kSwitching:
      // After OK the peer's END is the switch: its later bytes come on the data path.
      peer_ended_ = true;
      FinishSwitch();
      return;
    case DataPath::kOffered:
      // The relay answers both ends at once, so the peer may have read its OK and ENDed before
      // ours arrived: the offer's outcome decides (OK: the switch; anything else: closed).
      peer_ended_ = true;
      return;
    default:
      Fail(absl::UnavailableError("the other end closed the tunnel"), "");
  }
}

void Tunnel::OnStreamWritable(Stream& stream) {
  if (nested_ != nullptr) nested_->OnTransportDrained();
}

void Tunnel::OnStreamClosed(Stream& stream, const absl::Status& status) {
  relay_stream_ = nullptr;
  if (sending_on_data_path()) {
    // Closed cleanly with both ENDs (the switch done), or lost once nothing more could come on
    // it: the tunnel lives on the data path. Lost before the peer's END, the peer's last bytes
    // on the stream are gone with it.
    if (status.ok() || peer_ended_) return;
    Fail(status, "lost");
    return;
  }
  if (state_ == State::kOpening && stream.result().stream_id() == stream.id()) {
    // Refused by a relay or by the serving end (a refusal carries its reason back).
    refused_ = true;
    refusal_ = stream.result().reason();
    Fail(status, "refused");
    return;
  }
  Fail(status.ok() ? absl::UnavailableError("the tunnel stream ended") : status, "lost");
}

// ---- The secure channel ----------------------------------------------------------------------

void Tunnel::SendCiphertext(std::string_view bytes) {
  // Write's back-pressure signal is read through QueuedBytes() by the nested link.
  if (sending_on_data_path()) {
    if (data_ != nullptr) data_->Write(bytes);
    return;
  }
  if (relay_stream_ != nullptr) relay_stream_->Write(bytes);
}

void Tunnel::OnSecured() {
  if (state_ != State::kSecuring) return;
  LinkOptions options;
  options.is_relay_side = !tls_client_;
  nested_ = std::make_unique<Link>(*this, *this, options);
  link::Control control;
  link::Hello* hello = control.mutable_hello();
  hello->set_version(kProtocolVersion);
  hello->set_agent_id(context_.agent_id);
  for (const std::string& hop : hops_) hello->add_hops(hop);
  hello->set_tunnel_nonce(nonce_);
  hello->set_initial_stream_window(options.stream_window);
  hello->set_link_window(options.link_window);
  nested_->SendControl(control);
}

void Tunnel::OnPlaintext(std::string_view plaintext) {
  if (state_ == State::kClosed) return;
  if (nested_ == nullptr) {
    Fail(absl::InternalError("plaintext before the handshake finished"), "protocol");
    return;
  }
  nested_->OnBytes(plaintext);
}

void Tunnel::OnChannelClosed(const absl::Status& status) {
  if (status.ok()) {
    Fail(absl::UnavailableError("the other end closed the tunnel"), "");
  } else if (nested_ == nullptr) {
    Fail(status, "handshake");
  } else {
    Fail(absl::DataLossError(StrCat("TLS failed: ", status.message())), "tls");
  }
}

// ---- The nested link -------------------------------------------------------------------------

void Tunnel::Send(std::string_view bytes) {
  if (channel_ == nullptr || state_ == State::kClosed) return;
  // The nested link sends a frame as a header and a payload: queued until the end of the loop
  // iteration (or a bulk amount), they leave as full records rather than one record each.
  channel_->Queue(bytes);
  if (channel_->queued() >= kNestedFlushBytes) {
    channel_->Flush();
  } else if (!flush_scheduled_) {
    flush_scheduled_ = true;
    context_.tasks->Schedule(this);
  }
}

void Tunnel::FlushNow() {
  flush_scheduled_ = false;
  if (channel_ == nullptr || state_ == State::kClosed) return;
  channel_->Flush();
  // The nested link may have stopped at its transport watermark on what waited here; a flush
  // that the socket takes at once reports no drain of its own, so report it.
  if (state_ != State::kClosed && nested_ != nullptr &&
      QueuedBytes() < nested_->options().transport_high_watermark) {
    nested_->OnTransportDrained();
  }
}

size_t Tunnel::QueuedBytes() const {
  size_t transport = 0;
  if (sending_on_data_path()) {
    transport = data_ != nullptr ? data_->queued_bytes() : 0;
  } else if (relay_stream_ != nullptr) {
    transport = relay_stream_->pending_bytes();
  }
  return transport + (channel_ != nullptr ? channel_->queued() : 0);
}

void Tunnel::OnControl(Link& link, const link::Control& control) {
  switch (control.body_case()) {
    case link::Control::kHello:
      if (state_ == State::kSecuring) {
        CheckPeerHello(control.hello());
        return;
      }
      break;
    case link::Control::kGoAway:
      spdlog::info("tunnel {} {}: the other end is going away: {}", kind_name(), name(),
                   control.go_away().reason());
      owner_.OnTunnelDraining(*this);
      return;
    default:
      break;
  }
  Fail(absl::InvalidArgumentError(StrCat("unexpected control message ",
                                         static_cast<int>(control.body_case()),
                                         " inside the tunnel")),
       "protocol");
}

void Tunnel::CheckPeerHello(const link::Hello& hello) {
  // LSTP's resending of the setup information: the relays could have altered the clear text.
  bool same_hops = std::equal(hello.hops().begin(), hello.hops().end(), hops_.begin(), hops_.end());
  if (hello.version() != kProtocolVersion || hello.agent_id() != peer_setup_.agent_id() ||
      hello.tunnel_nonce() != peer_setup_.nonce() || !same_hops) {
    Fail(absl::PermissionDeniedError("setup information changed in transit"), "setup_changed");
    return;
  }
  if (hello.initial_stream_window() >= 1024) {
    nested_->set_peer_stream_window(hello.initial_stream_window());
  }
  nested_->set_peer_link_window(hello.link_window());
  state_ = State::kUp;
  uv_timer_stop(setup_timer_);
  TunnelsUp().Inc();
  spdlog::info("tunnel {} {} up: peer {} via {} ({})", kind_name(), name(), peer_agent(),
               absl::StrJoin(hops_, ","), security());
  owner_.OnTunnelUp(*this);
}

void Tunnel::OnStreamOpen(Link& link, Stream& stream, const link::Open& open) {
  if (role_ != TunnelRole::kServe) {
    stream.Refuse("the connecting end of a tunnel accepts no streams", link::NOT_ALLOWED);
    return;
  }
  if (state_ != State::kUp) {
    Fail(absl::InvalidArgumentError("stream opened before the tunnel's Hello"), "protocol");
    return;
  }
  ServeStream(stream, open);
}

void Tunnel::OnLinkFailed(Link& link, const absl::Status& status) { Fail(status, "protocol"); }

Stream* Tunnel::OpenStream(std::string destination, std::string client_address,
                           StreamHandler& handler) {
  if (state_ != State::kUp || nested_ == nullptr) return nullptr;
  link::Open open;
  open.set_destination(std::move(destination));
  open.set_client_address(std::move(client_address));
  return nested_->OpenStream(std::move(open), handler);
}

void Tunnel::SendGoAway(std::string_view reason) {
  if (nested_ != nullptr && state_ == State::kUp) nested_->SendGoAway(reason);
}

void Tunnel::Close(const absl::Status& status) {
  owner_told_ = true;
  Fail(status, "");
}

void Tunnel::Retire(std::string_view reason) {
  if (retiring_ || state_ == State::kClosed) return;
  retiring_ = true;
  SendGoAway(reason);
  CloseIfRetiredAndIdle();
}

void Tunnel::OnStreamRemoved(Link& link) {
  if (retiring_) CloseIfRetiredAndIdle();
}

void Tunnel::CloseIfRetiredAndIdle() {
  if (stream_count() > 0) return;
  std::weak_ptr<Tunnel*> weak = alive_;
  context_.tasks->Defer([this, weak] {
    if (weak.expired() || state_ == State::kClosed || stream_count() > 0) return;
    Fail(absl::CancelledError("retired, no stream left"), "");
  });
}

std::string_view Tunnel::state_name() const {
  switch (state_) {
    case State::kOpening:
      return "opening";
    case State::kSecuring:
      return "securing";
    case State::kUp:
      return retiring_ ? "retiring" : "up";
    case State::kClosed:
      return "closed";
  }
  return "?";
}

std::string_view Tunnel::path_name() const { return sending_on_data_path() ? "data" : "link"; }

void Tunnel::Fail(const absl::Status& status, std::string_view failure) {
  if (state_ == State::kClosed) return;
  bool was_up = state_ == State::kUp;
  state_ = State::kClosed;
  uv_timer_stop(setup_timer_);
  uv_timer_stop(data_path_timer_);
  DropDataConnection();
  if (was_up) TunnelsUp().Dec();
  // The peer announced GoAway (it retired the tunnel, or is shutting down) and then closed it:
  // an orderly end, not a failure.
  bool closed_by_retired_peer = was_up && draining() && failure == "lost";
  if (!failure.empty() && !closed_by_retired_peer) TunnelFailures(failure).Inc();
  if (refused_) {
    // The connecting end's owner logs refusals, once per change of reason.
  } else if (owner_told_) {
    // The owner closes it (shutting down, or replaced): not news.
    spdlog::info("tunnel {} {} closed: {}", kind_name(), name(), status.message());
  } else if (retiring_ && absl::IsCancelled(status)) {
    spdlog::info("tunnel {} {}: retired tunnel has no stream left; closing it", kind_name(),
                 name());
  } else if (closed_by_retired_peer) {
    spdlog::info("tunnel {} {} closed by the other end after its GoAway: {}", kind_name(), name(),
                 status.message());
  } else if (was_up) {
    spdlog::warn("tunnel {} {} down: {}", kind_name(), name(), status.message());
  } else {
    spdlog::warn("tunnel {} {} failed: {}", kind_name(), name(), status.message());
  }
  if (nested_ != nullptr) nested_->Close(status);
  if (relay_stream_ != nullptr) {
    Stream* stream = relay_stream_;
    relay_stream_ = nullptr;
    stream->Reset(StrCat("tunnel closed: ", status.message()));
  }
  if (!owner_told_) {
    owner_told_ = true;
    owner_.OnTunnelClosed(*this, status);
  }
}

// ---- The data path ---------------------------------------------------------------------------

bool Tunnel::OfferDataPath(const sockaddr_storage& relay, std::string token) {
  if (state_ == State::kClosed || relay_stream_ == nullptr || data_path_ != DataPath::kLink) {
    return false;
  }
  data_path_ = DataPath::kOffered;
  data_relay_ = FormatSockaddr(reinterpret_cast<const sockaddr*>(&relay));
  data_token_ = std::move(token);
  uv_timer_start(
      data_path_timer_,
      [](uv_timer_t* t) {
        auto* tunnel = static_cast<Tunnel*>(t->data);
        if (tunnel == nullptr || tunnel->data_path_ != DataPath::kOffered) return;
        tunnel->DeclineDataPath(
            "timeout", StrCat("no answer within ", absl::FormatDuration(kDataPathPairTimeout)));
      },
      Milliseconds(kDataPathPairTimeout), 0);
  std::weak_ptr<Tunnel*> weak = alive_;
  TcpConnection::ConnectWithin(
      context_.loop, relay, Milliseconds(kDataPathDialTimeout),
      [this, weak](absl::StatusOr<std::unique_ptr<TcpConnection>> connection) {
        if (weak.expired()) {
          if (connection.ok()) (*connection)->Close();
          return;
        }
        DataPathConnected(std::move(connection));
      });
  return true;
}

void Tunnel::DataPathConnected(absl::StatusOr<std::unique_ptr<TcpConnection>> connection) {
  if (state_ == State::kClosed || data_path_ != DataPath::kOffered) {
    // Closed, or the offer timed out meanwhile.
    if (connection.ok()) (*connection)->Close();
    return;
  }
  if (!connection.ok()) {
    DeclineDataPath("connect_failed", StrCat("dial: ", connection.status().message()));
    return;
  }
  data_ = *std::move(connection);
  if (absl::Status keepalive = data_->SetKeepAlive(
          kDataPathKeepAliveIdle, kDataPathKeepAliveInterval, kDataPathKeepAliveCount);
      !keepalive.ok()) {
    spdlog::warn("tunnel {} {}: data path via {}: {}", kind_name(), name(), data_relay_,
                 keepalive.message());
  }
  data_->Start(*this);
  data_->Write(DataPathRequest(data_token_));
  data_token_.clear();
}

void Tunnel::OnRead(std::string_view data) {
  switch (data_path_) {
    case DataPath::kOffered: {
      data_reply_.append(data);
      absl::StatusOr<size_t> end = DataPathLineEnd(data_reply_);
      if (!end.ok()) {
        DeclineDataPath("protocol", std::string(end.status().message()));
        return;
      }
      if (*end == 0) return;
      std::string reply = std::exchange(data_reply_, std::string());
      absl::Status answer = ParseDataPathReply(std::string_view(reply).substr(0, *end));
      if (answer.ok()) {
        SwitchToDataPath(std::string_view(reply).substr(*end));
        return;
      }
      DeclineDataPath(
          answer.code() == absl::StatusCode::kFailedPrecondition ? "refused" : "protocol",
          std::string(answer.message()));
      return;
    }
    case DataPath::kSwitching:
      data_held_.append(data);
      if (data_held_.size() >= kDataPathHoldLimit) data_->PauseReading();
      return;
    case DataPath::kUp:
      if (state_ != State::kClosed && channel_ != nullptr) channel_->OnCiphertext(data);
      return;
    case DataPath::kLink:
    case DataPath::kDeclined:
      return;
  }
}

void Tunnel::OnEof() {
  if (data_path_ == DataPath::kOffered) {
    DeclineDataPath("protocol", "the relay closed the connection without an answer");
  } else if (sending_on_data_path()) {
    Fail(absl::UnavailableError("the tunnel's data path closed"), "lost");
  }
}

void Tunnel::OnError(const absl::Status& status) {
  if (data_path_ == DataPath::kOffered) {
    DeclineDataPath("connect_failed", std::string(status.message()));
  } else if (sending_on_data_path() && state_ != State::kClosed) {
    // A failed write reports from inside SendCiphertext, that is from inside the nested link's
    // Send, which must not be called back: the tunnel fails after the current callbacks.
    DropDataConnection();
    std::weak_ptr<Tunnel*> weak = alive_;
    context_.tasks->Defer([this, weak, status] {
      if (weak.expired()) return;
      Fail(absl::UnavailableError(StrCat("the tunnel's data path closed: ", status.message())),
           "lost");
    });
  }
}

void Tunnel::OnDrained() {
  if (sending_on_data_path() && state_ != State::kClosed && nested_ != nullptr) {
    nested_->OnTransportDrained();
  }
}

void Tunnel::SwitchToDataPath(std::string_view early) {
  data_path_ = DataPath::kSwitching;
  uv_timer_stop(data_path_timer_);
  DataPaths("switched").Inc();
  spdlog::info("tunnel {} {}: data path up via {}", kind_name(), name(), data_relay_);
  data_held_.assign(early);
  if (data_held_.size() >= kDataPathHoldLimit) data_->PauseReading();
  // From here SendCiphertext writes to the data path; END follows what the stream already holds.
  if (relay_stream_ != nullptr) relay_stream_->End();
  if (state_ == State::kClosed) return;
  if (peer_ended_) {
    FinishSwitch();
    if (state_ == State::kClosed) return;
  }
  // The nested link may be waiting for the relay stream's queue to drain; its transport queue
  // is now the data connection's.
  if (nested_ != nullptr) nested_->OnTransportDrained();
}

void Tunnel::FinishSwitch() {
  data_path_ = DataPath::kUp;
  std::string held = std::exchange(data_held_, std::string());
  if (!held.empty() && state_ != State::kClosed && channel_ != nullptr) {
    channel_->OnCiphertext(held);
  }
  if (state_ != State::kClosed && data_ != nullptr) data_->ResumeReading();
}

void Tunnel::DeclineDataPath(std::string_view result, std::string_view reason) {
  data_path_ = DataPath::kDeclined;
  uv_timer_stop(data_path_timer_);
  DataPaths(result).Inc();
  DropDataConnection();
  data_token_.clear();
  data_reply_.clear();
  spdlog::info("tunnel {} {}: no data path via {} ({}): {}; the tunnel stays on the link",
               kind_name(), name(), data_relay_, result, reason);
  if (peer_ended_) {
    // Not a switch after all: the peer ended the tunnel.
    Fail(absl::UnavailableError("the other end closed the tunnel"), "");
  }
}

void Tunnel::DropDataConnection() {
  if (data_ == nullptr) return;
  data_->Close();
  // Possibly inside one of the connection's own callbacks: freed once they returned.
  context_.tasks->Defer([doomed = std::shared_ptr<TcpConnection>(std::move(data_))] {});
}

// ---- Serving end: nested streams -----------------------------------------------------------

void Tunnel::ServeStream(Stream& stream, const link::Open& open) {
  const ServiceConfig& service = *endpoint_.service;
  uint32_t id = stream.id();
  std::weak_ptr<Tunnel*> weak = alive_;
  if (open.destination().empty()) {
    if (!service.has_target()) {
      RefuseStream(stream, link::NOT_ALLOWED, "no_target",
                   StrCat(kind_name(), " '", name(),
                          "' has no target here: a connect end must name a destination (socks5)"));
      return;
    }
    std::string target = FormatHostPort(service.target);
    ResolveAsync(context_.loop, service.target.host, service.target.port, SOCK_STREAM,
                 [this, weak, id, target](absl::StatusOr<sockaddr_storage> address) {
                   if (weak.expired() || state_ == State::kClosed) return;
                   if (!address.ok()) {
                     RefuseStream(id, link::HOST_UNREACHABLE, "host_unreachable",
                                  StrCat("connect ", target, ": ", address.status().message()));
                     return;
                   }
                   ConnectStream(id, *address, target);
                 });
    return;
  }
  std::string destination = open.destination();
  absl::StatusOr<HostPort> host_port = ParseHostPort(destination);
  if (!host_port.ok() || host_port->port == 0) {
    RefuseStream(stream, link::ADDRESS_NOT_SUPPORTED, "other",
                 StrCat("invalid destination '", destination, "'"));
    return;
  }
  if (service.allow.empty()) {
    // Not even resolved: a name the allow-list could never admit is not looked up.
    RefuseStream(stream, link::NOT_ALLOWED, "not_allowed",
                 StrCat(destination, " is not allowed: ", kind_name(), " '", name(),
                        "' allows no destinations"));
    return;
  }
  ResolveAllAsync(
      context_.loop, host_port->host, host_port->port, SOCK_STREAM,
      [this, weak, id, destination, literal = IsIpLiteral(host_port->host)](
          absl::StatusOr<std::vector<sockaddr_storage>> addresses) {
        if (weak.expired() || state_ == State::kClosed) return;
        if (!addresses.ok()) {
          RefuseStream(id, link::HOST_UNREACHABLE, "host_unreachable",
                       StrCat(destination, ": ", addresses.status().message()));
          return;
        }
        // Every address must be allowed: which one a later lookup returns is not ours to choose.
        for (const sockaddr_storage& address : *addresses) {
          if (!endpoint_.service->allow.Allows(reinterpret_cast<const sockaddr*>(&address))) {
            std::string resolved =
                literal ? ""
                        : StrCat(" (", FormatSockaddr(reinterpret_cast<const sockaddr*>(&address)),
                                 ")");
            RefuseStream(id, link::NOT_ALLOWED, "not_allowed",
                         StrCat(destination, resolved, " is not allowed by ", kind_name(), " '",
                                name(), "'"));
            return;
          }
        }
        ConnectStream(id, addresses->front(), destination);
      });
}

void Tunnel::ConnectStream(uint32_t stream_id, const sockaddr_storage& address,
                           std::string target) {
  std::weak_ptr<Tunnel*> weak = alive_;
  TcpConnection::ConnectWithin(
      context_.loop, address,
      static_cast<uint64_t>(absl::ToInt64Milliseconds(context_.connect_timeout)),
      [this, weak, stream_id, target](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
        if (weak.expired() || state_ == State::kClosed) {
          if (tcp.ok()) (*tcp)->Close();
          return;
        }
        if (!tcp.ok()) {
          link::OpenError error = OpenErrorForConnect(tcp.status());
          RefuseStream(stream_id, error, OpenErrorLabel(error),
                       StrCat("connect ", target, ": ", tcp.status().message()));
          return;
        }
        Stream* stream = nested_->FindStream(stream_id);
        if (stream == nullptr) {  // the connecting end gave up meanwhile
          (*tcp)->Close();
          return;
        }
        auto splice = std::make_unique<StreamSplice>(
            std::move(*tcp), stream, [this, weak](StreamSplice& done, const absl::Status&) {
              StreamSplice* raw = &done;
              context_.tasks->Defer([this, weak, raw] {
                if (!weak.expired()) splices_.erase(raw);
              });
            });
        StreamSplice* raw = splice.get();
        splices_.emplace(raw, std::move(splice));
        stream->Accept(*raw);
        raw->Start();
      });
}

void Tunnel::RefuseStream(Stream& stream, link::OpenError error, std::string_view label,
                          std::string_view reason) {
  CounterOf("rdv_agent_tunnel_streams_refused_total",
            "Streams a tunnel's serving end refused, by reason", StrCat("reason=\"", label, "\""))
      .Inc();
  spdlog::info("tunnel {} {}: refused a stream: {}", kind_name(), name(), reason);
  stream.Refuse(reason, error);
}

void Tunnel::RefuseStream(uint32_t stream_id, link::OpenError error, std::string_view label,
                          std::string_view reason) {
  if (nested_ == nullptr) return;
  if (Stream* stream = nested_->FindStream(stream_id)) RefuseStream(*stream, error, label, reason);
}

}  // namespace rdv
