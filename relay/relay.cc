#include "relay/relay.h"

#include "common/str_cat.h"
#include "common/metrics.h"
#include "common/stream_splice.h"
#include "relay/admin_session.h"
#include "relay/http_session.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// A client of a tcp service port spliced onto an agent stream.
class TcpClientSession : public RelaySession {
 public:
  TcpClientSession(Relay& relay, std::unique_ptr<TcpConnection> client, AgentLink& carrier,
                   const link::ServiceSpec& service, uint16_t port)
      : relay_(relay) {
    std::string peer = client->peer_address();
    splice_ = std::make_unique<StreamSplice>(
        std::move(client), nullptr, [this](StreamSplice&, const absl::Status& status) {
          if (!status.ok()) {
            spdlog::debug("tcp session ended: {}", status.message());
          }
          relay_.Finish(this);
        });
    stream_ = carrier.OpenStream(service, peer, StrCat("tcp:", port), *splice_);
  }
  // Returns false when no stream could be opened.
  bool Start() {
    if (stream_ == nullptr) return false;
    splice_->Attach(*stream_);
    splice_->Start();
    return true;
  }

 private:
  Relay& relay_;
  std::unique_ptr<StreamSplice> splice_;
  Stream* stream_ = nullptr;
};

}  // namespace

Relay::Relay(RelayConfig config, uv_loop_t* loop)
    : config_(std::move(config)), loop_(loop), tasks_(loop) {}

Relay::~Relay() {
  sessions_.clear();
  links_.clear();
  for (auto& listener : listeners_) listener->Close();
  tasks_.Close();
}

absl::StatusOr<std::unique_ptr<Relay>> Relay::Create(RelayConfig config, uv_loop_t* loop) {
  std::unique_ptr<Relay> relay(new Relay(std::move(config), loop));
  absl::StatusOr<ServerTlsIdentity> identity = CreateLinkServerContext(
      relay->config_.agent_listener.cert_file, relay->config_.agent_listener.key_file,
      relay->config_.state_dir, relay->config_.relay_id);
  if (!identity.ok()) return identity.status();
  relay->identity_ = std::move(*identity);
  relay->directory_ = std::make_unique<InMemoryDirectory>(
      relay->config_.http ? relay->config_.http->zone : std::string());
  return relay;
}

absl::Status Relay::ListenAll(const std::vector<HostPort>& addresses, const std::string& role,
                              TcpListener::AcceptCallback on_accept) {
  uint16_t first_port = 0;
  for (const HostPort& address : addresses) {
    // Port 0 on several addresses: the first picks, the rest follow it.
    uint16_t port = address.port == 0 ? first_port : address.port;
    absl::StatusOr<std::unique_ptr<TcpListener>> listener =
        TcpListener::Create(loop_, address.host, port, on_accept);
    if (!listener.ok()) return listener.status();
    if (first_port == 0) first_port = (*listener)->port();
    spdlog::info("listening {} {}", role, (*listener)->address());
    if (role == "http" && http_port_ == 0) http_port_ = (*listener)->port();
    listeners_.push_back(std::move(*listener));
  }
  return absl::OkStatus();
}

absl::Status Relay::Start() {
  if (identity_.generated) {
    spdlog::info("generated a new agent-listener certificate in {}", config_.state_dir);
  }
  spdlog::info("fingerprint sha256:{}", identity_.fingerprint_hex);
  absl::Status status = ListenAll(config_.agent_listener.listen, "agent",
                                  [this](uv_stream_t* server) { AcceptAgent(server); });
  if (!status.ok()) return status;
  if (config_.http) {
    status = ListenAll(config_.http->listen, "http", [this](uv_stream_t* server) {
      absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(server);
      if (!client.ok()) return;
      auto session = std::make_unique<HttpSession>(*this, std::move(*client));
      HttpSession* raw = session.get();
      Adopt(std::move(session));
      raw->Start();
    });
    if (!status.ok()) return status;
  }
  status = ListenAll(config_.admin.listen, "admin", [this](uv_stream_t* server) {
    absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(server);
    if (!client.ok()) return;
    auto session = std::make_unique<AdminSession>(*this, std::move(*client));
    AdminSession* raw = session.get();
    Adopt(std::move(session));
    raw->Start();
  });
  if (!status.ok()) return status;
  // Fixed tcp mappings listen from the start, so clients get a clean refusal-by-close (not
  // "connection refused") while the agent is away.
  for (const TcpPortMapping& mapping : config_.tcp.ports) {
    if (absl::Status s = BindTcpService(mapping.service, mapping.port); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void Relay::AcceptAgent(uv_stream_t* server) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> conn = TcpConnection::Accept(server);
  if (!conn.ok()) {
    CounterOf("rdv_accept_errors_total", "Failed accepts", "listener=\"agent\"").Inc();
    return;
  }
  if (shutting_down_) {
    (*conn)->Close();
    return;
  }
  auto tls = TlsSession::Create(std::move(*conn), identity_.ctx.get(), /*is_server=*/true,
                                tasks_, "", "");
  auto link = std::make_unique<AgentLink>(*this, std::move(tls), next_link_id_++);
  AgentLink* raw = link.get();
  links_.emplace(raw, std::move(link));
  raw->Start();
}

void Relay::LinkClosed(AgentLink& link) {
  AgentLink* raw = &link;
  tasks_.Defer([this, raw] { links_.erase(raw); });
}

size_t Relay::LinksOf(const std::string& credential) const {
  size_t n = 0;
  for (const auto& [raw, link] : links_) {
    if (link->credential() == credential) ++n;
  }
  return n;
}

void Relay::Adopt(std::unique_ptr<RelaySession> session) {
  RelaySession* raw = session.get();
  sessions_.emplace(raw, std::move(session));
}

void Relay::Finish(RelaySession* session) {
  tasks_.Defer([this, session] { sessions_.erase(session); });
}

absl::Status Relay::BindTcpService(const std::string& service, uint16_t port) {
  std::vector<HostPort> addresses;
  for (const std::string& host : config_.tcp.bind) addresses.push_back(HostPort{host, port});
  size_t before = listeners_.size();
  absl::Status status = ListenAll(
      addresses, StrCat("tcp:", service), [this, service](uv_stream_t* server) {
        auto it = tcp_ports_.find(service);
        AcceptTcpClient(server, service, it == tcp_ports_.end() ? 0 : it->second);
      });
  if (!status.ok()) {
    while (listeners_.size() > before) {
      listeners_.back()->Close();
      listeners_.pop_back();
    }
    return status;
  }
  uint16_t bound = listeners_[before]->port();
  tcp_ports_[service] = bound;
  ports_in_use_.insert(bound);
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> Relay::EnsureTcpPort(const std::string& service, uint16_t requested,
                                              const CredentialConfig& credential) {
  auto granted = [&](uint16_t port) {
    for (const Grant& grant : credential.grants) {
      if (grant.AllowsTcp(service, port)) return true;
    }
    return false;
  };
  if (auto it = tcp_ports_.find(service); it != tcp_ports_.end()) {
    if (requested != 0 && requested != it->second) {
      return absl::FailedPreconditionError(
          StrCat("service ", service, " already listens on port ", it->second));
    }
    if (!granted(it->second)) {
      return absl::PermissionDeniedError(
          StrCat("port ", it->second, " is not granted to this credential"));
    }
    return it->second;
  }
  if (uint16_t fixed = config_.tcp.FixedPortFor(service); fixed != 0) {
    requested = fixed;
  }
  if (requested != 0) {
    if (!granted(requested)) {
      return absl::PermissionDeniedError(
          StrCat("port ", requested, " is not granted to this credential"));
    }
    if (absl::Status s = BindTcpService(service, requested); !s.ok()) {
      return absl::UnavailableError(s.message());
    }
    return tcp_ports_[service];
  }
  // Allocate: the first free port in the credential's port ranges, else any port if the grant
  // names the service.
  for (const Grant& grant : credential.grants) {
    if (grant.kind() != GrantKind::kTcp || !grant.IsPortRange()) continue;
    for (uint32_t port = grant.port_low(); port <= grant.port_high(); ++port) {
      if (ports_in_use_.contains(static_cast<uint16_t>(port))) continue;
      if (BindTcpService(service, static_cast<uint16_t>(port)).ok()) return tcp_ports_[service];
    }
  }
  if (granted(0)) {
    if (absl::Status s = BindTcpService(service, 0); !s.ok()) {
      return absl::UnavailableError(s.message());
    }
    return tcp_ports_[service];
  }
  return absl::PermissionDeniedError(
      StrCat("no port is granted to this credential for service ", service));
}

void Relay::AcceptTcpClient(uv_stream_t* server, const std::string& service, uint16_t port) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(server);
  if (!client.ok()) return;
  CounterOf("rdv_tcp_connections_total", "Connections accepted on tcp service ports").Inc();
  RouteResult route = directory_->RouteService(link::TCP, service);
  if (route.outcome != RouteResult::Outcome::kFound) {
    CounterOf("rdv_tcp_no_agent_total", "tcp clients closed because no agent serves the port")
        .Inc();
    (*client)->Close();
    return;
  }
  auto* carrier = static_cast<AgentLink*>(route.carrier);
  auto session = std::make_unique<TcpClientSession>(*this, std::move(*client), *carrier,
                                                    route.service, port);
  TcpClientSession* raw = session.get();
  Adopt(std::move(session));
  if (!raw->Start()) {
    CounterOf("rdv_tcp_no_agent_total", "tcp clients closed because no agent serves the port")
        .Inc();
    Finish(raw);
  }
}

std::vector<std::string> Relay::RoutesFor(const link::ServiceSpec& service,
                                          const std::string& alias) {
  std::vector<std::string> routes;
  if (service.kind() == link::HTTP) {
    routes.push_back(StrCat("http://", service.name(), ":", http_port_, "/"));
    if (config_.http && !config_.http->zone.empty() && !alias.empty()) {
      routes.push_back(StrCat("http://", alias, ".", config_.http->zone, ":", http_port_,
                                    "/"));
    }
  } else {
    routes.push_back(StrCat("tcp://", config_.tcp.bind.empty() ? "" : config_.tcp.bind[0],
                                  ":", service.port()));
  }
  return routes;
}

void Relay::Shutdown() {
  if (shutting_down_) return;
  shutting_down_ = true;
  spdlog::info("shutting down: {} agent links, {} client sessions", links_.size(),
               sessions_.size());
  for (auto& listener : listeners_) listener->Close();
  std::vector<AgentLink*> links;
  for (auto& [raw, link] : links_) links.push_back(raw);
  for (AgentLink* link : links) link->GoAway("relay shutting down");
  for (AgentLink* link : links) link->Close(absl::CancelledError("relay shutting down"));
  sessions_.clear();
  links_.clear();
  tasks_.Close();
}

}  // namespace rdv
