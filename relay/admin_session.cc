#include "relay/admin_session.h"

#include "common/metrics.h"
#include "common/str_cat.h"

namespace rdv {

namespace {
constexpr uint64_t kAdminTimeoutMs = 10000;
}  // namespace

AdminSession::AdminSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client)
    : worker_(worker),
      client_(std::move(client)),
      framer_(HttpRequestFramer::Limits{8192, 50}),
      timer_(new uv_timer_t) {
  uv_timer_init(worker.loop(), timer_);
  timer_->data = this;
}

AdminSession::~AdminSession() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  client_->Close();
}

void AdminSession::Start() {
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<AdminSession*>(t->data)->Finish();
      },
      kAdminTimeoutMs, 0);
  client_->Start(*this);
}

void AdminSession::OnRead(std::string_view data) {
  if (responded_) return;
  absl::StatusOr<HttpRequestFramer::Event> event = framer_.Feed(data);
  if (!event.ok()) {
    CounterOf("rdv_protocol_errors_total", "Connections closed for malformed input",
              "listener=\"admin\"")
        .Inc();
    client_->Write(MakeErrorResponse(400, std::string(event.status().message())));
    responded_ = true;
    client_->Shutdown();
    return;
  }
  if (event->kind != HttpRequestFramer::EventKind::kHead) return;
  const HttpRequestHead& head = framer_.head();
  std::string path = head.target.substr(0, head.target.find('?'));
  if (head.method != "GET") {
    Respond(405, "text/plain", "only GET is served here\n");
  } else if (path == "/metrics") {
    Respond(200, "text/plain; version=0.0.4", Metrics::Global().RenderPrometheus());
  } else if (path == "/healthz") {
    Respond(200, "text/plain", "ok\n");
  } else {
    Respond(404, "text/plain", "not found: try /metrics or /healthz\n");
  }
}

void AdminSession::Respond(int code, std::string_view content_type, std::string_view body) {
  std::string_view reason = code == 200 ? "OK" : code == 404 ? "Not Found" : "Method Not Allowed";
  client_->Write(StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", content_type,
                        "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                        body));
  responded_ = true;
  client_->Shutdown();
}

void AdminSession::OnDrained() {}

void AdminSession::Finish() {
  if (finished_) return;
  finished_ = true;
  uv_timer_stop(timer_);
  client_->Close();
  worker_.Finish(this);
}

}  // namespace rdv
