// One client connection on the tls entrypoint, until it is routed.
//
// 1. read until the ClientHello parser decides (bounded size, `hello_timeout` for all of it)
//                                                   -> closed: not_tls / malformed / too_large /
//                                                      timeout / incomplete
// 2. the ClientHello names a server (SNI)           -> alert unrecognized_name: no_sni / bad_sni
// 3. route the name among `tls` services             -> alert unrecognized_name: unknown_name;
//                                                      alert internal_error: no_agent
// 4. splice the connection onto a stream to the agent, the bytes read so far first; from then
//    on the relay only copies bytes (the TLS session is the client's and the target's)
//
// Every outcome bumps rdv_tls_refused_total{reason=...} or rdv_tls_routed_total and refusals
// log one line. A refused connection is closed gracefully: the alert (if any) is written, the
// write side shut, and whatever the client still sends is discarded for a short grace, so that
// the close does not turn into a reset that destroys the alert.
#include "relay/tls_entrypoint.h"

#include <uv.h>

#include <optional>
#include <string>

#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/client_hello.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr uint64_t kLingerMs = 2000;

// TLS alert descriptions (RFC 8446 §6).
constexpr uint8_t kAlertInternalError = 80;
constexpr uint8_t kAlertUnrecognizedName = 112;

// A fatal alert record. The record version is TLS 1.2's (what TLS 1.3 also puts on the wire),
// which every client accepts before a version is negotiated.
std::string FatalAlert(uint8_t description) {
  return std::string(
      {'\x15', '\x03', '\x03', '\x00', '\x02', '\x02', static_cast<char>(description)});
}

Counter& Refused(std::string_view reason) {
  return CounterOf("rdv_tls_refused_total",
                   "Connections on the tls entrypoint closed before routing, by reason",
                   StrCat("reason=\"", reason, "\""));
}

Counter& Routed() {
  static Counter& counter =
      CounterOf("rdv_tls_routed_total", "Connections on the tls entrypoint routed by SNI");
  return counter;
}

Counter& Accepted() {
  static Counter& counter =
      CounterOf("rdv_tls_connections_total", "Connections accepted on the tls entrypoint");
  return counter;
}

class TlsHelloSession : public RelaySession, public TcpConnection::Handler {
 public:
  TlsHelloSession(RelayWorker& worker, std::unique_ptr<TcpConnection> client)
      : worker_(worker), client_(std::move(client)), timer_(new uv_timer_t) {
    uv_timer_init(worker.loop(), timer_);
    timer_->data = this;
  }

  ~TlsHelloSession() override {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    if (client_ != nullptr) client_->Close();
  }

  void Start() {
    ArmTimer(absl::ToInt64Milliseconds(worker_.config().tls->hello_timeout));
    client_->Start(*this);
  }

  // TcpConnection::Handler
  void OnRead(std::string_view data) override {
    if (decided_) return;  // lingering after a refusal: discard
    switch (parser_.Feed(data)) {
      case ClientHelloParser::Outcome::kNeedMore:
        return;
      case ClientHelloParser::Outcome::kServerName:
        Route();
        return;
      case ClientHelloParser::Outcome::kNoServerName:
        Refuse("no_sni", "the ClientHello names no server", kAlertUnrecognizedName);
        return;
      case ClientHelloParser::Outcome::kError:
        break;
    }
    switch (parser_.error_kind()) {
      case ClientHelloParser::ErrorKind::kBadServerName:
        Refuse("bad_sni", parser_.error(), kAlertUnrecognizedName);
        return;
      case ClientHelloParser::ErrorKind::kNotTls:
        Refuse("not_tls", parser_.error(), std::nullopt);
        return;
      case ClientHelloParser::ErrorKind::kTooLarge:
        Refuse("too_large", parser_.error(), std::nullopt);
        return;
      case ClientHelloParser::ErrorKind::kMalformed:
      case ClientHelloParser::ErrorKind::kNone:
        Refuse("malformed", parser_.error(), std::nullopt);
        return;
    }
  }

  void OnEof() override {
    if (!decided_) {
      decided_ = true;
      Refused("incomplete").Inc();
      spdlog::info(
          "tls {}: refused (incomplete): closed after {} bytes, before a whole "
          "ClientHello",
          client_->peer_address(), parser_.bytes().size());
    }
    Finish();
  }

  void OnError(const absl::Status& status) override {
    if (!decided_) {
      decided_ = true;
      Refused("incomplete").Inc();
      spdlog::info("tls {}: refused (incomplete): {}", client_->peer_address(), status.message());
    }
    Finish();
  }

  void OnDrained() override {}

 private:
  void ArmTimer(uint64_t ms) {
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<TlsHelloSession*>(t->data)->OnTimer();
        },
        ms, 0);
  }

  void OnTimer() {
    if (decided_) {
      Finish();  // the grace after a refusal is over
      return;
    }
    Refuse("timeout",
           StrCat("no whole ClientHello within ",
                  absl::ToInt64Milliseconds(worker_.config().tls->hello_timeout), " ms (",
                  parser_.bytes().size(), " bytes read)"),
           std::nullopt);
  }

  void Route() {
    decided_ = true;
    uv_timer_stop(timer_);
    std::string name = parser_.server_name();
    std::string peer = client_->peer_address();
    std::optional<RouteResult::Outcome> refused;
    worker_.SpliceToService(std::move(client_), link::TLS, name, "tls", parser_.TakeBytes(),
                            [&](std::unique_ptr<TcpConnection> back, RouteResult::Outcome outcome) {
                              client_ = std::move(back);
                              refused = outcome;
                            });
    if (!refused) {
      Routed().Inc();
      spdlog::debug("tls {}: routed {}", peer, name);
      Finish();
      return;
    }
    if (*refused == RouteResult::Outcome::kNoLink) {
      Refuse("no_agent", StrCat("no agent is connected for '", name, "'"), kAlertInternalError);
    } else {
      Refuse("unknown_name", StrCat("no tls service is registered for '", name, "'"),
             kAlertUnrecognizedName);
    }
  }

  // Counts and logs `reason`, sends `alert` if any, and closes gracefully.
  void Refuse(std::string_view reason, std::string_view detail, std::optional<uint8_t> alert) {
    decided_ = true;
    Refused(reason).Inc();
    spdlog::info("tls {}: refused ({}): {}", client_->peer_address(), reason, detail);
    if (alert) client_->Write(FatalAlert(*alert));
    client_->Shutdown();
    if (!finished_) ArmTimer(kLingerMs);  // a failed write may have finished the session
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    uv_timer_stop(timer_);
    if (client_ != nullptr) client_->Close();
    worker_.Finish(this);
  }

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;  // null once handed to SpliceToService
  ClientHelloParser parser_;
  uv_timer_t* timer_;
  bool decided_ = false;  // routed or refused: no more parsing
  bool finished_ = false;
};

}  // namespace

void ServeTlsEntrypoint(RelayWorker& worker, std::unique_ptr<TcpConnection> client) {
  Accepted().Inc();
  auto session = std::make_unique<TlsHelloSession>(worker, std::move(client));
  TlsHelloSession* raw = session.get();
  worker.Adopt(std::move(session));
  raw->Start();
}

}  // namespace rdv
