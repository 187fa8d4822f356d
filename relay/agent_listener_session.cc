#include "relay/agent_listener_session.h"

#include <algorithm>
#include <utility>

#include "common/data_path.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/relay.h"
#include "relay/tunnel_data_path.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// The first byte of a data path request ("RDV-DATA/1 ..."); a link's is 0x16 (a TLS record).
constexpr char kDataPathFirstByte = 'R';

}  // namespace

AgentListenerSession::AgentListenerSession(RelayWorker& worker,
                                           std::unique_ptr<TcpConnection> connection)
    : worker_(worker), connection_(std::move(connection)), timer_(new uv_timer_t) {
  uv_timer_init(worker.loop(), timer_);
  timer_->data = this;
}

AgentListenerSession::~AgentListenerSession() {
  timer_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(timer_),
           [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  if (connection_) connection_->Close();
}

void AgentListenerSession::Start() {
  accepted_ms_ = uv_now(worker_.loop());
  auto handshake_ms = absl::ToInt64Milliseconds(worker_.config().agent_listener.handshake_timeout);
  uv_timer_start(
      timer_,
      [](uv_timer_t* t) {
        if (t->data) static_cast<AgentListenerSession*>(t->data)->OnTimeout();
      },
      static_cast<uint64_t>(handshake_ms), 0);
  connection_->Start(*this);
}

void AgentListenerSession::OnRead(std::string_view data) {
  if (state_ == State::kDone || data.empty()) return;
  if (state_ == State::kSniff) {
    if (data.front() != kDataPathFirstByte) {
      // A link: its TLS session reads these bytes first, then the socket.
      state_ = State::kDone;
      uv_timer_stop(timer_);
      connection_->PauseReading();
      connection_->Unread(std::string(data));
      worker_.StartAgentLink(std::move(connection_), accepted_ms_);
      Done();
      return;
    }
    state_ = State::kRequest;
    // The request line is due within the request timeout of the accept.
    uint64_t elapsed = uv_now(worker_.loop()) - accepted_ms_;
    auto request_ms = static_cast<uint64_t>(
        absl::ToInt64Milliseconds(worker_.relay().data_paths().request_timeout()));
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<AgentListenerSession*>(t->data)->OnTimeout();
        },
        request_ms - std::min(elapsed, request_ms), 0);
  }
  buffer_.append(data);
  ReadRequest();
}

void AgentListenerSession::ReadRequest() {
  absl::StatusOr<size_t> line_end = DataPathLineEnd(buffer_);
  if (!line_end.ok()) {
    Refuse("bad_request", std::string(line_end.status().message()));
    return;
  }
  if (*line_end == 0) return;  // not a whole line yet
  absl::StatusOr<std::string> token =
      ParseDataPathRequest(std::string_view(buffer_).substr(0, *line_end));
  if (!token.ok()) {
    Refuse("bad_request", std::string(token.status().message()));
    return;
  }
  state_ = State::kDone;
  uv_timer_stop(timer_);
  connection_->PauseReading();
  std::string early = buffer_.substr(*line_end);
  PresentDataPathToken(worker_, std::move(connection_), *std::move(token), std::move(early));
  Done();
}

void AgentListenerSession::OnEof() {
  if (state_ == State::kSniff) {
    FailSilent("closed before sending anything");
  } else if (state_ == State::kRequest) {
    Refuse("bad_request", "closed before the request line ended");
  }
}

void AgentListenerSession::OnError(const absl::Status& status) {
  if (state_ == State::kSniff) {
    FailSilent(std::string(status.message()));
    return;
  }
  if (state_ != State::kRequest) return;
  state_ = State::kDone;
  CounterOf("rdv_tunnel_data_paths_total",
            "Tunnel data path connections refused, by reason, and pairs spliced",
            "result=\"bad_request\"")
      .Inc();
  spdlog::info("data path from {} failed before its request line: {}", connection_->peer_address(),
               status.message());
  connection_->Close();
  Done();
}

void AgentListenerSession::OnTimeout() {
  if (state_ == State::kSniff) {
    FailSilent("did not finish in time");
  } else if (state_ == State::kRequest) {
    Refuse("request_timeout", "no request line in time");
  }
}

void AgentListenerSession::FailSilent(std::string_view why) {
  // What an AgentLink counts for a TLS handshake that never got a byte.
  state_ = State::kDone;
  CounterOf("rdv_tls_handshake_errors_total", "TLS handshakes that failed", "listener=\"agent\"")
      .Inc();
  spdlog::info("agent listener: TLS handshake with {} failed: {}", connection_->peer_address(),
               why);
  connection_->Close();
  Done();
}

void AgentListenerSession::Refuse(std::string_view result, std::string_view reason) {
  state_ = State::kDone;
  RefuseDataPath(*connection_, result, reason);
  Done();
}

void AgentListenerSession::Done() {
  state_ = State::kDone;
  uv_timer_stop(timer_);
  worker_.Finish(this);
}

}  // namespace rdv
