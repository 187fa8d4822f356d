#include "relay/http_session.h"

#include <array>
#include <vector>

#include "common/auth.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/agent_link.h"
#include "relay/http_proxy_request.h"
#include "relay/relay.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr size_t kClientHighWatermark = 256 * 1024;

Counter& HttpErrors(int code) {
  return CounterOf("rdv_http_errors_total", "Responses the relay generated itself",
                   StrCat("code=\"", code, "\""));
}

const HttpEntrypointConfig& HttpConfigOf(const RelayConfig& config) {
  static const HttpEntrypointConfig kDefaults;
  return config.http ? *config.http : kDefaults;
}

}  // namespace

HttpSession::HttpSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                         const StreamCarrier* chosen, bool proxy)
    : worker_(worker),
      client_(std::move(client)),
      proxy_(proxy),
      http_config_(HttpConfigOf(worker.config())),
      framer_(HttpRequestFramer::Limits{http_config_.max_head_bytes, 100}),
      chosen_(chosen),
      timer_(new uv_timer_t) {
  uv_timer_init(worker.loop(), timer_);
  timer_->data = this;
}

HttpSession::~HttpSession() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset("client went away");
  }
  client_->Close();
}

bool HttpSession::HoldsDrain() const {
  if (finished_) return false;
  if (!input_.empty() || head_pending_ || head_bytes_seen_) return true;
  if (responses_ && (responses_->tunneling() || responses_->pending_responses() > 0)) return true;
  return client_ != nullptr && client_->queued_bytes() > 0;
}

bool HttpSession::CloseIfIdle() {
  if (finished_ || HoldsDrain()) return false;
  Finish();
  return true;
}

void HttpSession::Start(std::string_view initial) {
  ArmTimer(absl::ToInt64Milliseconds(http_config_.idle_timeout));
  client_->Start(*this);
  if (!initial.empty()) OnRead(initial);
}

void HttpSession::ArmTimer(uint64_t ms) {
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<HttpSession*>(t->data)->OnTimer();
      },
      ms, 0);
}

void HttpSession::OnTimer() {
  if (finished_) return;
  if (closing_) {
    Finish();  // the client never closed its side after our response
    return;
  }
  if (framer_.tunneling()) return;
  if (head_bytes_seen_) {
    SendError(408, "the request head did not arrive in time");
    return;
  }
  if (stream_ != nullptr && responses_ && responses_->pending_responses() > 0) {
    return;  // waiting on the target, not the client
  }
  CloseWhenFlushed();  // idle keep-alive connection
}

void HttpSession::OnRead(std::string_view data) {
  if (closing_ || finished_) return;  // lingering: discard
  if (framer_.tunneling() && stream_ != nullptr && input_.empty()) {
    if (!stream_->Write(data)) {
      client_->PauseReading();
      reading_paused_ = true;
    }
    return;
  }
  if (!head_bytes_seen_ && !head_pending_ && stream_ == nullptr) {
    ArmTimer(absl::ToInt64Milliseconds(http_config_.head_timeout));
  }
  input_.append(data);
  Process();
}

void HttpSession::Process() {
  while (!closing_ && !finished_) {
    if (head_pending_) {
      if (!RouteHead()) break;
      continue;
    }
    if (input_.empty()) break;
    absl::StatusOr<HttpRequestFramer::Event> event = framer_.Feed(input_);
    if (!event.ok()) {
      bool too_large = event.status().code() == absl::StatusCode::kResourceExhausted;
      CounterOf("rdv_protocol_errors_total", "Connections closed for malformed input",
                "listener=\"http\"")
          .Inc();
      spdlog::info("http {}: bad request: {}", client_->peer_address(), event.status().message());
      SendError(too_large ? 431 : 400, std::string(event.status().message()));
      break;
    }
    HttpRequestFramer::EventKind kind = event->kind;
    if (kind == HttpRequestFramer::EventKind::kBody ||
        kind == HttpRequestFramer::EventKind::kTunnel) {
      if (stream_ != nullptr && !stream_->Write(event->data)) {
        client_->PauseReading();
        reading_paused_ = true;
      }
    }
    input_.erase(0, event->consumed);
    if (kind == HttpRequestFramer::EventKind::kNeedMore) {
      if (event->consumed > 0) head_bytes_seen_ = true;
      break;
    }
    if (kind == HttpRequestFramer::EventKind::kHead) {
      static Counter& requests = CounterOf("rdv_http_requests_total", "HTTP requests received");
      requests.Inc();
      head_bytes_seen_ = false;
      head_pending_ = true;
    } else if (kind == HttpRequestFramer::EventKind::kMessageEnd && !framer_.head().keep_alive &&
               !framer_.head().upgrade) {
      // The client said this is its last request: whatever follows is not ours to parse.
      close_after_response_ = true;
      input_.clear();
      client_->PauseReading();
      reading_paused_ = true;
      break;
    }
  }
}

bool HttpSession::RouteHead() {
  std::optional<HttpRequestHead> proxied;
  if (proxy_) {
    std::string refusal;
    proxied = AdmitProxiedRequest(framer_.head(), worker_.config().proxy->users,
                                  client_->peer_address(), refusal);
    if (!proxied) {
      head_pending_ = false;
      client_->Write(refusal);
      CloseWhenFlushed();
      return false;
    }
  }
  const HttpRequestHead& head = proxied ? *proxied : framer_.head();
  // `/TUNNEL:<name>/...` routes by <name>, whatever relay host name the client used (not on
  // the proxy entrypoint, where the path belongs to the named host).
  std::optional<TunnelTarget> tunnel = proxy_ ? std::nullopt : ParseTunnelTarget(head.target);
  std::string host = tunnel ? tunnel->name : NormalizeHost(head.host);
  // A request for the service this connection's stream serves stays on it; only a new stream
  // asks the balance policy for a member.
  RouteResult route;
  if (stream_ != nullptr) route = worker_.directory().Lookup(link::HTTP, host);
  bool same_service = stream_ != nullptr && route.outcome != RouteResult::Outcome::kUnknown &&
                      route.service.name() == stream_service_ &&
                      tunnel.has_value() == (tunnel_stage_ != nullptr) &&
                      !(tunnel && tunnel->target.empty());
  // A head for another service waits until the current stream has answered everything, so
  // responses stay in request order.
  if (!same_service && stream_ != nullptr && responses_ && responses_->pending_responses() > 0) {
    client_->PauseReading();
    reading_paused_ = true;
    return false;
  }
  head_pending_ = false;
  if (tunnel && (host.empty() ||
                 (tunnel->target.empty() && worker_.directory().Lookup(link::HTTP, host).outcome ==
                                                RouteResult::Outcome::kUnknown))) {
    SendError(404, StrCat("no service is registered for '/TUNNEL:", host, "/'"));
    return false;
  }
  if (tunnel && tunnel->target.empty()) {  // "/TUNNEL:name": relative links need the slash
    static Counter& redirects = CounterOf("rdv_http_tunnel_redirects_total",
                                          "Redirects from /TUNNEL:<name> to /TUNNEL:<name>/");
    redirects.Inc();
    client_->Write(StrCat("HTTP/1.1 301 Moved Permanently\r\nLocation: ", tunnel->redirect,
                          "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    CloseWhenFlushed();
    return false;
  }
  if (host.empty()) {
    SendError(400, "the request has no Host header");
    return false;
  }
  if (!same_service) {
    std::string client_ip = HostOfAddress(client_->peer_address());
    route = chosen_ != nullptr
                ? worker_.directory().Reroute(link::HTTP, host, worker_.index(), client_ip, chosen_)
                : worker_.directory().RouteHttp(host, worker_.index(), client_ip);
    chosen_ = nullptr;
    if (route.outcome == RouteResult::Outcome::kUnknown) {
      SendError(404, tunnel ? StrCat("no service is registered for '/TUNNEL:", host, "/'")
                            : StrCat("no service is registered for host '", host, "'"));
      return false;
    }
    if (route.outcome == RouteResult::Outcome::kNoLink && route.unhealthy) {
      SendError(503, StrCat("every agent serving '", route.service.name(),
                            "' reports its target unhealthy"));
      return false;
    }
    if (route.outcome == RouteResult::Outcome::kNoLink) {
      SendError(503, StrCat("no agent is connected for '", route.service.name(), "'"));
      return false;
    }
    DropStream();
    if (route.worker != worker_.index()) {
      HandOff(route.worker, framer_.head(), route.carrier);
      return false;
    }
    stream_ =
        static_cast<AgentLink*>(route.carrier)->OpenStream(route.service, *client_, "http", *this);
    if (stream_ == nullptr) {
      SendError(503,
                StrCat("the agent link for '", route.service.name(), "' cannot take streams now"));
      return false;
    }
    stream_service_ = route.service.name();
    responses_.emplace();
    response_bytes_for_current_ = false;
    tunnel_stage_.reset();
    if (tunnel) tunnel_stage_ = std::make_unique<TunnelResponseStage>();
  }
  std::string forwarded_for = std::string(head.Header("X-Forwarded-For"));
  std::string client_ip = HostOfAddress(client_->peer_address());
  forwarded_for = forwarded_for.empty() ? client_ip : StrCat(forwarded_for, ", ", client_ip);
  std::array<std::string_view, 3> drop = {"X-Forwarded-For", "X-Forwarded-Proto",
                                          "X-Forwarded-Host"};
  std::array<HttpHeader, 3> extra = {HttpHeader{"X-Forwarded-For", forwarded_for},
                                     HttpHeader{"X-Forwarded-Proto", "http"},
                                     HttpHeader{"X-Forwarded-Host", head.host}};
  responses_->ExpectResponseTo(head.method);
  uv_timer_stop(timer_);
  std::string head_bytes =
      tunnel ? TunnelledHead(head, *tunnel, forwarded_for, route.service.rewrite_html())
             : SerializeRequestHead(head, drop, extra);
  if (!stream_->Write(head_bytes)) {
    client_->PauseReading();
    reading_paused_ = true;
  }
  return true;
}

std::string HttpSession::TunnelledHead(const HttpRequestHead& head, const TunnelTarget& tunnel,
                                       const std::string& forwarded_for, bool rewrite_html) {
  static Counter& tunnelled =
      CounterOf("rdv_http_tunnel_requests_total", "Requests for /TUNNEL:<name>/ paths");
  tunnelled.Inc();
  TunnelResponseStage::Request request;
  request.method = head.method;
  request.tunnel = MakeTunnelContext(tunnel.name, tunnel.target);
  request.rewrite_html = rewrite_html;
  request.client_http10 = head.version_minor == 0;
  std::vector<HttpHeader> extra = {HttpHeader{"Host", tunnel.name},
                                   HttpHeader{"X-Forwarded-For", forwarded_for},
                                   HttpHeader{"X-Forwarded-Proto", "http"},
                                   HttpHeader{"X-Forwarded-Prefix", request.tunnel.prefix}};
  if (!head.host.empty()) extra.push_back({"X-Forwarded-Host", head.host});  // none from HTTP/1.0
  // The browser's Referer and Origin name the page inside the prefix on the relay's host; the
  // service expects its own.
  if (std::string_view referer = head.Header("Referer"); !referer.empty()) {
    extra.push_back({"Referer", RewriteRefererOutOfTunnel(referer, head.host, tunnel.name)});
  }
  if (std::string_view origin = head.Header("Origin"); !origin.empty()) {
    extra.push_back({"Origin", RewriteOriginOutOfTunnel(origin, head.host, tunnel.name)});
  }
  std::vector<std::string_view> drop = {
      "Host",    "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix",
      "Referer", "Origin"};
  // Links can only be rewritten in bodies the relay can read.
  if (rewrite_html) drop.push_back("Accept-Encoding");
  HttpRequestHead rewritten = head;
  rewritten.target = tunnel.target;
  tunnel_stage_->ExpectResponseTo(std::move(request));
  return SerializeRequestHead(rewritten, drop, extra);
}

void HttpSession::HandOff(int worker, const HttpRequestHead& head, const StreamCarrier* chosen) {
  // The new worker parses the request again from its original head and whatever followed.
  std::string bytes = SerializeRequestHead(head, {}, {});
  bytes.append(input_);
  std::string peer = client_->peer_address();
  absl::StatusOr<int> fd = client_->DetachFd();
  finished_ = true;
  uv_timer_stop(timer_);
  worker_.Finish(this);
  if (!fd.ok()) return;
  static Counter& handoffs =
      CounterOf("rdv_worker_handoffs_total", "Client connections moved to another worker loop");
  handoffs.Inc();
  Handoff handoff;
  handoff.kind = Handoff::Kind::kHttp;
  handoff.http_proxy = proxy_;
  handoff.fd = *fd;
  handoff.bytes = std::move(bytes);
  handoff.chosen = chosen;
  handoff.peer_address = std::move(peer);
  worker_.relay().worker(worker).HandOff(std::move(handoff));
}

void HttpSession::DropStream() {
  if (stream_ == nullptr) return;
  Stream* stream = stream_;
  stream_ = nullptr;
  responses_.reset();
  tunnel_stage_.reset();
  stream->Reset("request routed to another service");
}

void HttpSession::OnStreamData(Stream& stream, std::string_view data) {
  if (&stream != stream_) return;
  if (responses_ && !responses_->tunneling()) {
    absl::StatusOr<HttpResponseFramer::Progress> progress = responses_->Feed(data);
    if (!progress.ok()) {
      CounterOf("rdv_upstream_errors_total", "Malformed responses from targets").Inc();
      spdlog::info("http {}: malformed response from {}: {}", client_->peer_address(),
                   stream_service_, progress.status().message());
      if (!response_bytes_for_current_) {
        SendError(502, "the target sent a malformed response");
      } else {
        CloseWhenFlushed();
      }
      return;
    }
    response_bytes_for_current_ = true;
    if (progress->responses_completed > 0) response_bytes_for_current_ = false;
    if (progress->connection_close) close_after_response_ = true;
  }
  WriteToClient(data, false);
  unreturned_credit_ += data.size();
  ReturnCredit();
  if (responses_ && !responses_->tunneling() && responses_->pending_responses() == 0) {
    if (close_after_response_) {
      CloseWhenFlushed();
      return;
    }
    ArmTimer(absl::ToInt64Milliseconds(http_config_.idle_timeout));
    if (reading_paused_ && head_pending_) {
      reading_paused_ = false;
      client_->ResumeReading();
      Process();
    }
  }
}

void HttpSession::WriteToClient(std::string_view data, bool end_stream) {
  if (tunnel_stage_ == nullptr) {
    if (!data.empty()) client_->Write(data);
    return;
  }
  static Counter& html_rewritten = CounterOf("rdv_http_tunnel_html_rewritten_total",
                                             "HTML bodies whose links were mapped into /TUNNEL:");
  const int rewritten_before = tunnel_stage_->bodies_rewritten();
  std::string out;
  tunnel_stage_->OnData(data, end_stream, out);
  if (tunnel_stage_->bodies_rewritten() != rewritten_before) html_rewritten.Inc();
  if (tunnel_stage_->close_after_response()) close_after_response_ = true;
  if (!out.empty()) client_->Write(out);
}

void HttpSession::ReturnCredit() {
  if (stream_ == nullptr || unreturned_credit_ == 0) return;
  if (client_->queued_bytes() >= kClientHighWatermark) return;
  size_t n = unreturned_credit_;
  unreturned_credit_ = 0;
  stream_->Consumed(n);
}

void HttpSession::OnStreamEnd(Stream& stream) {
  if (&stream != stream_) return;
  // The target closed its side: responses delimited by close end here.
  if (responses_ && !responses_->tunneling()) {
    absl::StatusOr<HttpResponseFramer::Progress> progress = responses_->FinishOnEof();
    if ((!progress.ok() || responses_->pending_responses() > 0) && !response_bytes_for_current_) {
      SendError(502, "the target closed the connection without a response");
      return;
    }
  }
  WriteToClient({}, true);  // a response read until close may end here
  CloseWhenFlushed();
}

void HttpSession::OnStreamWritable(Stream& stream) {
  if (&stream != stream_ || !reading_paused_ || head_pending_) return;
  reading_paused_ = false;
  client_->ResumeReading();
}

void HttpSession::OnStreamClosed(Stream& stream, const absl::Status& status) {
  if (&stream != stream_) return;
  stream_ = nullptr;
  if (status.ok()) {
    CloseWhenFlushed();
    return;
  }
  bool awaiting = responses_ && responses_->pending_responses() > 0 && !responses_->tunneling();
  if (awaiting && !response_bytes_for_current_) {
    CounterOf("rdv_streams_refused_total", "Streams refused").Inc();
    spdlog::info("http {}: {} unreachable: {}", client_->peer_address(), stream_service_,
                 status.message());
    SendError(502,
              StrCat("the target of '", stream_service_, "' is unreachable: ", status.message()));
    return;
  }
  CloseWhenFlushed();
}

void HttpSession::SendError(int code, std::string_view detail) {
  HttpErrors(code).Inc();
  client_->Write(MakeErrorResponse(code, detail));
  CloseWhenFlushed();
}

void HttpSession::OnEof() {
  client_eof_ = true;
  if (closing_) {
    Finish();
    return;
  }
  if (stream_ != nullptr &&
      (framer_.tunneling() || (responses_ && responses_->pending_responses() > 0))) {
    stream_->End();
    return;
  }
  CloseWhenFlushed();
}

void HttpSession::OnError(const absl::Status& status) { Finish(); }

void HttpSession::OnDrained() {
  if (closing_ && client_eof_ && client_->queued_bytes() == 0) {
    Finish();
    return;
  }
  ReturnCredit();
}

// Lingering close: half-close after the last response byte and discard what the client still
// sends until it closes (or a short grace ends), so that closing with unread input does not
// turn into a RST that destroys the response in flight.
void HttpSession::CloseWhenFlushed() {
  if (closing_ || finished_) return;
  closing_ = true;
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset("client connection closing");
  }
  if (client_eof_) {
    client_->Shutdown();
    if (client_->queued_bytes() == 0) {
      Finish();
      return;
    }
  }
  client_->Shutdown();
  client_->ResumeReading();
  ArmTimer(2000);
}

void HttpSession::Finish() {
  if (finished_) return;
  finished_ = true;
  uv_timer_stop(timer_);
  if (stream_ != nullptr) {
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset("client connection closed");
  }
  client_->Close();
  worker_.Finish(this);
}

}  // namespace rdv
