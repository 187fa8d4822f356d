// One client on the proxy entrypoint, from its first byte until its destination is known:
// 1. sniff the protocol (first byte 0x05: SOCKS5; "CONNECT ": HTTP CONNECT; else HTTP forward);
// 2. negotiate (SOCKS5 greeting, credentials, request / CONNECT head), bounded by head_timeout;
// 3. route name:port (RouteProxyDestination) and pass the client on: to an HttpSession (http
//    services, and absolute-form requests) or to a ProxyTunnel (tls and tcp services).
#include "relay/proxy_entrypoint.h"

#include <arpa/inet.h>
#include <uv.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "common/auth.h"
#include "common/socks5.h"
#include "common/str_cat.h"
#include "relay/http_codec.h"
#include "relay/http_session.h"
#include "relay/proxy_auth.h"
#include "relay/proxy_tunnel.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr std::string_view kConnectPrefix = "CONNECT ";
constexpr size_t kMaxConnectHeadBytes = 16384;

bool IsAddressLiteral(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

// "name:port" / "[v6]:port" of a CONNECT request.
bool SplitAuthority(std::string_view authority, std::string& host, uint16_t& port) {
  size_t colon = authority.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view name = authority.substr(0, colon);
  if (name.front() == '[') {
    if (name.size() < 3 || name.back() != ']') return false;
    name = name.substr(1, name.size() - 2);
  }
  uint32_t value = 0;
  std::string_view digits = authority.substr(colon + 1);
  if (digits.empty() || digits.size() > 5 ||
      !std::all_of(digits.begin(), digits.end(),
                   [](char c) { return absl::ascii_isdigit(static_cast<unsigned char>(c)); }) ||
      !absl::SimpleAtoi(AbslView(digits), &value) || value == 0 || value > 65535) {
    return false;
  }
  host.assign(name);
  port = static_cast<uint16_t>(value);
  return true;
}

class ProxySession : public RelaySession, public TcpConnection::Handler {
 public:
  ProxySession(RelayWorker& worker, std::unique_ptr<TcpConnection> client)
      : worker_(worker),
        client_(std::move(client)),
        users_(worker.config().proxy->users),
        timer_(new uv_timer_t) {
    uv_timer_init(worker.loop(), timer_);
    timer_->data = this;
  }
  ~ProxySession() override {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    if (client_ != nullptr) client_->Close();
  }

  void Start() {
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<ProxySession*>(t->data)->OnTimeout();
        },
        absl::ToInt64Milliseconds(worker_.config().proxy->head_timeout), 0);
    client_->Start(*this);
  }

  void OnRead(std::string_view data) override {
    if (done_) return;
    input_.append(data);
    Process();
  }
  void OnEof() override { Drop(); }
  void OnError(const absl::Status&) override { Drop(); }

 private:
  enum class Phase { kSniff, kSocksGreeting, kSocksCredentials, kSocksRequest, kConnectHead };

  void Process() {
    while (!done_ && !input_.empty()) {
      size_t before = input_.size();
      Phase phase = phase_;
      switch (phase_) {
        case Phase::kSniff:
          Sniff();
          break;
        case Phase::kSocksGreeting:
          SocksGreeting();
          break;
        case Phase::kSocksCredentials:
          SocksCredentials();
          break;
        case Phase::kSocksRequest:
          SocksRequest();
          break;
        case Phase::kConnectHead:
          ConnectHead();
          break;
      }
      if (!done_ && phase == phase_ && input_.size() == before) break;  // needs more bytes
    }
  }

  void Sniff() {
    if (static_cast<uint8_t>(input_[0]) == socks5::kVersion) {
      protocol_ = ProxyProtocol::kSocks5;
      phase_ = Phase::kSocksGreeting;
      NoteProxyRequest(protocol_);
      return;
    }
    size_t common = std::min(input_.size(), kConnectPrefix.size());
    if (std::string_view(input_).substr(0, common) == kConnectPrefix.substr(0, common)) {
      if (common < kConnectPrefix.size()) return;  // could still be CONNECT
      protocol_ = ProxyProtocol::kHttpConnect;
      phase_ = Phase::kConnectHead;
      NoteProxyRequest(protocol_);
      return;
    }
    // Absolute-form requests: HttpSession frames, authorizes and rewrites each one.
    NoteProxyRequest(ProxyProtocol::kHttpForward);
    auto session = std::make_unique<HttpSession>(worker_, std::move(client_), /*chosen=*/nullptr,
                                                 /*proxy=*/true);
    HttpSession* raw = session.get();
    worker_.Adopt(std::move(session));
    std::string bytes = std::move(input_);
    Release();
    raw->Start(bytes);
  }

  void SocksGreeting() {
    socks5::Greeting greeting;
    absl::StatusOr<size_t> consumed = socks5::ParseGreeting(input_, greeting);
    if (!consumed.ok())
      return Refuse(ProxyRefusal::kMalformed, std::string(consumed.status().message()), "");
    if (*consumed == 0) return;
    input_.erase(0, *consumed);
    uint8_t method = socks5::ChooseMethod(greeting, !users_.empty());
    if (method == socks5::kMethodNoneAcceptable) {
      return Refuse(ProxyRefusal::kAuth, "no acceptable authentication method offered",
                    socks5::EncodeMethodSelection(method));
    }
    client_->Write(socks5::EncodeMethodSelection(method));
    phase_ = method == socks5::kMethodUserPass ? Phase::kSocksCredentials : Phase::kSocksRequest;
  }

  void SocksCredentials() {
    socks5::Credentials credentials;
    absl::StatusOr<size_t> consumed = socks5::ParseCredentials(input_, credentials);
    if (!consumed.ok()) {
      return Refuse(ProxyRefusal::kMalformed, std::string(consumed.status().message()),
                    socks5::EncodeAuthStatus(false));
    }
    if (*consumed == 0) return;
    input_.erase(0, *consumed);
    if (!ProxyUserMatches(users_, credentials.username, credentials.password)) {
      return Refuse(ProxyRefusal::kAuth, "wrong username or password",
                    socks5::EncodeAuthStatus(false));
    }
    client_->Write(socks5::EncodeAuthStatus(true));
    phase_ = Phase::kSocksRequest;
  }

  void SocksRequest() {
    socks5::Request request;
    absl::StatusOr<size_t> consumed = socks5::ParseRequest(input_, request);
    if (!consumed.ok()) {
      ProxyRefusal refusal = consumed.status().code() == absl::StatusCode::kUnimplemented
                                 ? ProxyRefusal::kAddressType
                                 : ProxyRefusal::kMalformed;
      return Refuse(refusal, std::string(consumed.status().message()),
                    ProxyRefusalReply(protocol_, refusal, ""));
    }
    if (*consumed == 0) return;
    input_.erase(0, *consumed);
    if (request.command != socks5::kCommandConnect) {
      return Refuse(ProxyRefusal::kUnsupportedCommand,
                    StrCat("command ", static_cast<int>(request.command), " is not supported"),
                    ProxyRefusalReply(protocol_, ProxyRefusal::kUnsupportedCommand, ""));
    }
    Dispatch(request.host, request.port);
  }

  void ConnectHead() {
    if (!framer_) {
      framer_ =
          std::make_unique<HttpRequestFramer>(HttpRequestFramer::Limits{kMaxConnectHeadBytes, 100});
    }
    absl::StatusOr<HttpRequestFramer::Event> event = framer_->Feed(input_);
    if (!event.ok()) {
      std::string detail(event.status().message());
      return Refuse(ProxyRefusal::kMalformed, detail,
                    ProxyRefusalReply(protocol_, ProxyRefusal::kMalformed, detail));
    }
    input_.erase(0, event->consumed);
    if (event->kind != HttpRequestFramer::EventKind::kHead) return;
    const HttpRequestHead& head = framer_->head();
    if (!ProxyAuthorizationAllows(users_, head.Header("Proxy-Authorization"))) {
      return Refuse(ProxyRefusal::kAuth, "missing or wrong Proxy-Authorization",
                    ProxyRefusalReply(protocol_, ProxyRefusal::kAuth, ""));
    }
    std::string host;
    uint16_t port = 0;
    if (head.method != "CONNECT" || !SplitAuthority(head.target, host, port)) {
      std::string detail = "CONNECT needs a target of the form name:port";
      return Refuse(ProxyRefusal::kMalformed, detail,
                    ProxyRefusalReply(protocol_, ProxyRefusal::kMalformed, detail));
    }
    Dispatch(host, port);
  }

  void Dispatch(const std::string& host, uint16_t port) {
    ProxyRoute route = RouteProxyDestination(worker_.config(), worker_.directory(), worker_.index(),
                                             host, port, HostOfAddress(client_->peer_address()));
    if (!route.refused && route.route.outcome == RouteResult::Outcome::kNoLink) {
      route.refused = true;
      route.refusal = ProxyRefusal::kNoAgent;
    }
    if (route.refused) {
      std::string detail =
          route.refusal == ProxyRefusal::kNotAllowed
              ? std::string("only virtual addresses (names) are served, not IP addresses")
          : route.refusal == ProxyRefusal::kNoAgent
              ? StrCat("no agent is connected for '", route.name, "'")
              : StrCat("no service is registered for '", route.name, "' port ", port);
      return Refuse(route.refusal, detail, ProxyRefusalReply(protocol_, route.refusal, detail));
    }
    std::string initial = std::move(input_);
    if (route.kind == link::HTTP) {
      // The tunnel's bytes are HTTP: serve them as the HTTP entrypoint would.
      client_->Write(ProxySuccessReply(protocol_));
      auto session = std::make_unique<HttpSession>(worker_, std::move(client_));
      HttpSession* raw = session.get();
      worker_.Adopt(std::move(session));
      Release();
      raw->Start(initial);
      return;
    }
    ProxyDestination destination;
    destination.protocol = protocol_;
    destination.kind = route.kind;
    destination.name = route.name;
    destination.entrypoint = protocol_ == ProxyProtocol::kSocks5 ? "proxy:socks5" : "proxy:connect";
    std::unique_ptr<TcpConnection> client = std::move(client_);
    Release();
    StartProxyTunnel(worker_, std::move(client), std::move(destination), route.route,
                     std::move(initial));
  }

  void OnTimeout() {
    if (done_) return;
    if (phase_ == Phase::kSniff && input_.empty()) {
      Drop();  // never said anything
      return;
    }
    std::string detail = "the proxy handshake did not complete in time";
    Refuse(ProxyRefusal::kTimeout, detail,
           ProxyRefusalReply(protocol_, ProxyRefusal::kTimeout, detail));
  }

  // Counts and logs the refusal, sends `reply` and closes.
  void Refuse(ProxyRefusal refusal, std::string_view detail, std::string reply) {
    NoteProxyRefusal(protocol_, refusal, client_->peer_address(), detail);
    std::unique_ptr<TcpConnection> client = std::move(client_);
    Release();
    CloseProxyClient(worker_, std::move(client), std::move(reply));
  }
  void Drop() {
    if (done_) return;
    client_->Close();
    Release();
  }

  // This session is done; whoever took client_ owns it now.
  void Release() {
    done_ = true;
    uv_timer_stop(timer_);
    worker_.Finish(this);
  }

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;
  const std::vector<ProxyUser>& users_;
  uv_timer_t* timer_;
  Phase phase_ = Phase::kSniff;
  ProxyProtocol protocol_ = ProxyProtocol::kHttpConnect;  // answers are HTTP until sniffed
  std::string input_;                                     // client bytes not yet consumed
  std::unique_ptr<HttpRequestFramer> framer_;
  bool done_ = false;
};

}  // namespace

ProxyRoute RouteProxyDestination(const RelayConfig& config, Directory& directory, int worker,
                                 std::string_view host, uint16_t port, std::string_view client_ip) {
  ProxyRoute out;
  std::string name(host);
  for (char& c : name) c = absl::ascii_tolower(static_cast<unsigned char>(c));
  if (!name.empty() && name.back() == '.') name.pop_back();
  if (IsAddressLiteral(name)) {
    out.refused = true;
    out.refusal = ProxyRefusal::kNotAllowed;
    out.name = name;
    return out;
  }
  if (!IsValidHostName(name) && !IsValidServiceName(name)) {
    out.refused = true;
    out.refusal = ProxyRefusal::kUnknownName;
    out.name = "(not a valid name)";
    return out;
  }
  out.name = name;
  bool tls_port =
      port == 443 ||
      (config.tls && std::any_of(config.tls->listen.begin(), config.tls->listen.end(),
                                 [port](const HostPort& address) { return address.port == port; }));
  out.kind = tls_port ? link::TLS : link::HTTP;
  out.route = directory.RouteHost(out.kind, name, worker, client_ip);
  if (out.route.outcome != RouteResult::Outcome::kUnknown) return out;
  if (IsValidServiceName(name)) {
    out.kind = link::TCP;
    out.route = directory.RouteService(link::TCP, name, worker, client_ip);
    if (out.route.outcome != RouteResult::Outcome::kUnknown) return out;
  }
  out.refused = true;
  out.refusal = ProxyRefusal::kUnknownName;
  return out;
}

void ServeProxyEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client) {
  auto session = std::make_unique<ProxySession>(worker, std::move(client));
  ProxySession* raw = session.get();
  worker.Adopt(std::move(session));
  raw->Start();
}

}  // namespace rdv
