#include "relay/proxy_header_session.h"

#include "common/metrics.h"
#include "common/proxy_protocol.h"
#include "common/str_cat.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr uint64_t kHeaderTimeoutMs = 10000;

Counter& Refused(std::string_view reason) {
  return CounterOf("rdv_proxy_header_refused_total",
                   "Connections from proxy_protocol_from networks closed without a usable PROXY "
                   "header",
                   StrCat("reason=\"", reason, "\""));
}

}  // namespace

ProxyHeaderSession::ProxyHeaderSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                                       Next next)
    : worker_(worker), client_(std::move(client)), next_(std::move(next)), timer_(new uv_timer_t) {
  uv_timer_init(worker.loop(), timer_);
  timer_->data = this;
}

ProxyHeaderSession::~ProxyHeaderSession() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (client_) client_->Close();
}

void ProxyHeaderSession::Start() {
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data)
          static_cast<ProxyHeaderSession*>(t->data)->Fail("no PROXY header in time", "timeout");
      },
      kHeaderTimeoutMs, 0);
  client_->Start(*this);
}

void ProxyHeaderSession::OnRead(std::string_view data) {
  if (done_) return;
  buffer_.append(data);
  absl::StatusOr<std::optional<ProxyHeader>> header = ParseProxyHeader(buffer_);
  if (!header.ok()) {
    Fail(std::string(header.status().message()), "malformed");
    return;
  }
  if (!header->has_value()) return;  // the header is not complete yet
  if (!(*header)->local) {
    if (absl::Status s = client_->OverridePeer((*header)->source); !s.ok()) {
      Fail(std::string(s.message()), "malformed");
      return;
    }
  }
  done_ = true;
  uv_timer_stop(timer_);
  CounterOf("rdv_proxy_headers_total", "PROXY headers accepted from load balancers").Inc();
  client_->PauseReading();
  client_->Unread(buffer_.substr((*header)->length));
  next_(std::move(client_));
  worker_.Finish(this);
}

void ProxyHeaderSession::Fail(std::string_view why, std::string_view reason) {
  if (done_) return;
  done_ = true;
  Refused(reason).Inc();
  spdlog::info("{}: refused: {}", client_->peer_address(), why);
  uv_timer_stop(timer_);
  client_->Close();
  worker_.Finish(this);
}

}  // namespace rdv
