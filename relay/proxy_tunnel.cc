#include "relay/proxy_tunnel.h"

#include <uv.h>

#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/stream_splice.h"
#include "relay/agent_link.h"
#include "relay/relay.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

constexpr uint64_t kLingerMs = 1000;

// CloseProxyClient's session.
class LingeringClose : public RelaySession, public TcpConnection::Handler {
 public:
  LingeringClose(RelayWorker& worker, std::unique_ptr<TcpConnection> client)
      : worker_(worker), client_(std::move(client)), timer_(new uv_timer_t) {
    uv_timer_init(worker.loop(), timer_);
    timer_->data = this;
  }
  ~LingeringClose() override {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    client_->Close();
  }
  void Start(std::string_view reply) {
    client_->Start(*this);
    if (!reply.empty()) client_->Write(reply);
    client_->Shutdown();
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<LingeringClose*>(t->data)->Finish();
        },
        kLingerMs, 0);
  }
  void OnRead(std::string_view) override {}
  void OnEof() override {
    if (client_->queued_bytes() == 0) Finish();
    eof_ = true;
  }
  void OnError(const absl::Status&) override { Finish(); }
  void OnDrained() override {
    if (eof_ && client_->queued_bytes() == 0) Finish();
  }

 private:
  void Finish() {
    if (finished_) return;
    finished_ = true;
    uv_timer_stop(timer_);
    client_->Close();
    worker_.Finish(this);
  }

  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;
  uv_timer_t* timer_;
  bool eof_ = false;
  bool finished_ = false;
};

// Steps 2-3 of proxy_tunnel.h on the worker owning the link. Until the agent answers this
// session handles both the client socket and the stream; afterwards a StreamSplice does, and
// the stream's events (whose handler cannot change) are passed on to it.
class ProxyTunnel : public RelaySession, public TcpConnection::Handler, public StreamHandler {
 public:
  ProxyTunnel(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
              ProxyDestination destination)
      : worker_(worker), client_(std::move(client)), destination_(std::move(destination)) {}
  ~ProxyTunnel() override {
    if (splice_ == nullptr) {
      if (stream_ != nullptr) stream_->Reset("proxy client went away");
      if (client_ != nullptr) client_->Close();
    }
  }

  // False when the link cannot take a stream now.
  bool Start(AgentLink& carrier, const link::ServiceSpec& service, std::string_view initial) {
    stream_ = carrier.OpenStream(service, *client_, destination_.entrypoint, *this);
    if (stream_ == nullptr) return false;
    if (!initial.empty()) stream_->Write(initial);
    client_->Start(*this);
    return true;
  }

  // TcpConnection::Handler, until the agent answers.
  void OnRead(std::string_view data) override {
    if (stream_ != nullptr && !stream_->Write(data)) client_->PauseReading();
  }
  void OnEof() override {
    if (stream_ != nullptr) stream_->End();
  }
  void OnError(const absl::Status& status) override {
    if (stream_ != nullptr) {
      Stream* stream = stream_;
      stream_ = nullptr;
      stream->Reset("proxy client error");
    }
    client_->Close();
    worker_.Finish(this);
  }

  // StreamHandler
  void OnStreamAccepted(Stream& stream) override {
    client_->Write(ProxySuccessReply(destination_.protocol));
    splice_ = std::make_unique<StreamSplice>(
        std::move(client_), stream_, [this](StreamSplice&, const absl::Status& status) {
          if (!status.ok()) {
            spdlog::debug("proxy tunnel ended: {}", status.message());
          }
          worker_.Finish(this);
        });
    splice_->Start();
  }
  void OnStreamData(Stream& stream, std::string_view data) override {
    if (splice_ != nullptr) splice_->OnStreamData(stream, data);
  }
  void OnStreamEnd(Stream& stream) override {
    if (splice_ != nullptr) splice_->OnStreamEnd(stream);
  }
  void OnStreamWritable(Stream& stream) override {
    if (splice_ != nullptr) {
      splice_->OnStreamWritable(stream);
    } else if (client_ != nullptr) {
      client_->ResumeReading();
    }
  }
  void OnStreamClosed(Stream& stream, const absl::Status& status) override {
    stream_ = nullptr;
    if (splice_ != nullptr) {
      splice_->OnStreamClosed(stream, status);
      return;
    }
    // Refused (or the link died) before the agent accepted: the target is unreachable.
    Refuse(ProxyRefusal::kTargetRefused,
           StrCat("the target of '", destination_.name, "' is unreachable: ", status.message()));
  }

  // Answers the client with `refusal` and ends this session.
  void Refuse(ProxyRefusal refusal, std::string_view detail) {
    if (stream_ != nullptr) {
      Stream* stream = stream_;
      stream_ = nullptr;
      stream->Reset("proxy client refused");
    }
    NoteProxyRefusal(destination_.protocol, refusal, client_->peer_address(), detail);
    CloseProxyClient(worker_, std::move(client_),
                     ProxyRefusalReply(destination_.protocol, refusal, detail));
    worker_.Finish(this);
  }

 private:
  RelayWorker& worker_;
  std::unique_ptr<TcpConnection> client_;  // until accepted, then owned by splice_
  ProxyDestination destination_;
  Stream* stream_ = nullptr;
  std::unique_ptr<StreamSplice> splice_;
};

// `chosen`: the link the handing worker's route picked (kept unless it went away meanwhile).
RouteResult Route(RelayWorker& worker, const ProxyDestination& destination,
                  const std::string& client_ip, const StreamCarrier* chosen) {
  if (chosen != nullptr) {
    return worker.directory().Reroute(destination.kind, destination.name, worker.index(), client_ip,
                                      chosen);
  }
  return destination.kind == link::TCP
             ? worker.directory().RouteService(link::TCP, destination.name, worker.index(),
                                               client_ip)
             : worker.directory().RouteHost(destination.kind, destination.name, worker.index(),
                                            client_ip);
}

}  // namespace

void CloseProxyClient(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                      std::string reply) {
  auto session = std::make_unique<LingeringClose>(worker, std::move(client));
  LingeringClose* raw = session.get();
  worker.Adopt(std::move(session));
  raw->Start(reply);
}

void StartProxyTunnel(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                      ProxyDestination destination, const RouteResult& route, std::string initial) {
  if (route.outcome != RouteResult::Outcome::kFound) {
    ProxyRefusal refusal = route.outcome == RouteResult::Outcome::kUnknown
                               ? ProxyRefusal::kUnknownName
                               : ProxyRefusal::kNoAgent;
    std::string detail = StrCat("no agent can serve '", destination.name, "' now");
    NoteProxyRefusal(destination.protocol, refusal, client->peer_address(), detail);
    CloseProxyClient(worker, std::move(client),
                     ProxyRefusalReply(destination.protocol, refusal, detail));
    return;
  }
  if (route.worker != worker.index()) {
    std::string peer = client->peer_address();  // may come from a PROXY header
    absl::StatusOr<int> fd = client->DetachFd();
    if (!fd.ok()) return;
    static Counter& handoffs =
        CounterOf("rdv_worker_handoffs_total", "Client connections moved to another worker loop");
    handoffs.Inc();
    Handoff handoff;
    handoff.kind = Handoff::Kind::kProxy;
    handoff.peer_address = std::move(peer);
    handoff.fd = *fd;
    handoff.bytes = std::move(initial);
    handoff.service_kind = destination.kind;
    handoff.service = std::move(destination.name);
    handoff.entrypoint = std::move(destination.entrypoint);
    handoff.proxy_protocol = static_cast<uint8_t>(destination.protocol);
    handoff.chosen = route.carrier;
    worker.relay().worker(route.worker).HandOff(std::move(handoff));
    return;
  }
  auto session = std::make_unique<ProxyTunnel>(worker, std::move(client), std::move(destination));
  ProxyTunnel* raw = session.get();
  worker.Adopt(std::move(session));
  if (!raw->Start(*static_cast<AgentLink*>(route.carrier), route.service, initial)) {
    raw->Refuse(ProxyRefusal::kNoAgent,
                StrCat("the agent link for '", route.service.name(), "' cannot take streams now"));
  }
}

void ResumeProxyTunnel(RelayWorker& worker, std::unique_ptr<TcpConnection> client,
                       Handoff handoff) {
  ProxyDestination destination;
  destination.protocol = static_cast<ProxyProtocol>(handoff.proxy_protocol);
  destination.kind = handoff.service_kind;
  destination.name = std::move(handoff.service);
  destination.entrypoint = std::move(handoff.entrypoint);
  RouteResult route =
      Route(worker, destination, HostOfAddress(client->peer_address()), handoff.chosen);
  StartProxyTunnel(worker, std::move(client), std::move(destination), route,
                   std::move(handoff.bytes));
}

}  // namespace rdv
