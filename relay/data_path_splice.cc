#include "relay/data_path_splice.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <array>
#include <cassert>
#include <cerrno>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "common/data_path.h"
#include "common/metrics.h"
#include "common/str_cat.h"
#include "relay/tunnel_tap.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

Gauge& Active() {
  static Gauge& gauge =
      GaugeOf("rdv_tunnel_data_paths_active", "Tunnel data paths spliced and open now");
  return gauge;
}
Counter& BytesForwarded() {
  static Counter& counter = CounterOf("rdv_tunnel_data_path_bytes_total",
                                      "Bytes copied between the two connections of data paths");
  return counter;
}

absl::Status ErrnoStatus(std::string_view what, int error) {
  return absl::UnavailableError(StrCat(what, ": ", UvError(uv_translate_sys_error(error))));
}

// SPLICE_F_MOVE is only a hint (pages are moved where the kernel can); SPLICE_F_NONBLOCK keeps
// the pipe end from blocking, and the sockets are non-blocking themselves (uv_poll_init).
constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;
// Bytes one direction moves per readiness event before it lets the loop serve others; the
// level-triggered poll calls it again while its source stays readable.
constexpr size_t kBytesPerEvent = 4 << 20;
// A new pipe's capacity on Linux, which it keeps when it may not grow.
constexpr size_t kDefaultPipeSize = 64 * 1024;

// One direction's pipe: two non-blocking fds, each closed exactly once (Close or destructor).
class Pipe {
 public:
  // Grows the pipe towards kSplicePipeSize. The kernel refuses sizes above fs.pipe-max-size,
  // and any growth once the user's pipes hold fs.pipe-user-pages-soft pages: smaller sizes are
  // tried, down to the default.
  static absl::StatusOr<Pipe> Open() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return ErrnoStatus("pipe", errno);
    Pipe pipe(fds[0], fds[1]);
    for (size_t size = kSplicePipeSize; size > kDefaultPipeSize; size /= 2) {
      if (fcntl(pipe.write_fd_, F_SETPIPE_SZ, static_cast<int>(size)) >= 0) break;
    }
    int capacity = fcntl(pipe.write_fd_, F_GETPIPE_SZ);
    pipe.capacity_ = capacity > 0 ? static_cast<size_t>(capacity) : kDefaultPipeSize;
    if (pipe.capacity_ < kDefaultPipeSize) {
      // Past fs.pipe-user-pages-soft new pipes get a page or two: splicing through them would
      // cost a system call per few KiB, more than copying.
      return absl::ResourceExhaustedError(
          StrCat("pipes hold only ", pipe.capacity_, " bytes (fs.pipe-user-pages-soft reached)"));
    }
    return pipe;
  }

  Pipe() = default;
  Pipe(Pipe&& other) noexcept
      : read_fd_(std::exchange(other.read_fd_, -1)),
        write_fd_(std::exchange(other.write_fd_, -1)),
        capacity_(other.capacity_) {}
  Pipe& operator=(Pipe&& other) noexcept {
    if (this != &other) {
      Close();
      read_fd_ = std::exchange(other.read_fd_, -1);
      write_fd_ = std::exchange(other.write_fd_, -1);
      capacity_ = other.capacity_;
    }
    return *this;
  }
  ~Pipe() { Close(); }

  void Close() {
    if (read_fd_ >= 0) ::close(std::exchange(read_fd_, -1));
    if (write_fd_ >= 0) ::close(std::exchange(write_fd_, -1));
  }
  int read_fd() const { return read_fd_; }
  int write_fd() const { return write_fd_; }
  size_t capacity() const { return capacity_; }

 private:
  Pipe(int read_fd, int write_fd) : read_fd_(read_fd), write_fd_(write_fd) {}

  int read_fd_ = -1;
  int write_fd_ = -1;
  size_t capacity_ = 0;
};

}  // namespace

// The strategy behind a splice. It owns both connections from construction; Start() answers
// OK, forwards the early bytes and copies, reporting through the splice's Forwarded, Paused,
// Fail and Finish. Close() (idempotent, also before Start) releases every socket at once and
// reports nothing.
class DataPathSplice::Copier {
 public:
  explicit Copier(DataPathSplice& splice) : splice_(splice) {}
  virtual ~Copier() = default;
  Copier(const Copier&) = delete;
  Copier& operator=(const Copier&) = delete;

  virtual void Start() = 0;
  virtual void Close() = 0;

 protected:
  bool finished() const { return splice_.finished_; }

  DataPathSplice& splice_;
};

// User-space copy, for the tap: TcpConnection reads on one side become writes on the other
// (and appends to the tap file). A side stops reading while the other connection holds more
// than kDataPathHighWatermark bytes unwritten, and reads again once that one drained
// (TcpConnection::OnDrained). EOF half-closes the other connection (Shutdown after what is
// queued); both ended and nothing queued: done.
class DataPathSplice::UserSpaceCopy final : public DataPathSplice::Copier {
 public:
  UserSpaceCopy(DataPathSplice& splice, End first, End second, std::string tap_file)
      : Copier(splice),
        first_(*this, std::move(first)),
        second_(*this, std::move(second)),
        tap_file_(std::move(tap_file)) {}

  void Start() override {
    // Handlers first: a write that fails reports to them.
    first_.connection().Start(first_);
    second_.connection().Start(second_);
    for (Side* side : {&first_, &second_}) {
      side->connection().Write(kDataPathOk);
      if (finished()) return;
    }
    for (Side* side : {&first_, &second_}) {
      std::string early = std::exchange(side->early(), std::string());
      if (!early.empty()) Forward(*side, early);
      if (finished()) return;
    }
  }

  void Close() override {
    first_.connection().Close();
    second_.connection().Close();
  }

 private:
  class Side : public TcpConnection::Handler {
   public:
    Side(UserSpaceCopy& copy, End end) : copy_(copy), end_(std::move(end)) {}
    void OnRead(std::string_view data) override { copy_.Forward(*this, data); }
    void OnEof() override { copy_.EndOf(*this); }
    void OnError(const absl::Status& status) override {
      copy_.splice_.Fail(connection().peer_address(), status);
    }
    void OnDrained() override { copy_.Drained(*this); }

    TcpConnection& connection() { return *end_.connection; }
    std::string& early() { return end_.early; }
    bool read_ended = false;          // EOF read: the other connection was shut down
    bool paused_for_partner = false;  // reading stopped while the other side drains

   private:
    UserSpaceCopy& copy_;
    End end_;
  };

  Side& other(Side& side) { return &side == &first_ ? second_ : first_; }

  void Forward(Side& from, std::string_view data) {
    if (finished()) return;
    TapAppend(tap_file_, data);
    splice_.Forwarded(data.size());
    Side& to = other(from);
    to.connection().Write(data);
    if (finished()) return;  // the write failed and closed both
    if (to.connection().queued_bytes() > kDataPathHighWatermark) {
      if (!from.paused_for_partner) splice_.Paused();
      from.connection().PauseReading();
      from.paused_for_partner = true;
    }
  }

  void EndOf(Side& from) {
    if (finished()) return;
    from.read_ended = true;
    other(from).connection().Shutdown();
    FinishIfDone();
  }

  void Drained(Side& writer) {
    if (finished()) return;
    Side& reader = other(writer);
    if (reader.paused_for_partner && writer.connection().queued_bytes() <= kDataPathHighWatermark) {
      reader.paused_for_partner = false;
      if (!reader.read_ended) reader.connection().ResumeReading();
    }
    FinishIfDone();
  }

  void FinishIfDone() {
    // Both directions ended and everything was handed to the kernel: closing now sends the
    // last bytes and the FIN of each connection.
    if (first_.read_ended && second_.read_ended && first_.connection().queued_bytes() == 0 &&
        second_.connection().queued_bytes() == 0) {
      splice_.Finish(absl::OkStatus());
    }
  }

  Side first_;
  Side second_;
  const std::string tap_file_;
};

// Kernel splice, without a tap: each socket is detached from its TcpConnection and polled with
// a uv_poll_t of its own (libuv allows one per fd, so a socket's poll serves both directions);
// each direction owns a pipe and is always in one of three states:
//
// 1. reading  nothing held: the source is polled readable and spliced into the empty pipe
//             (so EAGAIN there can only mean an empty socket), then at once on:
// 2. writing  the destination did not take everything (EAGAIN): the rest stays in the pipe
//             (or in the OK/early prefix, written before anything spliced), the destination is
//             polled writable and the source is not read (a pause), so a direction holds at
//             most one pipeful. Once it drained, back to reading.
// 3. ended    the source's EOF was read with nothing held: the destination was shut down for
//             writing. Both directions ended: the splice finishes.
//
// Any error on either socket fails the splice, which closes both.
class DataPathSplice::KernelSplice final : public DataPathSplice::Copier {
 public:
  KernelSplice(DataPathSplice& splice, End first, End second, std::array<Pipe, 2> pipes)
      : Copier(splice) {
    sockets_[0].end = std::move(first);
    sockets_[1].end = std::move(second);
    for (int i : {0, 1}) {
      Socket& socket = sockets_[i];
      socket.splice = this;
      socket.peer = socket.end.connection->peer_address();
      Direction& direction = directions_[i];
      direction.from = &socket;
      direction.to = &sockets_[1 - i];
      direction.pipe = std::move(pipes[i]);
    }
  }

  ~KernelSplice() override {
    // STYLE 6: the splice closes its copier before destroying it.
    assert(sockets_[0].polled == nullptr && sockets_[1].polled == nullptr &&
           "KernelSplice destroyed without Close()");
    Close();
  }

  void Start() override {
    for (Socket& socket : sockets_) {
      if (absl::Status detached = Detach(socket); !detached.ok()) {
        splice_.Fail(socket.peer, detached);
        return;
      }
    }
    spdlog::debug("data path {}: splicing in the kernel through pipes of {} and {} bytes",
                  splice_.label_, directions_[0].pipe.capacity(), directions_[1].pipe.capacity());
    for (Direction& direction : directions_) {
      std::string& early = direction.from->end.early;
      direction.prefix = StrCat(kDataPathOk, early);
      splice_.Forwarded(early.size());
      std::string().swap(early);
    }
    for (Direction& direction : directions_) {
      Pump(direction);
      if (finished()) return;
    }
    UpdatePolls();
  }

  void Close() override {
    for (Socket& socket : sockets_) {
      if (socket.end.connection) {
        socket.end.connection->Close();
        socket.end.connection.reset();
      }
      if (socket.polled != nullptr) {
        socket.polled->poll.data = nullptr;
        uv_close(reinterpret_cast<uv_handle_t*>(&socket.polled->poll), [](uv_handle_t* handle) {
          auto* polled = reinterpret_cast<PolledFd*>(handle);
          ::close(polled->fd);
          delete polled;
        });
        socket.polled = nullptr;
      }
    }
    for (Direction& direction : directions_) direction.pipe.Close();
  }

 private:
  // A detached socket and its poll handle, released together in the handle's close callback:
  // libuv must have stopped polling an fd before it is closed. `poll` comes first, so the
  // handle's address is this struct's.
  struct PolledFd {
    uv_poll_t poll;
    int fd;
  };
  struct Socket {
    KernelSplice* splice = nullptr;
    End end;  // the connection, until Start() detaches its socket
    PolledFd* polled = nullptr;
    int events = 0;  // what the poll was last started for
    std::string peer;
    int fd() const { return polled->fd; }
  };
  enum class State { kReading, kWriting, kEnded };
  struct Direction {
    Socket* from = nullptr;
    Socket* to = nullptr;
    Pipe pipe;
    size_t held = 0;     // bytes in the pipe
    std::string prefix;  // OK and the source's early bytes: written before any spliced byte
    size_t prefix_written = 0;
    bool source_ended = false;  // EOF read
    State state = State::kReading;
  };

  // Takes the socket out of its TcpConnection (which closes) and polls it on the same loop.
  static absl::Status Detach(Socket& socket) {
    uv_loop_t* loop = socket.end.connection->loop();
    absl::StatusOr<int> fd = socket.end.connection->DetachFd();
    if (!fd.ok()) return fd.status();  // the connection is still open: Close() closes it
    socket.end.connection.reset();
    auto* polled = new PolledFd{{}, *fd};
    if (int rc = uv_poll_init(loop, &polled->poll, *fd); rc != 0) {
      ::close(*fd);
      delete polled;
      return absl::UnavailableError(StrCat("poll: ", UvError(rc)));
    }
    polled->poll.data = &socket;
    socket.polled = polled;
    return absl::OkStatus();
  }

  Direction& OutOf(const Socket& socket) {
    return directions_[0].from == &socket ? directions_[0] : directions_[1];
  }
  Direction& Into(const Socket& socket) {
    return directions_[0].to == &socket ? directions_[0] : directions_[1];
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* socket = static_cast<Socket*>(handle->data);
    if (socket != nullptr) socket->splice->OnEvents(*socket, status, events);
  }

  void OnEvents(Socket& socket, int status, int events) {
    if (finished()) return;
    if (status < 0) {
      // libuv reports EPOLLERR (a reset, say) as UV_EBADF and stops the poll: the socket's
      // pending error says what happened.
      socket.events = 0;
      splice_.Fail(socket.peer, SocketError(socket.fd(), status));
      return;
    }
    // Writable first: what it drains lets the other direction's reads go on.
    if (events & UV_WRITABLE) Pump(Into(socket));
    if (!finished() && (events & UV_READABLE)) Pump(OutOf(socket));
    if (!finished()) UpdatePolls();
  }

  // Moves `direction` on until it waits for an event, ends, fails, or has moved
  // kBytesPerEvent.
  void Pump(Direction& direction) {
    for (size_t moved = 0;;) {
      if (direction.state == State::kEnded || !Drain(direction)) return;
      if (direction.source_ended) {
        EndOf(direction);
        return;
      }
      if (moved >= kBytesPerEvent) return;
      ssize_t n;
      do {
        n = splice(direction.from->fd(), nullptr, direction.pipe.write_fd(), nullptr,
                   direction.pipe.capacity(), kSpliceFlags);
      } while (n < 0 && errno == EINTR);
      if (n > 0) {
        direction.held += static_cast<size_t>(n);
        moved += static_cast<size_t>(n);
        splice_.Forwarded(static_cast<size_t>(n));
      } else if (n == 0) {
        direction.source_ended = true;
      } else if (errno == EAGAIN) {
        return;  // the pipe is empty: the socket is
      } else {
        splice_.Fail(direction.from->peer, ErrnoStatus("splice from socket", errno));
        return;
      }
    }
  }

  // Writes what `direction` holds to its destination; true once nothing is held (reading may
  // go on), false when the destination is full (the direction now waits for it) or failed.
  bool Drain(Direction& direction) {
    Socket& to = *direction.to;
    while (direction.prefix_written < direction.prefix.size()) {
      ssize_t n =
          send(to.fd(), direction.prefix.data() + direction.prefix_written,
               direction.prefix.size() - direction.prefix_written, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Stalled(direction, errno, "write");
      direction.prefix_written += static_cast<size_t>(n);
    }
    if (!direction.prefix.empty()) {
      std::string().swap(direction.prefix);
      direction.prefix_written = 0;
    }
    while (direction.held > 0) {
      ssize_t n =
          splice(direction.pipe.read_fd(), nullptr, to.fd(), nullptr, direction.held, kSpliceFlags);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Stalled(direction, errno, "splice to socket");
      if (n == 0) {
        splice_.Fail(to.peer, absl::InternalError("splice moved nothing out of a full pipe"));
        return false;
      }
      direction.held -= static_cast<size_t>(n);
    }
    direction.state = State::kReading;
    return true;
  }

  // The destination did not take everything. EAGAIN: the direction waits for it to be
  // writable and does not read its source meanwhile (a pause, counted once per wait). Any
  // other error (EPIPE, ECONNRESET...) fails the splice.
  bool Stalled(Direction& direction, int error, std::string_view what) {
    if (error != EAGAIN && error != EWOULDBLOCK) {
      splice_.Fail(direction.to->peer, ErrnoStatus(what, error));
      return false;
    }
    if (direction.state != State::kWriting) {
      direction.state = State::kWriting;
      splice_.Paused();
    }
    return false;
  }

  // The source's EOF with nothing held: half-close the destination.
  void EndOf(Direction& direction) {
    direction.state = State::kEnded;
    // ENOTCONN: the destination's peer is already gone, which its own direction reports.
    if (shutdown(direction.to->fd(), SHUT_WR) != 0 && errno != ENOTCONN) {
      splice_.Fail(direction.to->peer, ErrnoStatus("shutdown", errno));
      return;
    }
    if (directions_[0].state == State::kEnded && directions_[1].state == State::kEnded) {
      splice_.Finish(absl::OkStatus());
    }
  }

  // Polls each socket for what its two directions wait on: readable while it is the source of
  // a reading direction, writable while it is the destination of a writing one. The poll is
  // restarted only when that set changes, and stopped when it is empty.
  void UpdatePolls() {
    for (Socket& socket : sockets_) {
      int events = 0;
      if (OutOf(socket).state == State::kReading) events |= UV_READABLE;
      if (Into(socket).state == State::kWriting) events |= UV_WRITABLE;
      if (events == socket.events) continue;
      socket.events = events;
      int rc = events == 0 ? uv_poll_stop(&socket.polled->poll)
                           : uv_poll_start(&socket.polled->poll, events, OnPoll);
      if (rc != 0) {
        splice_.Fail(socket.peer, absl::UnavailableError(StrCat("poll: ", UvError(rc))));
        return;
      }
    }
  }

  static absl::Status SocketError(int fd, int status) {
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error != 0) {
      return ErrnoStatus("socket", error);
    }
    return absl::UnavailableError(StrCat("poll: ", UvError(status)));
  }

  std::array<Socket, 2> sockets_;
  std::array<Direction, 2> directions_;  // [0] first -> second, [1] second -> first
};

DataPathSplice::DataPathSplice(End first, End second, std::string label, std::string tap_file,
                               Done done)
    : label_(std::move(label)), done_(std::move(done)) {
  // Bytes a previous reader gave back (none on today's paths) follow the early ones.
  for (End* end : {&first, &second}) {
    end->early.append(end->connection->TakeUnread());
    // No pings on a data path: keepalive notices an agent gone silently (docs/protocol.md).
    if (absl::Status keepalive = end->connection->SetKeepAlive(
            kDataPathKeepAliveIdle, kDataPathKeepAliveInterval, kDataPathKeepAliveCount);
        !keepalive.ok()) {
      spdlog::warn("data path {}: {}", label_, keepalive.message());
    }
  }
  if (tap_file.empty()) {
    absl::StatusOr<Pipe> to_second = Pipe::Open();
    absl::StatusOr<Pipe> to_first = Pipe::Open();
    if (to_second.ok() && to_first.ok()) {
      copier_ = std::make_unique<KernelSplice>(
          *this, std::move(first), std::move(second),
          std::array<Pipe, 2>{*std::move(to_second), *std::move(to_first)});
      zero_copy_ = true;
      return;
    }
    spdlog::warn("data path {}: no pipe for splice ({}), copying through user space", label_,
                 (to_second.ok() ? to_first : to_second).status().message());
  }
  copier_ = std::make_unique<UserSpaceCopy>(*this, std::move(first), std::move(second),
                                            std::move(tap_file));
}

DataPathSplice::~DataPathSplice() { Close(); }

void DataPathSplice::Start() {
  if (started_ || finished_) return;
  started_ = true;
  Active().Inc();
  copier_->Start();
}

void DataPathSplice::Forwarded(size_t bytes) {
  bytes_forwarded_ += bytes;
  BytesForwarded().Inc(bytes);
}

void DataPathSplice::Fail(const std::string& peer, const absl::Status& status) {
  if (finished_) return;
  spdlog::info("data path {}: connection from {} failed: {}", label_, peer, status.message());
  Finish(status);
}

void DataPathSplice::Finish(const absl::Status& status) {
  if (finished_) return;
  Close();
  spdlog::info("data path {} closed after {} bytes ({} pauses for a slow reader){}{}", label_,
               bytes_forwarded_, pauses_, status.ok() ? "" : ": ", status.message());
  if (done_) done_(status);
}

void DataPathSplice::Close() {
  if (finished_) return;
  finished_ = true;
  if (started_) Active().Dec();
  copier_->Close();
}

}  // namespace rdv
