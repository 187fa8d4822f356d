#include "common/admin_http.h"

#include "common/metrics.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr size_t kMaxMethodLength = 16;

Counter& MalformedRequests() {
  static Counter& counter = CounterOf(
      "rdv_protocol_errors_total", "Connections closed for malformed input", "listener=\"admin\"");
  return counter;
}

std::string_view ReasonPhrase(int code) {
  switch (code) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 503:
      return "Service Unavailable";
    default:
      return code < 400 ? "OK" : code < 500 ? "Bad Request" : "Internal Server Error";
  }
}

bool IsTokenChar(char c) {
  static constexpr std::string_view kSeparators = "()<>@,;:\\\"/[]?={} \t";
  return c > 0x20 && c < 0x7f && kSeparators.find(c) == std::string_view::npos;
}

// The method of a request line so far: upper-case letters, then a space.
absl::Status CheckMethodPrefix(std::string_view bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] == ' ' && i > 0) return absl::OkStatus();
    if (bytes[i] < 'A' || bytes[i] > 'Z' || i >= kMaxMethodLength) {
      return absl::InvalidArgumentError("not an HTTP request");
    }
  }
  return absl::OkStatus();
}

}  // namespace

AdminResponse MetricsResponse() {
  return AdminResponse{200, "text/plain; version=0.0.4", Metrics::Global().RenderPrometheus()};
}

absl::StatusOr<std::optional<AdminRequest>> ParseAdminRequest(std::string_view head) {
  if (absl::Status s = CheckMethodPrefix(head); !s.ok()) return s;
  size_t line_end = head.find('\n');
  if (line_end == std::string_view::npos) {
    if (head.size() > kMaxAdminHead) return absl::InvalidArgumentError("request line too long");
    return std::nullopt;
  }
  std::string_view line = head.substr(0, line_end);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t first_space = line.find(' ');
  size_t last_space = line.rfind(' ');
  if (first_space == last_space) return absl::InvalidArgumentError("malformed request line");
  std::string_view target = line.substr(first_space + 1, last_space - first_space - 1);
  std::string_view version = line.substr(last_space + 1);
  if (target.empty() || target.front() != '/' || target.find(' ') != std::string_view::npos) {
    return absl::InvalidArgumentError("malformed request target");
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    return absl::InvalidArgumentError("unsupported HTTP version");
  }
  // Header lines up to the empty line: each "name: value" with a token name.
  size_t position = line_end + 1;
  while (true) {
    size_t end = head.find('\n', position);
    if (end == std::string_view::npos) {
      if (head.size() > kMaxAdminHead) return absl::InvalidArgumentError("request head too large");
      return std::nullopt;
    }
    std::string_view header = head.substr(position, end - position);
    if (!header.empty() && header.back() == '\r') header.remove_suffix(1);
    if (header.empty()) break;
    size_t colon = header.find(':');
    if (colon == 0 || colon == std::string_view::npos) {
      return absl::InvalidArgumentError("malformed header line");
    }
    for (char c : header.substr(0, colon)) {
      if (!IsTokenChar(c)) return absl::InvalidArgumentError("malformed header name");
    }
    position = end + 1;
  }
  if (position > kMaxAdminHead) return absl::InvalidArgumentError("request head too large");
  AdminRequest request;
  request.method = std::string(line.substr(0, first_space));
  request.path = std::string(target.substr(0, target.find('?')));
  return request;
}

// ---- AdminHttpSession ----

AdminHttpSession::AdminHttpSession(uv_loop_t* loop, std::unique_ptr<TcpConnection> client,
                                   AdminRouter router,
                                   std::function<void(AdminHttpSession&)> on_finished)
    : client_(std::move(client)),
      router_(std::move(router)),
      on_finished_(std::move(on_finished)),
      timer_(new uv_timer_t) {
  uv_timer_init(loop, timer_);
  timer_->data = this;
}

AdminHttpSession::~AdminHttpSession() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  client_->Close();
}

void AdminHttpSession::Start() {
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<AdminHttpSession*>(t->data)->Finish();
      },
      kAdminTimeoutMs, 0);
  client_->Start(*this);
}

void AdminHttpSession::OnRead(std::string_view data) {
  if (responded_ || finished_) return;
  head_.append(data);
  absl::StatusOr<std::optional<AdminRequest>> request = ParseAdminRequest(head_);
  if (!request.ok()) {
    MalformedRequests().Inc();
    spdlog::debug("admin {}: {}", client_->peer_address(), request.status().message());
    Respond(400, "text/plain", StrCat(request.status().message(), "\n"));
    return;
  }
  if (!request->has_value()) return;
  const AdminRequest& got = **request;
  if (got.method != "GET") {
    Respond(405, "text/plain", "only GET is served here\n");
    return;
  }
  std::optional<AdminResponse> response = router_(got.path);
  if (!response) {
    Respond(404, "text/plain", StrCat("not found: ", got.path, "\n"));
    return;
  }
  Respond(response->code, response->content_type, response->body);
}

void AdminHttpSession::OnEof() {
  // A connection that ends inside its request head sent something that is not a request.
  if (!responded_ && !head_.empty()) MalformedRequests().Inc();
  Finish();
}

void AdminHttpSession::Respond(int code, std::string_view content_type, std::string_view body) {
  client_->Write(StrCat("HTTP/1.1 ", code, " ", ReasonPhrase(code),
                        "\r\nContent-Type: ", content_type, "\r\nContent-Length: ", body.size(),
                        "\r\nConnection: close\r\n\r\n", body));
  responded_ = true;
  head_.clear();
  client_->Shutdown();
}

void AdminHttpSession::Finish() {
  if (finished_) return;
  finished_ = true;
  uv_timer_stop(timer_);
  client_->Close();
  if (on_finished_) on_finished_(*this);
}

// ---- AdminServer ----

AdminServer::AdminServer(LoopTasks& tasks, AdminRouter router)
    : tasks_(tasks), router_(std::move(router)), alive_(std::make_shared<AdminServer*>(this)) {}

AdminServer::~AdminServer() { Close(); }

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Create(uv_loop_t* loop, LoopTasks& tasks,
                                                                 const std::string& host,
                                                                 uint16_t port,
                                                                 AdminRouter router) {
  std::unique_ptr<AdminServer> server(new AdminServer(tasks, std::move(router)));
  AdminServer* raw = server.get();
  absl::StatusOr<std::unique_ptr<TcpListener>> listener = TcpListener::Create(
      loop, host, port, [raw](uv_stream_t* listening) { raw->Accept(listening); });
  if (!listener.ok()) return listener.status();
  server->listener_ = *std::move(listener);
  return server;
}

void AdminServer::Accept(uv_stream_t* listening) {
  absl::StatusOr<std::unique_ptr<TcpConnection>> client = TcpConnection::Accept(listening);
  if (!client.ok()) return;
  std::weak_ptr<AdminServer*> alive = alive_;
  uv_loop_t* loop = (*client)->loop();
  auto session = std::make_unique<AdminHttpSession>(loop, *std::move(client), router_,
                                                    [this, alive](AdminHttpSession& done) {
                                                      AdminHttpSession* raw = &done;
                                                      tasks_.Defer([this, alive, raw] {
                                                        if (!alive.expired()) sessions_.erase(raw);
                                                      });
                                                    });
  AdminHttpSession* raw = session.get();
  sessions_.emplace(raw, std::move(session));
  raw->Start();
}

void AdminServer::Close() {
  if (listener_) listener_->Close();
  sessions_.clear();
  alive_.reset();  // sessions that finished before are gone already: skip their erasures
  alive_ = std::make_shared<AdminServer*>(this);
}

}  // namespace rdv
