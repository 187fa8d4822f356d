#include "common/tcp_connection.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <cstring>

#include "common/str_cat.h"
#include "common/yaml_config.h"

namespace rdv {
namespace {

// One read buffer per loop thread: every read is consumed synchronously by its handler, so
// connections need not hold a buffer of their own while idle.
constexpr size_t kReadBufferSize = 1024 * 1024;
thread_local char read_buffer[kReadBufferSize];
thread_local WriteBatch* current_write_batch = nullptr;

// Segments handed to one uv_write (libuv copies the uv_buf_t array, not the bytes).
constexpr size_t kMaxSegmentsPerWrite = 256;

// Buffers of LendableBuffers alive (filled now or held by connections) and those filled now.
std::atomic<size_t> lendable_live_bytes{0};
std::atomic<size_t> lendable_current_bytes{0};

void FreeHandle(uv_handle_t* handle) { delete reinterpret_cast<uv_tcp_t*>(handle); }

}  // namespace

struct TcpConnection::WriteRequest {
  uv_write_t req;
  std::vector<Segment> segments;
  size_t bytes = 0;
};

std::string UvError(int code) { return StrCat(uv_err_name(code), ": ", uv_strerror(code)); }

std::string FormatSockaddr(const sockaddr* address) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (address->sa_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(address);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return StrCat(host, ":", ntohs(in->sin_port));
  }
  if (address->sa_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    return StrCat("[", host, "]:", ntohs(in6->sin6_port));
  }
  return "unknown";
}

absl::StatusOr<sockaddr_storage> ResolveNumeric(std::string_view host, uint16_t port) {
  sockaddr_storage storage{};
  std::string h(host);
  if (h == "localhost") h = "127.0.0.1";
  if (uv_ip4_addr(h.c_str(), port, reinterpret_cast<sockaddr_in*>(&storage)) == 0) {
    return storage;
  }
  if (uv_ip6_addr(h.c_str(), port, reinterpret_cast<sockaddr_in6*>(&storage)) == 0) {
    return storage;
  }
  return absl::InvalidArgumentError(StrCat("'", host, "' is not a numeric IP address"));
}

TcpConnection::TcpConnection(uv_loop_t* loop) : loop_(loop), handle_(new uv_tcp_t) {
  uv_tcp_init(loop, handle_);
  handle_->data = this;
}

TcpConnection::~TcpConnection() {
  // STYLE 6: a live socket must have been closed by its owner.
  assert(handle_ == nullptr && "TcpConnection destroyed without Close()");
  if (handle_ != nullptr) Close();
}

absl::Status TcpConnection::InitPeer(const sockaddr* known) {
  if (known != nullptr) {
    std::memcpy(&peer_storage_, known,
                known->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  } else {
    int len = sizeof(peer_storage_);
    int rc = uv_tcp_getpeername(handle_, reinterpret_cast<sockaddr*>(&peer_storage_), &len);
    if (rc != 0) return absl::UnavailableError(StrCat("getpeername: ", UvError(rc)));
  }
  peer_ = FormatSockaddr(reinterpret_cast<sockaddr*>(&peer_storage_));
  uv_tcp_nodelay(handle_, 1);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TcpConnection>> TcpConnection::Accept(uv_stream_t* server) {
  std::unique_ptr<TcpConnection> conn(new TcpConnection(server->loop));
  int rc = uv_accept(server, reinterpret_cast<uv_stream_t*>(conn->handle_));
  if (rc != 0) {
    conn->Close();
    return absl::UnavailableError(StrCat("accept: ", UvError(rc)));
  }
  if (absl::Status s = conn->InitPeer(); !s.ok()) {
    conn->Close();
    return s;
  }
  return conn;
}

absl::StatusOr<std::unique_ptr<TcpConnection>> TcpConnection::Adopt(uv_loop_t* loop, int fd) {
  std::unique_ptr<TcpConnection> conn(new TcpConnection(loop));
  int rc = uv_tcp_open(conn->handle_, fd);
  if (rc != 0) {
    ::close(fd);
    conn->Close();
    return absl::UnavailableError(StrCat("adopt socket: ", UvError(rc)));
  }
  if (absl::Status s = conn->InitPeer(); !s.ok()) {
    conn->Close();
    return s;
  }
  return conn;
}

namespace {
struct ConnectRequest {
  uv_connect_t req;
  sockaddr_storage address{};  // connected to: the peer, without asking the kernel
  std::unique_ptr<TcpConnection> conn;
  TcpConnection::ConnectCallback done;
};
}  // namespace

void TcpConnection::Connect(uv_loop_t* loop, const sockaddr* address, ConnectCallback done) {
  auto* request = new ConnectRequest;
  request->conn.reset(new TcpConnection(loop));
  request->done = std::move(done);
  std::memcpy(&request->address, address,
              address->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  int rc = uv_tcp_connect(
      &request->req, request->conn->handle_, address, [](uv_connect_t* req, int status) {
        std::unique_ptr<ConnectRequest> request(reinterpret_cast<ConnectRequest*>(req));
        if (status == 0) status = 0;
        absl::Status result = absl::OkStatus();
        if (status != 0) {
          result = absl::UnavailableError(UvError(status));
        } else {
          result = request->conn->InitPeer(reinterpret_cast<sockaddr*>(&request->address));
        }
        if (!result.ok()) {
          request->conn->Close();
          request->done(result);
          return;
        }
        request->done(std::move(request->conn));
      });
  if (rc != 0) {
    request->conn->Close();
    auto done_cb = std::move(request->done);
    delete request;
    done_cb(absl::UnavailableError(UvError(rc)));
  }
}

void TcpConnection::Start(Handler& handler) {
  handler_ = &handler;
  ResumeReading();
  if (!unread_.empty()) {
    std::string bytes = std::move(unread_);
    unread_.clear();
    handler.OnRead(bytes);
  }
}

absl::Status TcpConnection::OverridePeer(std::string_view address) {
  absl::StatusOr<HostPort> host_port = ParseHostPort(address);
  if (!host_port.ok()) return host_port.status();
  absl::StatusOr<sockaddr_storage> resolved = ResolveNumeric(host_port->host, host_port->port);
  if (!resolved.ok()) return resolved.status();
  peer_storage_ = *resolved;
  peer_ = FormatSockaddr(reinterpret_cast<sockaddr*>(&peer_storage_));
  return absl::OkStatus();
}

void TcpConnection::PauseReading() {
  if (handle_ == nullptr || !reading_) return;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(handle_));
  reading_ = false;
}

void TcpConnection::ResumeReading() {
  if (handle_ == nullptr || reading_ || handler_ == nullptr) return;
  if (uv_read_start(reinterpret_cast<uv_stream_t*>(handle_), OnAlloc, OnReadCb) == 0) {
    reading_ = true;
  }
}

void TcpConnection::OnAlloc(uv_handle_t*, size_t, uv_buf_t* buf) {
  buf->base = read_buffer;
  buf->len = kReadBufferSize;
}

void TcpConnection::OnReadCb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<TcpConnection*>(stream->data);
  if (self == nullptr || self->handler_ == nullptr) return;
  if (nread > 0) {
    self->handler_->OnRead(std::string_view(buf->base, static_cast<size_t>(nread)));
  } else if (nread == UV_EOF) {
    self->PauseReading();
    self->handler_->OnEof();
  } else if (nread < 0) {
    self->PauseReading();
    self->handler_->OnError(absl::UnavailableError(UvError(static_cast<int>(nread))));
  }
}

void TcpConnection::Write(std::string_view data) {
  if (handle_ == nullptr || shutdown_requested_ || data.empty()) return;
  WriteBatch* batch = WriteBatch::Current();
  if (batch_ != nullptr && batch_ != batch) FlushBatched(false);  // an outer batch's bytes first
  if (batch != nullptr && (batch_ == batch || (!write_in_flight_ && out_.empty()))) {
    if (batch_ == nullptr) {
      batch_ = batch;
      batch->connections_.push_back(this);
    }
    if (batch->Holds(data)) {
      batched_.push_back({data.data(), 0, data.size()});
    } else {
      batched_.push_back({nullptr, batch_copy_.size(), data.size()});
      batch_copy_.append(data);
    }
    queued_bytes_ += data.size();
    if (batched_.size() >= WriteBatch::kMaxPieces) {
      FlushBatched(false);
      // Still in the batch, with nothing held, when the kernel took it all: the batch's end
      // then reports the drain (a handler may be waiting for it).
      if (handle_ != nullptr && out_.empty() && !write_in_flight_) {
        batch_ = batch;
        batch->connections_.push_back(this);
      }
    }
    return;
  }
  if (!write_in_flight_ && out_.empty()) {
    // Nothing queued: hand the caller's bytes to the kernel directly and copy only what it
    // did not take.
    uv_buf_t buf = uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
    int written = uv_try_write(reinterpret_cast<uv_stream_t*>(handle_), &buf, 1);
    if (written < 0 && written != UV_EAGAIN) {
      if (handler_) handler_->OnError(absl::UnavailableError(UvError(written)));
      return;
    }
    if (written > 0) data.remove_prefix(static_cast<size_t>(written));
    if (data.empty()) {
      // Light traffic that the kernel takes at once needs no kept bulk buffer.
      if (static_cast<size_t>(written) < kLightWrite && spare_.capacity() > kLightWrite) {
        std::string().swap(spare_);
        std::vector<Segment>().swap(out_);
      }
      return;
    }
  }
  Enqueue(data, batch != nullptr && batch->Holds(data) ? &batch->owner_ : nullptr);
  queued_bytes_ += data.size();
  if (!write_in_flight_) StartWrite();
}

void TcpConnection::Enqueue(std::string_view data, const std::shared_ptr<const void>* owner) {
  if (owner != nullptr && *owner != nullptr && data.size() >= kMinLentWrite) {
    out_.push_back(Segment{{}, *owner, data});
    return;
  }
  if (out_.empty() || out_.back().owner != nullptr) {
    out_.emplace_back();
    out_.back().copy.swap(spare_);
  }
  out_.back().copy.append(data);
}

void TcpConnection::Consume(std::vector<Segment>& segments, size_t taken) {
  size_t done = 0;
  while (done < segments.size() && taken > 0) {
    Segment& segment = segments[done];
    size_t left = segment.rest().size();
    if (taken < left) {
      segment.written += taken;
      break;
    }
    taken -= left;
    if (segment.owner == nullptr && segment.copy.capacity() <= kMaxRecycledBuffer &&
        segment.copy.capacity() > spare_.capacity()) {
      segment.copy.clear();
      spare_.swap(segment.copy);
    }
    ++done;
  }
  segments.erase(segments.begin(), segments.begin() + static_cast<ptrdiff_t>(done));
}

void TcpConnection::FlushBatched(bool notify) {
  WriteBatch* batch = std::exchange(batch_, nullptr);
  if (batch == nullptr) return;
  batch->Forget(this);
  std::vector<uv_buf_t> bufs;
  bufs.reserve(batched_.size());
  for (const BatchedPiece& piece : batched_) {
    const char* data = piece.data != nullptr ? piece.data : batch_copy_.data() + piece.offset;
    bufs.push_back(uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(piece.size)));
  }
  int written = bufs.empty() ? 0
                             : uv_try_write(reinterpret_cast<uv_stream_t*>(handle_), bufs.data(),
                                            static_cast<unsigned>(bufs.size()));
  size_t taken = written > 0 ? static_cast<size_t>(written) : 0;
  // What the kernel did not take is queued, in order (nothing else is queued while a batch holds
  // bytes): the batch's stable bytes lent when it has an owner, the rest copied.
  if (written >= 0 || written == UV_EAGAIN) {
    size_t skip = taken;
    for (size_t i = 0; i < bufs.size(); ++i) {
      const uv_buf_t& buf = bufs[i];
      if (skip >= buf.len) {
        skip -= buf.len;
        continue;
      }
      Enqueue(std::string_view(buf.base + skip, buf.len - skip),
              batched_[i].data != nullptr ? &batch->owner_ : nullptr);
      skip = 0;
    }
  }
  queued_bytes_ -= taken;
  batched_.clear();
  if (batch_copy_.capacity() > kMaxRecycledBuffer) {
    std::string().swap(batch_copy_);
  } else {
    batch_copy_.clear();
  }
  if (written < 0 && written != UV_EAGAIN) {
    if (handler_) handler_->OnError(absl::UnavailableError(UvError(written)));
    return;
  }
  if (!out_.empty() || shutdown_requested_) {
    StartWrite();
  } else if (notify && handler_ != nullptr) {
    handler_->OnDrained();
  }
}

namespace {
// The unwritten bytes of up to kMaxSegmentsPerWrite segments; returns how many buffers.
template <typename Segments>
unsigned FillBuffers(const Segments& segments, uv_buf_t* bufs, size_t* bytes) {
  unsigned count = 0;
  *bytes = 0;
  for (const auto& segment : segments) {
    if (count == kMaxSegmentsPerWrite) break;
    std::string_view rest = segment.rest();
    bufs[count++] = uv_buf_init(const_cast<char*>(rest.data()), static_cast<unsigned>(rest.size()));
    *bytes += rest.size();
  }
  return count;
}
}  // namespace

void TcpConnection::StartWrite() {
  if (out_.empty()) {
    if (shutdown_requested_ && !shutdown_sent_) {
      shutdown_sent_ = true;
      auto* req = new uv_shutdown_t;
      if (uv_shutdown(req, reinterpret_cast<uv_stream_t*>(handle_), OnShutdownCb) != 0) {
        delete req;
      }
    }
    return;
  }
  // Try the kernel first: most writes complete at once and need no request.
  uv_buf_t bufs[kMaxSegmentsPerWrite];
  size_t bytes = 0;
  unsigned count = FillBuffers(out_, bufs, &bytes);
  int written = uv_try_write(reinterpret_cast<uv_stream_t*>(handle_), bufs, count);
  if (written > 0) {
    queued_bytes_ -= static_cast<size_t>(written);
    Consume(out_, static_cast<size_t>(written));
    if (out_.empty()) {
      StartWrite();  // shutdown, if pending
      return;
    }
  } else if (written < 0 && written != UV_EAGAIN) {
    if (handler_) handler_->OnError(absl::UnavailableError(UvError(written)));
    return;
  }
  auto* request = new WriteRequest;
  const size_t moved = std::min(out_.size(), kMaxSegmentsPerWrite);
  request->segments.assign(std::make_move_iterator(out_.begin()),
                           std::make_move_iterator(out_.begin() + static_cast<ptrdiff_t>(moved)));
  out_.erase(out_.begin(), out_.begin() + static_cast<ptrdiff_t>(moved));
  count = FillBuffers(request->segments, bufs, &request->bytes);
  write_in_flight_ = true;
  int rc = uv_write(&request->req, reinterpret_cast<uv_stream_t*>(handle_), bufs, count, OnWriteCb);
  if (rc != 0) {
    write_in_flight_ = false;
    delete request;
    if (handler_) handler_->OnError(absl::UnavailableError(UvError(rc)));
  }
}

void TcpConnection::OnWriteCb(uv_write_t* req, int status) {
  std::unique_ptr<WriteRequest> request(reinterpret_cast<WriteRequest*>(req));
  auto* self = static_cast<TcpConnection*>(req->handle->data);
  if (self == nullptr) return;
  self->write_in_flight_ = false;
  self->queued_bytes_ -= request->bytes;
  // Keep a written copy's buffer for the next queue: a connection under backpressure would
  // otherwise grow a fresh buffer (and fault in its pages) for every write.
  self->Consume(request->segments, request->bytes);
  if (status != 0) {
    if (status != UV_ECANCELED && self->handler_) {
      self->handler_->OnError(absl::UnavailableError(UvError(status)));
    }
    return;
  }
  self->StartWrite();
  // Report room as soon as the queue is low, not only when it is empty: a producer that waits
  // for empty leaves the socket idle while it refills.
  if (self->handle_ != nullptr && self->queued_bytes_ < kDrainedWatermark && self->handler_) {
    self->handler_->OnDrained();
  }
}

void TcpConnection::OnShutdownCb(uv_shutdown_t* req, int) { delete req; }

void TcpConnection::Shutdown() {
  if (handle_ == nullptr || shutdown_requested_) return;
  FlushBatched(false);
  if (handle_ == nullptr) return;
  shutdown_requested_ = true;
  if (!write_in_flight_) StartWrite();
}

void TcpConnection::Close() {
  if (handle_ == nullptr) return;
  handler_ = nullptr;  // no callbacks from here on
  FlushBatched(false);
  handle_->data = nullptr;
  if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(handle_))) {
    uv_close(reinterpret_cast<uv_handle_t*>(handle_), FreeHandle);
  }
  handle_ = nullptr;
}

absl::Status TcpConnection::SetKeepAlive(absl::Duration idle, absl::Duration interval, int count) {
  uv_os_fd_t fd;
  if (handle_ == nullptr || uv_fileno(reinterpret_cast<uv_handle_t*>(handle_), &fd) != 0) {
    return absl::FailedPreconditionError("keepalive: the connection is closed");
  }
  const int on = 1;
  const int idle_s = std::max(1, static_cast<int>(absl::ToInt64Seconds(idle)));
  const int interval_s = std::max(1, static_cast<int>(absl::ToInt64Seconds(interval)));
  if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s)) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s)) != 0 ||
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count)) != 0) {
    return absl::InternalError(StrCat("keepalive: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

WriteBatch* WriteBatch::Current() { return current_write_batch; }

WriteBatch::WriteBatch(std::string_view stable, std::shared_ptr<const void> owner)
    : stable_(stable), owner_(std::move(owner)), outer_(current_write_batch) {
  current_write_batch = this;
}

LendableBuffer::~LendableBuffer() {
  if (buffer_ != nullptr) lendable_current_bytes -= size_;
}

char* LendableBuffer::Data() {
  if (buffer_ != nullptr && buffer_.use_count() == 1) return buffer_.get();
  if (buffer_ != nullptr) lendable_current_bytes -= size_;  // held by connections from now on
  const size_t size = size_;
  lendable_live_bytes += size;
  lendable_current_bytes += size;
  buffer_ = std::shared_ptr<char[]>(new char[size], [size](char* bytes) {
    delete[] bytes;
    lendable_live_bytes -= size;
  });
  return buffer_.get();
}

std::shared_ptr<const void> LendableBuffer::Owner() const {
  if (HeldBytes() > kMaxHeldBytes) return nullptr;
  return buffer_;
}

size_t LendableBuffer::HeldBytes() {
  const size_t live = lendable_live_bytes.load();
  const size_t current = lendable_current_bytes.load();
  return live > current ? live - current : 0;
}

WriteBatch::~WriteBatch() {
  current_write_batch = outer_;
  // A handler that hears OnDrained may close (and so Forget) other connections of this batch.
  while (!connections_.empty()) connections_.back()->FlushBatched(true);
}

void WriteBatch::Forget(TcpConnection* connection) {
  auto it = std::find(connections_.begin(), connections_.end(), connection);
  if (it != connections_.end()) connections_.erase(it);
}

std::string TcpConnection::local_address() const {
  if (handle_ == nullptr) return "";
  sockaddr_storage local{};
  int len = sizeof(local);
  if (uv_tcp_getsockname(handle_, reinterpret_cast<sockaddr*>(&local), &len) != 0) return "";
  return FormatSockaddr(reinterpret_cast<sockaddr*>(&local));
}

absl::StatusOr<int> TcpConnection::DetachFd() {
  if (handle_ == nullptr) return absl::FailedPreconditionError("connection closed");
  uv_os_fd_t fd;
  int rc = uv_fileno(reinterpret_cast<uv_handle_t*>(handle_), &fd);
  if (rc != 0) return absl::UnavailableError(UvError(rc));
  int copy = ::dup(fd);
  if (copy < 0) return absl::UnavailableError(StrCat("dup: ", std::strerror(errno)));
  Close();
  return copy;
}

void ResolveAsync(uv_loop_t* loop, const std::string& host, uint16_t port, int socktype,
                  std::function<void(absl::StatusOr<sockaddr_storage>)> done) {
  ResolveAllAsync(loop, host, port, socktype,
                  [done = std::move(done)](absl::StatusOr<std::vector<sockaddr_storage>> all) {
                    if (!all.ok()) {
                      done(all.status());
                    } else {
                      done(all->front());
                    }
                  });
}

void ResolveAllAsync(uv_loop_t* loop, const std::string& host, uint16_t port, int socktype,
                     std::function<void(absl::StatusOr<std::vector<sockaddr_storage>>)> done) {
  absl::StatusOr<sockaddr_storage> numeric = ResolveNumeric(host, port);
  if (numeric.ok()) {
    done(std::vector<sockaddr_storage>{*numeric});
    return;
  }
  struct Request {
    uv_getaddrinfo_t req;
    uint16_t port;
    std::function<void(absl::StatusOr<std::vector<sockaddr_storage>>)> done;
  };
  auto* request = new Request{{}, port, std::move(done)};
  addrinfo hints{};
  hints.ai_socktype = socktype;
  int rc = uv_getaddrinfo(
      loop, &request->req,
      [](uv_getaddrinfo_t* req, int status, addrinfo* result) {
        std::unique_ptr<Request> request(reinterpret_cast<Request*>(req));
        std::vector<sockaddr_storage> addresses;
        for (addrinfo* ai = status == 0 ? result : nullptr; ai != nullptr; ai = ai->ai_next) {
          if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
          sockaddr_storage storage{};
          std::memcpy(&storage, ai->ai_addr, ai->ai_addrlen);
          if (storage.ss_family == AF_INET) {
            reinterpret_cast<sockaddr_in*>(&storage)->sin_port = htons(request->port);
          } else {
            reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port = htons(request->port);
          }
          bool seen = std::any_of(addresses.begin(), addresses.end(), [&](const auto& other) {
            return std::memcmp(&other, &storage, sizeof(storage)) == 0;
          });
          if (!seen) addresses.push_back(storage);
        }
        if (status != 0 || addresses.empty()) {
          request->done(absl::UnavailableError(
              StrCat("cannot resolve: ", status != 0 ? UvError(status) : "no address")));
        } else {
          request->done(std::move(addresses));
        }
        uv_freeaddrinfo(result);
      },
      host.c_str(), nullptr, &hints);
  if (rc != 0) {
    auto callback = std::move(request->done);
    delete request;
    callback(absl::UnavailableError(StrCat("cannot resolve: ", UvError(rc))));
  }
}

void TcpConnection::ConnectWithin(uv_loop_t* loop, const sockaddr_storage& address,
                                  uint64_t timeout_ms, ConnectCallback done) {
  // The timer and the connect race; whichever comes first settles. The timer handle is freed
  // in its close callback, which runs after the connect has settled too.
  struct Pending {
    uv_timer_t timer;
    ConnectCallback done;
    bool settled = false;
  };
  auto* pending = new Pending{{}, std::move(done)};
  uv_timer_init(loop, &pending->timer);
  pending->timer.data = pending;
  auto release = [](Pending* p) {
    uv_close(reinterpret_cast<uv_handle_t*>(&p->timer),
             [](uv_handle_t* h) { delete static_cast<Pending*>(h->data); });
  };
  uv_timer_start(
      &pending->timer,
      [](uv_timer_t* t) {
        auto* p = static_cast<Pending*>(t->data);
        if (p->settled) return;
        p->settled = true;
        ConnectCallback callback = std::move(p->done);
        callback(absl::DeadlineExceededError("timed out"));
      },
      timeout_ms, 0);
  Connect(loop, reinterpret_cast<const sockaddr*>(&address),
          [pending, release](absl::StatusOr<std::unique_ptr<TcpConnection>> tcp) {
            bool late = pending->settled;
            pending->settled = true;
            ConnectCallback callback = std::move(pending->done);
            uv_timer_stop(&pending->timer);
            release(pending);
            if (late) {
              if (tcp.ok()) (*tcp)->Close();
              return;
            }
            callback(std::move(tcp));
          });
}

}  // namespace rdv
