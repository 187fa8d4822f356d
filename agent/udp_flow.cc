#include "agent/udp_flow.h"

#include <netdb.h>
#include <netinet/in.h>

#include <cstring>
#include <deque>

#include "common/metrics.h"
#include "common/str_cat.h"
#include "common/tcp_connection.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

// Datagrams held while the target resolves; more are dropped.
constexpr size_t kMaxQueuedDatagrams = 16;

Counter& Dropped(std::string_view reason) {
  return CounterOf("rdv_udp_target_datagrams_dropped_total",
                   "Datagrams of udp flows the agent dropped", StrCat("reason=\"", reason, "\""));
}
Counter& FlowErrors(std::string_view reason) {
  return CounterOf("rdv_udp_flow_errors_total", "udp flows the agent could not serve",
                   StrCat("reason=\"", reason, "\""));
}
Counter& FlowsExpired() {
  static Counter& counter =
      CounterOf("rdv_udp_flows_expired_total", "udp flows the agent reset after the idle timeout");
  return counter;
}

}  // namespace

class AgentUdpFlow : public StreamHandler {
 public:
  AgentUdpFlow(AgentUdpFlows& owner, Stream& stream, const ServiceConfig& service)
      : owner_(owner),
        stream_(&stream),
        target_(service.target),
        target_text_(FormatHostPort(service.target)),
        client_(stream.open().client_address()),
        timer_(new uv_timer_t) {
    uv_timer_init(owner.loop_, timer_);
    timer_->data = this;
  }
  ~AgentUdpFlow() override {
    CloseHandles();
    if (stream_ != nullptr) std::exchange(stream_, nullptr)->Reset("agent closing");
  }

  void Start() {
    stream_->Accept(*this);
    if (stream_ == nullptr) return;
    spdlog::debug("udp flow {} for {}: opened to {}", stream_->id(), client_, target_text_);
    last_active_ = uv_now(owner_.loop_);
    ArmTimer(owner_.idle_timeout_ms_);
    std::weak_ptr<AgentUdpFlows*> owner_alive = owner_.alive_;
    std::weak_ptr<bool> flow_alive = alive_;
    ResolveAsync(owner_.loop_, target_.host, target_.port, SOCK_DGRAM,
                 [this, owner_alive, flow_alive](absl::StatusOr<sockaddr_storage> address) {
                   if (owner_alive.expired() || flow_alive.expired()) return;
                   if (!address.ok()) {
                     Fail("resolve", address.status());
                     return;
                   }
                   Connect(*address);
                 });
  }

  // StreamHandler
  void OnStreamDatagram(Stream& stream, std::string_view datagram) override {
    last_active_ = uv_now(owner_.loop_);
    if (socket_ == nullptr) {
      if (queued_.size() >= kMaxQueuedDatagrams) {
        Dropped("resolving").Inc();
        return;
      }
      queued_.emplace_back(datagram);
      return;
    }
    SendToTarget(datagram);
  }
  void OnStreamData(Stream& stream, std::string_view data) override {
    stream.Consumed(data.size());  // a udp flow carries no stream bytes; ignore them
  }
  void OnStreamEnd(Stream& stream) override {}
  void OnStreamWritable(Stream& stream) override {}
  void OnStreamClosed(Stream& stream, const absl::Status& status) override {
    stream_ = nullptr;
    spdlog::debug("udp flow for {}: closed: {}", client_, status.message());
    Finish();
  }

 private:
  struct Socket {
    uv_udp_t handle;  // first: callbacks cast the handle back
    AgentUdpFlow* flow;
  };

  void Connect(const sockaddr_storage& address) {
    auto* socket = new Socket{{}, this};
    if (int rc = uv_udp_init_ex(owner_.loop_, &socket->handle, address.ss_family); rc != 0) {
      delete socket;  // never initialised: nothing to close (e.g. out of descriptors)
      Fail("socket", absl::UnavailableError(UvError(rc)));
      return;
    }
    socket->handle.data = socket;
    int rc = uv_udp_connect(&socket->handle, reinterpret_cast<const sockaddr*>(&address));
    if (rc == 0) {
      rc = uv_udp_recv_start(
          &socket->handle,
          [](uv_handle_t* handle, size_t, uv_buf_t* buf) {
            auto* s = reinterpret_cast<Socket*>(handle);
            std::string& buffer = s->flow->owner_.buffer_;
            *buf = uv_buf_init(buffer.data(), static_cast<unsigned>(buffer.size()));
          },
          [](uv_udp_t* handle, ssize_t nread, const uv_buf_t* buf, const sockaddr* addr,
             unsigned flags) {
            auto* s = reinterpret_cast<Socket*>(handle);
            if (s->flow == nullptr) return;
            s->flow->FromTarget(nread, buf, addr, flags);
          });
    }
    if (rc != 0) {
      socket->flow = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&socket->handle),
               [](uv_handle_t* h) { delete reinterpret_cast<Socket*>(h); });
      Fail("connect", absl::UnavailableError(UvError(rc)));
      return;
    }
    socket_ = socket;
    std::deque<std::string> queued = std::move(queued_);
    queued_.clear();
    for (const std::string& datagram : queued) SendToTarget(datagram);
  }

  void SendToTarget(std::string_view datagram) {
    uv_buf_t buf =
        uv_buf_init(const_cast<char*>(datagram.data()), static_cast<unsigned>(datagram.size()));
    int rc = uv_udp_try_send(&socket_->handle, &buf, 1, nullptr);
    if (rc < 0) {
      // EAGAIN: the socket buffer is full; ECONNREFUSED: an earlier datagram drew an ICMP
      // port unreachable (no server on the target port yet). Both lose this datagram only.
      Dropped(rc == UV_EAGAIN ? "send_buffer_full" : "send_error").Inc();
    }
  }

  void FromTarget(ssize_t nread, const uv_buf_t* buf, const sockaddr* addr, unsigned flags) {
    if (nread < 0) {
      Dropped("receive_error").Inc();  // e.g. ECONNREFUSED reported for an earlier send
      return;
    }
    if (addr == nullptr) return;
    if (flags & UV_UDP_PARTIAL) {
      Dropped("oversize").Inc();
      return;
    }
    if (stream_ == nullptr) return;
    last_active_ = uv_now(owner_.loop_);
    // The link counts why it dropped one (rdv_link_datagrams_dropped_total).
    if (!stream_->SendDatagram(std::string_view(buf->base, static_cast<size_t>(nread)))) {
      Dropped("link").Inc();
    }
  }

  void Fail(std::string_view reason, const absl::Status& status) {
    FlowErrors(reason).Inc();
    spdlog::warn("udp flow for {}: target {}: {}", client_, target_text_, status.message());
    if (stream_ != nullptr) {
      std::exchange(stream_, nullptr)->Reset(StrCat(target_text_, ": ", status.message()));
    }
    Finish();
  }

  void ArmTimer(uint64_t ms) {
    uv_timer_start(
        timer_,
        [](uv_timer_t* t) {
          if (t->data) static_cast<AgentUdpFlow*>(t->data)->OnTimer();
        },
        ms, 0);
  }
  void OnTimer() {
    uint64_t idle = uv_now(owner_.loop_) - last_active_;
    if (idle < owner_.idle_timeout_ms_) {
      ArmTimer(owner_.idle_timeout_ms_ - idle);
      return;
    }
    FlowsExpired().Inc();
    spdlog::debug("udp flow for {}: expired after {} ms idle", client_, idle);
    if (stream_ != nullptr) std::exchange(stream_, nullptr)->Reset("udp session idle");
    Finish();
  }

  void CloseHandles() {
    if (timer_ != nullptr) {
      timer_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(timer_),
               [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
      timer_ = nullptr;
    }
    if (socket_ != nullptr) {
      socket_->flow = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(&socket_->handle),
               [](uv_handle_t* h) { delete reinterpret_cast<Socket*>(h); });
      socket_ = nullptr;
    }
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    CloseHandles();
    owner_.Finish(this);
  }

  AgentUdpFlows& owner_;
  Stream* stream_;
  const HostPort target_;
  const std::string target_text_;
  const std::string client_;
  uv_timer_t* timer_;
  Socket* socket_ = nullptr;
  std::deque<std::string> queued_;  // datagrams that arrived before the socket was up
  uint64_t last_active_ = 0;
  bool finished_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for the resolver callback
};

AgentUdpFlows::AgentUdpFlows(uv_loop_t* loop, LoopTasks& tasks, uint64_t idle_timeout_ms)
    : loop_(loop),
      tasks_(tasks),
      idle_timeout_ms_(idle_timeout_ms),
      alive_(std::make_shared<AgentUdpFlows*>(this)) {}

AgentUdpFlows::~AgentUdpFlows() = default;

void AgentUdpFlows::Open(Stream& stream, const ServiceConfig& service) {
  auto flow = std::make_unique<AgentUdpFlow>(*this, stream, service);
  AgentUdpFlow* raw = flow.get();
  flows_.emplace(raw, std::move(flow));
  raw->Start();
}

void AgentUdpFlows::Finish(AgentUdpFlow* flow) {
  std::weak_ptr<AgentUdpFlows*> weak = alive_;
  tasks_.Defer([weak, flow] {
    if (auto owner = weak.lock()) (*owner)->flows_.erase(flow);
  });
}

}  // namespace rdv
