// A plain TCP client of the relay's agent listener for data path tests: dials, presents what
// the test gives it, and keeps everything it reads (tunnel_data_path_test.cc,
// tunnel_bridge_test.cc); the data path metrics; a loop runner.
#ifndef RDV_RELAY_DATA_PATH_TEST_SUPPORT_H_
#define RDV_RELAY_DATA_PATH_TEST_SUPPORT_H_

#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "common/data_path.h"
#include "common/metrics.h"
#include "common/tcp_connection.h"

namespace rdv::data_path_test {

inline constexpr size_t kOkSize = kDataPathOk.size();

// The relay's data path metrics, as the tests read them.
inline uint64_t DataPaths(std::string_view result) {
  return CounterOf("rdv_tunnel_data_paths_total",
                   "Tunnel data path connections refused, by reason, and pairs spliced",
                   "result=\"" + std::string(result) + "\"")
      .value();
}
inline int64_t ActiveDataPaths() {
  return GaugeOf("rdv_tunnel_data_paths_active", "Tunnel data paths spliced and open now").value();
}
inline uint64_t BytesSpliced() {
  return CounterOf("rdv_tunnel_data_path_bytes_total",
                   "Bytes copied between the two connections of data paths")
      .value();
}
inline uint64_t DataPathOffers() {
  return CounterOf("rdv_tunnel_data_offers_total", "Tunnel data paths offered to pairs of agents")
      .value();
}

// Runs `loop` until `done`, for at most `limit`. A short repeating timer wakes the loop, so
// that conditions changed by another thread (a second worker) are seen.
inline bool RunLoopUntil(uv_loop_t* loop, const std::function<bool()>& done,
                         std::chrono::seconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  uv_timer_t tick;
  uv_timer_init(loop, &tick);
  uv_timer_start(
      &tick, [](uv_timer_t*) {}, 2, 2);
  while (!done() && std::chrono::steady_clock::now() < deadline) uv_run(loop, UV_RUN_ONCE);
  uv_close(reinterpret_cast<uv_handle_t*>(&tick), nullptr);
  uv_run(loop, UV_RUN_NOWAIT);
  return done();
}

class DataPathClient : public TcpConnection::Handler {
 public:
  ~DataPathClient() override { Close(); }

  // Connects to 127.0.0.1:`port`; what Send() got before the connection is up goes first.
  void Dial(uv_loop_t* loop, uint16_t port) {
    sockaddr_in address{};
    uv_ip4_addr("127.0.0.1", port, &address);
    TcpConnection::Connect(loop, reinterpret_cast<const sockaddr*>(&address),
                           [this](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
                             if (!tcp.ok()) {
                               failed = true;
                               return;
                             }
                             connection_ = *std::move(tcp);
                             connection_->Start(*this);
                             if (paused_) connection_->PauseReading();
                             if (!pending_.empty()) connection_->Write(pending_);
                             pending_.clear();
                             if (shutdown_pending_) connection_->Shutdown();
                           });
  }
  void Send(std::string_view bytes) {
    if (connection_) {
      connection_->Write(bytes);
    } else {
      pending_.append(bytes);
    }
  }
  // Half-closes (after what is queued).
  void ShutdownWrite() {
    if (connection_) {
      connection_->Shutdown();
    } else {
      shutdown_pending_ = true;
    }
  }
  void PauseReading() {
    paused_ = true;
    if (connection_) connection_->PauseReading();
  }
  void ResumeReading() {
    paused_ = false;
    if (connection_) connection_->ResumeReading();
  }
  void Close() {
    if (connection_) connection_->Close();
  }
  // Aborts the connection: the peer gets a RST (SO_LINGER 0), not a FIN.
  void Reset() {
    if (!connection_) return;
    absl::StatusOr<int> fd = connection_->DetachFd();
    if (!fd.ok()) return;
    linger abort{1, 0};
    setsockopt(*fd, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort));
    ::close(*fd);
  }
  bool connected() const { return connection_ != nullptr; }
  size_t queued_bytes() const { return connection_ ? connection_->queued_bytes() : 0; }

  // TcpConnection::Handler
  void OnRead(std::string_view data) override { received.append(data); }
  void OnEof() override { eof = true; }
  void OnError(const absl::Status& status) override {
    error = true;
    Close();
  }

  std::string received;
  bool eof = false;
  bool error = false;
  bool failed = false;  // the connect failed

 private:
  std::unique_ptr<TcpConnection> connection_;
  std::string pending_;
  bool shutdown_pending_ = false;
  bool paused_ = false;
};

}  // namespace rdv::data_path_test

#endif  // RDV_RELAY_DATA_PATH_TEST_SUPPORT_H_
