#include "relay/relay_worker.h"

#include <malloc.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/stream_splice.h"
#include "relay/admin_session.h"
#include "relay/agent_link.h"
#include "relay/agent_listener_session.h"
#include "relay/http_session.h"
#include "relay/proxy_entrypoint.h"
#include "relay/proxy_header_session.h"
#include "relay/proxy_tunnel.h"
#include "relay/relay.h"
#include "relay/smtp_entrypoint.h"
#include "relay/tls_entrypoint.h"
#include "relay/tunnel_data_path.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

Counter& NoAgent(link::ServiceKind kind) {
  return CounterOf("rdv_splice_no_agent_total",
                   "Clients closed because no agent link serves their service",
                   StrCat("kind=\"", absl::AsciiStrToLower(link::ServiceKind_Name(kind)), "\""));
}

Counter& Handoffs() {
  static Counter& counter =
      CounterOf("rdv_worker_handoffs_total", "Client connections moved to another worker loop");
  return counter;
}

// A client of a tcp service port spliced onto an agent stream.
class TcpClientSession : public RelaySession {
 public:
  TcpClientSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client) : worker_(worker) {
    splice_ = std::make_unique<StreamSplice>(
        std::move(client), nullptr, [this](StreamSplice&, const absl::Status& status) {
          if (!status.ok()) spdlog::debug("tcp session ended: {}", status.message());
          worker_.Finish(this);
        });
  }
  // Opens the stream; false when the link cannot take one.
  bool Start(AgentLink& carrier, const link::ServiceSpec& service, const std::string& entrypoint,
             std::string_view initial) {
    Stream* stream = carrier.OpenStream(service, splice_->socket(), entrypoint, *splice_);
    if (stream == nullptr) return false;
    splice_->Attach(*stream);
    splice_->Start(initial);
    return true;
  }

 private:
  RelayWorker& worker_;
  std::unique_ptr<StreamSplice> splice_;
};

}  // namespace

namespace {
// The loop a worker runs: the given one, or a new one it owns.
uv_loop_t* InitLoop(uv_loop_t* given, std::unique_ptr<uv_loop_t>& own) {
  if (given != nullptr) return given;
  own = std::make_unique<uv_loop_t>();
  uv_loop_init(own.get());
  return own.get();
}
}  // namespace

RelayWorker::RelayWorker(Relay& relay, int index, uv_loop_t* loop)
    : relay_(relay),
      index_(index),
      loop_(InitLoop(loop, own_loop_)),
      tasks_(loop_),
      wakeup_(new uv_async_t),
      trim_timer_(new uv_timer_t),
      // Link ids carry the worker in their low bits, so logs name links uniquely.
      next_link_id_(static_cast<uint64_t>(index) + 1) {
  wakeup_->data = this;
  uv_async_init(loop_, wakeup_, [](uv_async_t* async) {
    if (async->data) static_cast<RelayWorker*>(async->data)->DrainHandoffs();
  });
  trim_timer_->data = this;
  uv_timer_init(loop_, trim_timer_);
}

void RelayWorker::NoteLinkChurn() {
  if (trim_armed_ || stopped_) return;
  trim_armed_ = true;
  constexpr uint64_t kTrimDelayMs = 200;  // let a burst of handshakes finish first
  uv_timer_start(
      trim_timer_,
      [](uv_timer_t* timer) {
        auto* self = static_cast<RelayWorker*>(timer->data);
        if (self == nullptr) return;
        self->trim_armed_ = false;
#if !defined(__SANITIZE_ADDRESS__)
        // Under ASan glibc's allocator is not the one in use: its arenas are never set up and
        // malloc_trim walks a null arena list (a crash seen in the sanitizer build's tests).
        malloc_trim(0);
#endif
      },
      kTrimDelayMs, 0);
}

RelayWorker::~RelayWorker() {
  Stop();
  if (own_loop_) {
    uv_run(loop_, UV_RUN_DEFAULT);
    uv_loop_close(loop_);
  }
}

const RelayConfig& RelayWorker::config() const { return relay_.config(); }
Directory& RelayWorker::directory() { return relay_.directory(); }

absl::StatusOr<TcpListener*> RelayWorker::Listen(const std::string& host, uint16_t port,
                                                 TcpListener::AcceptCallback on_accept,
                                                 bool reuse_port) {
  absl::StatusOr<std::unique_ptr<TcpListener>> listener =
      TcpListener::Create(loop_, host, port, std::move(on_accept), reuse_port);
  if (!listener.ok()) return listener.status();
  listeners_.push_back(std::move(*listener));
  return listeners_.back().get();
}

void RelayWorker::AcceptAgent(uv_stream_t* server) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> conn = TcpConnection::Accept(server);
  if (!conn.ok()) return;
  if (stopped_) {
    (*conn)->Close();
    return;
  }
  auto session = std::make_unique<AgentListenerSession>(*this, std::move(*conn));
  AgentListenerSession* raw = session.get();
  Adopt(std::move(session));
  raw->Start();
}

void RelayWorker::StartAgentLink(std::unique_ptr<TcpConnection> connection, uint64_t accepted_ms) {
  auto tls = TlsSession::Create(std::move(connection), relay_.link_tls_context(),
                                /*is_server=*/true, tasks_, "", "");
  auto link = std::make_unique<AgentLink>(*this, std::move(tls), next_link_id_);
  next_link_id_ += static_cast<uint64_t>(relay_.worker_count());
  AgentLink* raw = link.get();
  links_.emplace(raw, std::move(link));
  raw->Start(accepted_ms);
}

void RelayWorker::ServeClient(std::unique_ptr<TcpConnection> client,
                              std::function<void(std::unique_ptr<TcpConnection>)> serve) {
  const NetworkList& balancers = config().proxy_protocol_from;
  if (balancers.empty() ||
      !balancers.Contains(reinterpret_cast<const sockaddr*>(&client->peer_sockaddr()))) {
    serve(std::move(client));
    return;
  }
  auto session = std::make_unique<ProxyHeaderSession>(*this, std::move(client), std::move(serve));
  ProxyHeaderSession* raw = session.get();
  Adopt(std::move(session));
  raw->Start();
}

void RelayWorker::AcceptEntrypoint(uv_stream_t* server, Entrypoint entrypoint) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(server);
  if (!client.ok()) return;
  ServeClient(std::move(*client), [this, entrypoint](std::unique_ptr<TcpConnection> c) {
    ServeEntrypoint(std::move(c), entrypoint);
  });
}

void RelayWorker::ServeEntrypoint(std::unique_ptr<TcpConnection> client, Entrypoint entrypoint) {
  switch (entrypoint) {
    case Entrypoint::kHttp: {
      auto session = std::make_unique<HttpSession>(*this, std::move(client));
      HttpSession* raw = session.get();
      Adopt(std::move(session));
      raw->Start("");
      return;
    }
    case Entrypoint::kTls:
      ServeTlsEntrypoint(*this, std::move(client));
      return;
    case Entrypoint::kSmtp:
      ServeSmtpEntrypoint(*this, std::move(client));
      return;
    case Entrypoint::kProxy:
      ServeProxyEntrypoint(*this, std::move(client));
      return;
  }
}

void RelayWorker::AcceptAdmin(uv_stream_t* server) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(server);
  if (!client.ok()) return;
  auto session = std::make_unique<AdminSession>(*this, std::move(*client));
  AdminSession* raw = session.get();
  Adopt(std::move(session));
  raw->Start();
}

void RelayWorker::AcceptTcp(uv_stream_t* server, const std::string& service, uint16_t port) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(server);
  if (!client.ok()) return;
  static Counter& accepted =
      CounterOf("rdv_tcp_connections_total", "Connections accepted on tcp service ports");
  accepted.Inc();
  ServeClient(std::move(*client), [this, service, port](std::unique_ptr<TcpConnection> c) {
    SpliceToService(std::move(c), link::TCP, service, StrCat("tcp:", port), "");
  });
}

void RelayWorker::SpliceToService(std::unique_ptr<TcpConnection> client, link::ServiceKind kind,
                                  const std::string& name, std::string entrypoint,
                                  std::string initial, const RefusedCallback& on_refused,
                                  const StreamCarrier* chosen) {
  std::string client_ip = HostOfAddress(client->peer_address());
  RouteResult route = chosen != nullptr ? directory().Reroute(kind, name, index_, client_ip, chosen)
                      : kind == link::TCP || kind == link::UDP
                          ? directory().RouteService(kind, name, index_, client_ip)
                          : directory().RouteHost(kind, name, index_, client_ip);
  if (route.outcome != RouteResult::Outcome::kFound && on_refused) {
    on_refused(std::move(client), route.outcome);
    return;
  }
  if (route.outcome != RouteResult::Outcome::kFound) {
    NoAgent(kind).Inc();
    client->Close();
    return;
  }
  // Bytes after a PROXY header that nobody has read yet come before what the entrypoint read.
  initial.insert(0, client->TakeUnread());
  if (route.worker != index_) {
    std::string peer = client->peer_address();
    absl::StatusOr<int> fd = client->DetachFd();
    if (!fd.ok()) return;
    Handoffs().Inc();
    Handoff handoff;
    handoff.peer_address = std::move(peer);
    handoff.kind = Handoff::Kind::kSplice;
    handoff.fd = *fd;
    handoff.bytes = std::move(initial);
    handoff.service_kind = kind;
    handoff.service = name;
    handoff.entrypoint = std::move(entrypoint);
    handoff.chosen = route.carrier;
    relay_.worker(route.worker).HandOff(std::move(handoff));
    return;
  }
  auto session = std::make_unique<TcpClientSession>(*this, std::move(client));
  TcpClientSession* raw = session.get();
  Adopt(std::move(session));
  if (!raw->Start(*static_cast<AgentLink*>(route.carrier), route.service, entrypoint, initial)) {
    NoAgent(kind).Inc();
    Finish(raw);
  }
}

void RelayWorker::HandOff(Handoff handoff) {
  absl::MutexLock lock(&mu_);
  if (stop_requested_) {
    // Stopping: the wakeup handle may be closed already, and nobody would adopt the socket.
    ::close(handoff.fd);
    SSL_free(handoff.tls);
    return;
  }
  handoffs_.push_back(std::move(handoff));
  uv_async_send(wakeup_);
}

bool RelayWorker::Post(std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  // Once stopping, the wakeup handle may be closed already: the task is dropped.
  if (stop_requested_) return false;
  posted_.push_back(std::move(task));
  uv_async_send(wakeup_);
  return true;
}

void RelayWorker::DrainHandoffs() {
  std::deque<Handoff> pending;
  std::deque<std::function<void()>> posted;
  bool stop;
  {
    absl::MutexLock lock(&mu_);
    pending.swap(handoffs_);
    posted.swap(posted_);
    stop = stop_requested_;
  }
  if (!stop && !stopped_) {
    for (std::function<void()>& task : posted) task();
  }
  for (Handoff& handoff : pending) {
    if (stop || stopped_) {
      ::close(handoff.fd);
      SSL_free(handoff.tls);
      continue;
    }
    absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Adopt(loop_, handoff.fd);
    if (!client.ok()) {
      SSL_free(handoff.tls);
      continue;
    }
    if (!handoff.peer_address.empty() && handoff.peer_address != (*client)->peer_address()) {
      (void)(*client)->OverridePeer(handoff.peer_address);
    }
    if (handoff.kind == Handoff::Kind::kSmtp) {
      ResumeSmtpEntrypoint(*this, std::move(*client), handoff.bytes, handoff.tls);
    } else if (handoff.kind == Handoff::Kind::kSplice) {
      SpliceToService(std::move(*client), handoff.service_kind, handoff.service,
                      std::move(handoff.entrypoint), std::move(handoff.bytes),
                      /*on_refused=*/nullptr, handoff.chosen);
    } else if (handoff.kind == Handoff::Kind::kProxy) {
      ResumeProxyTunnel(*this, std::move(*client), std::move(handoff));
    } else if (handoff.kind == Handoff::Kind::kDataPath) {
      PresentDataPathToken(*this, std::move(*client), std::move(handoff.data_path_token),
                           std::move(handoff.bytes));
    } else {
      auto session = std::make_unique<HttpSession>(*this, std::move(*client), handoff.chosen,
                                                   handoff.http_proxy);
      HttpSession* raw = session.get();
      Adopt(std::move(session));
      raw->Start(handoff.bytes);
    }
  }
  if (stop) Stop();
}

void RelayWorker::RequestStop() {
  {
    absl::MutexLock lock(&mu_);
    // Already stopping, or stopped (a drained worker): the wakeup handle may be gone.
    if (stop_requested_) return;
    stop_requested_ = true;
  }
  uv_async_send(wakeup_);
}

void RelayWorker::RequestDrain(uint64_t deadline_ms) {
  Post([this, deadline_ms] { BeginDrain(deadline_ms); });
}

bool RelayWorker::RequestCloseListeners(std::function<void()> closed) {
  return Post([this, closed = std::move(closed)] {
    CloseListeners();
    closed();
  });
}

void RelayWorker::CloseListeners() {
  for (auto& listener : listeners_) {
    bool admin = std::find(admin_listeners_.begin(), admin_listeners_.end(), listener.get()) !=
                 admin_listeners_.end();
    if (!admin) listener->Close();
  }
}

void RelayWorker::BeginDrain(uint64_t deadline_ms) {
  if (stopped_ || drain_timer_ != nullptr) return;
  CloseListeners();
  for (auto& [raw, link] : links_) link->GoAway("relay shutting down");
  drain_deadline_ms_ = deadline_ms;
  drain_holders_ = CountDrainHolders();
  drain_timer_ = new uv_timer_t;
  uv_timer_init(loop_, drain_timer_);
  drain_timer_->data = this;
  constexpr uint64_t kDrainCheckMs = 100;
  uv_timer_start(
      drain_timer_,
      [](uv_timer_t* timer) {
        if (timer->data != nullptr) static_cast<RelayWorker*>(timer->data)->CheckDrain();
      },
      0, kDrainCheckMs);
}

void RelayWorker::CloseIdleSessions() {
  std::vector<RelaySession*> sessions;
  sessions.reserve(sessions_.size());
  for (const auto& [raw, session] : sessions_) sessions.push_back(raw);
  for (RelaySession* session : sessions) session->CloseIfIdle();
}

void RelayWorker::ApplyCredentialChanges(const CredentialChanges& changes) {
  std::vector<AgentLink*> removed, changed;
  for (const auto& [raw, link] : links_) {
    const std::string& name = raw->credential();
    if (changes.removed.contains(name)) {
      removed.push_back(raw);
    } else if (changes.changed.contains(name)) {
      (raw->authenticated() ? changed : removed).push_back(raw);
    }
  }
  for (AgentLink* link : changed) {
    spdlog::info(
        "agent link {}: credential '{}' changed by a reload; GoAway, the agent {} reconnects",
        link->id(), link->credential(), link->agent());
    link->GoAway(StrCat("credential '", link->credential(), "' changed by a configuration reload"));
  }
  for (AgentLink* link : removed) {
    bool gone = changes.removed.contains(link->credential());
    spdlog::info("agent link {}: credential '{}' {} by a reload; closing the link", link->id(),
                 link->credential(), gone ? "removed" : "changed during authentication");
    link->Close(absl::PermissionDeniedError(StrCat("credential '", link->credential(), "' ",
                                                   gone ? "removed" : "changed",
                                                   " by a configuration reload")));
  }
}

size_t RelayWorker::CountDrainHolders() const {
  size_t holders = tunnel_streams_;
  for (const auto& [raw, session] : sessions_) {
    if (session->HoldsDrain()) ++holders;
  }
  return holders;
}

void RelayWorker::CheckDrain() {
  CloseIdleSessions();
  size_t holders = CountDrainHolders();
  drain_holders_ = holders;
  bool grace_over = uv_hrtime() / 1000000 >= drain_deadline_ms_;
  if (holders > 0 && !grace_over) return;
  // The worker with the admin listener (worker 0) stops last: /metrics answers while any
  // worker still drains.
  bool others_left = relay_.workers_stopped() < relay_.worker_count() - 1;
  if (!admin_listeners_.empty() && others_left && !grace_over) return;
  if (holders > 0) {
    spdlog::warn(
        "worker {}: drain: {} client sessions and tunnel streams still open at the end of "
        "the grace; closing them",
        index_, holders);
  }
  Stop();
}

void RelayWorker::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (drain_timer_ != nullptr) {
    drain_timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(drain_timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    drain_timer_ = nullptr;
  }
  {
    absl::MutexLock lock(&mu_);
    stop_requested_ = true;  // no more Post()s: the wakeup handle closes below
  }
  for (auto& listener : listeners_) listener->Close();
  std::vector<AgentLink*> links;
  for (auto& [raw, link] : links_) links.push_back(raw);
  for (AgentLink* link : links) link->GoAway("relay shutting down");
  for (AgentLink* link : links) link->Close(absl::CancelledError("relay shutting down"));
  sessions_.clear();
  links_.clear();
  tasks_.Close();
  trim_timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(trim_timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  wakeup_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(wakeup_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
  drain_holders_ = 0;
  relay_.WorkerStopped();
}

void RelayWorker::StartThread() {
  thread_ = std::thread([this] { uv_run(loop_, UV_RUN_DEFAULT); });
}

void RelayWorker::Join() {
  if (thread_.joinable()) thread_.join();
}

void RelayWorker::LinkClosed(AgentLink& link) {
  AgentLink* raw = &link;
  tasks_.Defer([this, raw] { links_.erase(raw); });
}

void RelayWorker::Adopt(std::unique_ptr<RelaySession> session) {
  RelaySession* raw = session.get();
  sessions_.emplace(raw, std::move(session));
}

void RelayWorker::Finish(RelaySession* session) {
  tasks_.Defer([this, session] { sessions_.erase(session); });
}

}  // namespace rdv
