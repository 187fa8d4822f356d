#include "relay/udp_service_port.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "common/link.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/tcp_connection.h"
#include "relay/agent_link.h"
#include "relay/relay.h"
#include "relay/relay_worker.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// Bounds the session table of one port against a flood of spoofed source addresses.
constexpr size_t kMaxSessionsPerPort = 10000;

Counter& Dropped(std::string_view reason) {
  return CounterOf("rdv_udp_datagrams_dropped_total",
                   "Datagrams of udp services dropped by the relay",
                   StrCat("reason=\"", reason, "\""));
}
Counter& Received() {
  static Counter& counter =
      CounterOf("rdv_udp_datagrams_received_total", "Datagrams received on udp service ports");
  return counter;
}
Counter& Sent() {
  static Counter& counter =
      CounterOf("rdv_udp_datagrams_sent_total", "Datagrams sent to clients of udp service ports");
  return counter;
}
Gauge& SessionsActive() {
  static Gauge& gauge = GaugeOf("rdv_udp_sessions_active", "Open udp sessions (client addresses)");
  return gauge;
}
Counter& SessionsOpened() {
  static Counter& counter = CounterOf("rdv_udp_sessions_opened_total", "udp sessions opened");
  return counter;
}
Counter& SessionsExpired() {
  static Counter& counter =
      CounterOf("rdv_udp_sessions_expired_total", "udp sessions closed after the idle timeout");
  return counter;
}
Counter& SessionsRefused() {
  static Counter& counter =
      CounterOf("rdv_udp_sessions_refused_total",
                "udp sessions ended by the agent side (flow refused or reset, or link lost)");
  return counter;
}

std::string ClientKey(const sockaddr* address) { return FormatSockaddr(address); }

}  // namespace

// The port's sockets, owned by the home worker like any session so that they are closed on
// its loop when it stops.
class UdpSocketSet : public RelaySession {
 public:
  explicit UdpSocketSet(UdpServicePort& port) : port_(port) {}
  bool HoldsDrain() const override { return false; }  // the port's sockets, not a client
  ~UdpSocketSet() override {
    port_.SocketsClosed();
    for (Socket* socket : sockets_) {
      socket->owner = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&socket->handle),
               [](uv_handle_t* h) { delete reinterpret_cast<Socket*>(h); });
    }
  }

  // Binds one socket; returns its fd.
  absl::StatusOr<int> Bind(uv_loop_t* loop, const std::string& host, uint16_t port,
                           std::string* bound_address, uint16_t* bound_port) {
    absl::StatusOr<sockaddr_storage> address = ResolveNumeric(host, port);
    if (!address.ok()) return address.status();
    auto* sa = reinterpret_cast<const sockaddr*>(&*address);
    auto* socket = new Socket;
    socket->owner = this;
    socket->index = sockets_.size();
    if (int rc = uv_udp_init_ex(loop, &socket->handle, sa->sa_family); rc != 0) {
      delete socket;  // never initialised: nothing to close
      return absl::UnavailableError(StrCat("udp socket: ", UvError(rc)));
    }
    socket->handle.data = socket;
    unsigned flags = sa->sa_family == AF_INET6 ? UV_UDP_IPV6ONLY : 0;
    int rc = uv_udp_bind(&socket->handle, sa, flags);
    if (rc == 0) rc = uv_udp_recv_start(&socket->handle, &Socket::Alloc, &Socket::Receive);
    if (rc != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&socket->handle),
               [](uv_handle_t* h) { delete reinterpret_cast<Socket*>(h); });
      return absl::UnavailableError(
          StrCat("cannot bind udp ", FormatSockaddr(sa), ": ", UvError(rc)));
    }
    sockets_.push_back(socket);
    sockaddr_storage local{};
    int length = sizeof(local);
    uv_udp_getsockname(&socket->handle, reinterpret_cast<sockaddr*>(&local), &length);
    *bound_address = FormatSockaddr(reinterpret_cast<sockaddr*>(&local));
    *bound_port =
        ntohs(local.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
    uv_os_fd_t fd = -1;
    uv_fileno(reinterpret_cast<uv_handle_t*>(&socket->handle), &fd);
    return fd;
  }

 private:
  struct Socket {
    uv_udp_t handle;  // first: the close callback casts the handle back
    UdpSocketSet* owner = nullptr;
    size_t index = 0;
    static void Alloc(uv_handle_t* handle, size_t, uv_buf_t* buf) {
      auto* socket = reinterpret_cast<Socket*>(handle);
      // One buffer per port, reused: each datagram is consumed before the next read.
      std::string& buffer = socket->owner->buffer_;
      *buf = uv_buf_init(buffer.data(), static_cast<unsigned>(buffer.size()));
    }
    static void Receive(uv_udp_t* handle, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr,
                        unsigned flags) {
      auto* socket = reinterpret_cast<Socket*>(handle);
      if (socket->owner == nullptr) return;
      if (nread < 0) {
        Dropped("receive_error").Inc();
        return;
      }
      if (addr == nullptr) return;  // nothing more to read now
      if (flags & UV_UDP_PARTIAL) {
        Dropped("oversize").Inc();
        return;
      }
      socket->owner->port_.OnClientDatagram(
          socket->index, addr, std::string_view(buf->base, static_cast<size_t>(nread)));
    }
  };

  UdpServicePort& port_;
  std::vector<Socket*> sockets_;
  // Larger than any UDP payload, so a datagram above kMaxDatagramPayload shows as one that
  // does not fit the link rather than a truncated one.
  std::string buffer_ = std::string(65536, '\0');
};

// One client address's session, living on the loop of the agent link that carries its flow.
class RelayUdpSession : public RelaySession, public StreamHandler {
 public:
  RelayUdpSession(RelayWorker& worker, UdpServicePort& port, uint64_t id, std::string client_key,
                  const sockaddr_storage& client, size_t socket_index)
      : worker_(worker),
        port_(port),
        id_(id),
        client_key_(std::move(client_key)),
        client_(client),
        socket_index_(socket_index),
        timer_(new uv_timer_t) {
    uv_timer_init(worker.loop(), timer_);
    timer_->data = this;
    port_.sessions_on(worker_.index())[id_] = this;
    SessionsActive().Inc();
  }
  ~RelayUdpSession() override {
    Unregister();
    if (stream_ != nullptr) stream_->Reset("relay closing");
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }

  bool HoldsDrain() const override { return false; }  // a udp flow ends only when idle

  // Opens the flow on `carrier`; false if it cannot take one.
  bool Start(AgentLink& carrier, const link::ServiceSpec& service, const std::string& local) {
    stream_ = carrier.OpenStream(service, client_key_, local, StrCat("udp:", port_.port()), *this);
    if (stream_ == nullptr) return false;
    SessionsOpened().Inc();
    spdlog::debug("udp session {} for {} on {}: opened (stream {})", id_, client_key_,
                  port_.service(), stream_->id());
    last_active_ = uv_now(worker_.loop());
    ArmTimer(IdleMs());
    return true;
  }

  void FromClient(std::string_view datagram) {
    if (stream_ == nullptr) {
      Dropped("session_gone").Inc();
      return;
    }
    last_active_ = uv_now(worker_.loop());
    // The link counts its own drops (rdv_link_datagrams_dropped_total); this names the service.
    if (!stream_->SendDatagram(datagram)) Dropped("link").Inc();
  }

  void Finish() {
    Unregister();
    worker_.Finish(this);
  }

  // StreamHandler
  void OnStreamDatagram(Stream& stream, std::string_view datagram) override {
    last_active_ = uv_now(worker_.loop());
    if (port_.SendToClient(socket_index_, client_, datagram)) Sent().Inc();
  }
  void OnStreamData(Stream& stream, std::string_view data) override {
    stream.Consumed(data.size());  // a udp flow carries no stream bytes; ignore them
  }
  void OnStreamEnd(Stream& stream) override {}
  void OnStreamWritable(Stream& stream) override {}
  void OnStreamClosed(Stream& stream, const absl::Status& status) override {
    stream_ = nullptr;
    SessionsRefused().Inc();
    if (status.code() == absl::StatusCode::kAborted) {
      // The agent reset the flow (its idle timer, or its target failed).
      spdlog::debug("udp session {} for {} on {}: closed by the agent: {}", id_, client_key_,
                    port_.service(), status.message());
    } else {
      spdlog::info("udp session for {} on {}: {}", client_key_, port_.service(), status.message());
    }
    Finish();
  }

 private:
  uint64_t IdleMs() const {
    return static_cast<uint64_t>(
        absl::ToInt64Milliseconds(worker_.config().udp.session_idle_timeout));
  }
  void ArmTimer(uint64_t ms) {
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<RelayUdpSession*>(t->data)->OnTimer();
        },
        ms, 0);
  }
  void OnTimer() {
    uint64_t idle = uv_now(worker_.loop()) - last_active_;
    if (idle < IdleMs()) {
      ArmTimer(IdleMs() - idle);
      return;
    }
    SessionsExpired().Inc();
    spdlog::debug("udp session {} for {} on {}: expired after {} ms idle", id_, client_key_,
                  port_.service(), idle);
    if (stream_ != nullptr) {
      Stream* stream = std::exchange(stream_, nullptr);
      stream->Reset("udp session idle");
    }
    Finish();
  }
  void Unregister() {
    if (!registered_) return;
    registered_ = false;
    port_.sessions_on(worker_.index()).erase(id_);
    port_.Forget(client_key_, id_);
    SessionsActive().Dec();
    uv_timer_stop(timer_);
  }

  RelayWorker& worker_;
  UdpServicePort& port_;
  const uint64_t id_;
  const std::string client_key_;
  const sockaddr_storage client_;
  const size_t socket_index_;
  uv_timer_t* timer_;
  Stream* stream_ = nullptr;
  uint64_t last_active_ = 0;
  bool registered_ = true;
};

UdpServicePort::UdpServicePort(Relay& relay, RelayWorker& home, std::string service)
    : relay_(relay),
      home_(home),
      service_(std::move(service)),
      sessions_by_worker_(static_cast<size_t>(relay.worker_count())) {}

UdpServicePort::~UdpServicePort() = default;

absl::StatusOr<std::unique_ptr<UdpServicePort>> UdpServicePort::Create(
    Relay& relay, RelayWorker& home, std::string service, uint16_t port,
    const std::vector<std::string>& bind) {
  std::unique_ptr<UdpServicePort> self(new UdpServicePort(relay, home, std::move(service)));
  auto sockets = std::make_unique<UdpSocketSet>(*self);
  std::vector<int> fds;
  uint16_t bound = port;
  for (const std::string& host : bind) {
    std::string address;
    absl::StatusOr<int> fd = sockets->Bind(home.loop(), host, bound, &address, &bound);
    if (!fd.ok()) {
      sockets.reset();  // closes what was bound
      return fd.status();
    }
    fds.push_back(*fd);
    self->addresses_.push_back(std::move(address));
  }
  self->port_ = bound;
  {
    absl::MutexLock lock(&self->mu_);
    self->fds_ = std::move(fds);
  }
  self->sockets_ = sockets.get();
  home.Adopt(std::move(sockets));
  return self;
}

void UdpServicePort::SocketsClosed() {
  absl::MutexLock lock(&mu_);
  for (int& fd : fds_) fd = -1;
  sockets_ = nullptr;
}

void UdpServicePort::OnClientDatagram(size_t socket_index, const sockaddr* client,
                                      std::string_view datagram) {
  Received().Inc();
  if (datagram.size() > kMaxDatagramPayload) {
    Dropped("oversize").Inc();
    return;
  }
  std::string key = ClientKey(client);
  Entry entry{};
  const StreamCarrier* chosen = nullptr;  // for a new session: the carrier the route picked
  {
    absl::MutexLock lock(&mu_);
    if (auto it = sessions_.find(key); it != sessions_.end()) {
      entry = it->second;
    } else if (sessions_.size() >= kMaxSessionsPerPort) {
      Dropped("session_limit").Inc();
      return;
    } else {
      RouteResult route =
          relay_.directory().RouteService(link::UDP, service_, home_.index(), HostOfAddress(key));
      if (route.outcome != RouteResult::Outcome::kFound) {
        Dropped("no_agent").Inc();
        // Once per outage, not per datagram: a client retrying must not flood the log.
        if (!warned_no_agent_) {
          warned_no_agent_ = true;
          spdlog::warn("udp port {}: no agent serves {}; dropping datagrams (first from {})", port_,
                       service_, key);
        }
        return;
      }
      warned_no_agent_ = false;
      chosen = route.carrier;
      entry = Entry{route.worker, next_id_++};
      sessions_.emplace(key, entry);
    }
  }
  sockaddr_storage storage{};
  std::memcpy(&storage, client,
              client->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  if (entry.worker == home_.index()) {
    Deliver(entry.worker, entry.id, chosen, std::move(key), storage, socket_index,
            std::string(datagram));
    return;
  }
  static Counter& crossed =
      CounterOf("rdv_udp_datagrams_crossed_loops_total",
                "Datagrams handed from a udp port's loop to another worker's");
  crossed.Inc();
  relay_.worker(entry.worker)
      .Post([this, entry, chosen, key = std::move(key), storage, socket_index,
             data = std::string(datagram)]() mutable {
        Deliver(entry.worker, entry.id, chosen, std::move(key), storage, socket_index,
                std::move(data));
      });
}

void UdpServicePort::Deliver(int worker, uint64_t id, const StreamCarrier* chosen,
                             std::string client_key, sockaddr_storage client, size_t socket_index,
                             std::string datagram) {
  auto& sessions = sessions_on(worker);
  if (chosen != nullptr) {
    RelayWorker& w = relay_.worker(worker);
    // Confirmed here, on the carrier's own loop: it may have gone away meanwhile (then a fresh
    // route), and the balance policy is not applied twice.
    RouteResult route =
        relay_.directory().Reroute(link::UDP, service_, worker, HostOfAddress(client_key), chosen);
    if (route.outcome != RouteResult::Outcome::kFound || route.worker != worker) {
      Dropped("no_agent").Inc();
      Forget(client_key, id);
      return;
    }
    std::string local = socket_index < addresses_.size() ? addresses_[socket_index] : "";
    auto session =
        std::make_unique<RelayUdpSession>(w, *this, id, client_key, client, socket_index);
    RelayUdpSession* raw = session.get();
    w.Adopt(std::move(session));
    if (!raw->Start(*static_cast<AgentLink*>(route.carrier), route.service, local)) {
      Dropped("no_agent").Inc();
      raw->Finish();
      return;
    }
    raw->FromClient(datagram);
    return;
  }
  auto it = sessions.find(id);
  if (it == sessions.end()) {
    // Expired or closed while this datagram was on its way; the next one opens a new session.
    Dropped("session_gone").Inc();
    return;
  }
  it->second->FromClient(datagram);
}

bool UdpServicePort::SendToClient(size_t socket_index, const sockaddr_storage& client,
                                  std::string_view data) {
  // A plain non-blocking sendto: the session may live on another loop than the socket, and the
  // kernel's send path is thread-safe where libuv's send queue is not. A full socket buffer
  // drops the reply, as UDP would.
  absl::MutexLock lock(&mu_);
  if (socket_index >= fds_.size() || fds_[socket_index] < 0) {
    Dropped("port_closed").Inc();
    return false;
  }
  socklen_t length = client.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  ssize_t n = ::sendto(fds_[socket_index], data.data(), data.size(), MSG_DONTWAIT,
                       reinterpret_cast<const sockaddr*>(&client), length);
  if (n < 0) {
    Dropped(errno == EAGAIN || errno == EWOULDBLOCK ? "send_buffer_full" : "send_error").Inc();
    return false;
  }
  return true;
}

void UdpServicePort::Forget(const std::string& client_key, uint64_t session_id) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(client_key);
  if (it != sessions_.end() && it->second.id == session_id) sessions_.erase(it);
}

}  // namespace rdv
