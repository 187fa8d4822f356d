// A TCP connection on a libuv loop: reads delivered to a handler, writes coalesced, one writer
// in flight at a time, read pause/resume for backpressure.
//
// Writes: what the kernel does not take at once waits in a queue of segments, each either a copy
// of the caller's bytes or bytes lent by a WriteBatch's LendableBuffer (referenced until written,
// not copied: the decrypted bulk that a slow target has not read yet).
//
// Ownership: the TcpConnection owns its uv_tcp_t. Close() starts uv_close; the handle's memory is
// freed in the close callback, independently of this object, so the object may be destroyed
// right after Close() (never from inside its own callback: defer that). The destructor asserts
// that Close() ran (STYLE 6).
#ifndef RDV_COMMON_TCP_CONNECTION_H_
#define RDV_COMMON_TCP_CONNECTION_H_

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rdv {

// "1.2.3.4:5" -> "1.2.3.4"; "[::1]:5" -> "::1" (the form peer_address() and local_address()
// give).
inline std::string HostOfAddress(const std::string& address) {
  if (!address.empty() && address.front() == '[') {
    return address.substr(1, address.find(']') - 1);
  }
  return address.substr(0, address.rfind(':'));
}

class WriteBatch;

class TcpConnection {
 public:
  static constexpr size_t kDrainedWatermark = 256 * 1024;
  // A written buffer up to this size is kept for the next queued write.
  static constexpr size_t kMaxRecycledBuffer = 2 * 1024 * 1024;
  // A write below this size that the kernel takes at once releases the kept buffer.
  static constexpr size_t kLightWrite = 16 * 1024;
  // Bytes lent by a WriteBatch are referenced rather than copied from this size up (a smaller
  // piece would keep a whole buffer alive for little).
  static constexpr size_t kMinLentWrite = 8 * 1024;

  class Handler {
   public:
    virtual ~Handler() = default;
    virtual void OnRead(std::string_view data) = 0;
    virtual void OnEof() = 0;
    // A read or write error; the connection should be closed.
    virtual void OnError(const absl::Status& status) = 0;
    // A write completed and fewer than kDrainedWatermark bytes remain queued (check
    // queued_bytes() for zero before closing).
    virtual void OnDrained() {}
  };

  // Takes an accepted connection from `server`.
  static absl::StatusOr<std::unique_ptr<TcpConnection>> Accept(uv_stream_t* server);
  // Adopts a connected socket fd (moved in from another loop).
  static absl::StatusOr<std::unique_ptr<TcpConnection>> Adopt(uv_loop_t* loop, int fd);
  // Connects; `done` runs once with the connection or an error. The callback owns the result.
  using ConnectCallback = std::function<void(absl::StatusOr<std::unique_ptr<TcpConnection>>)>;
  static void Connect(uv_loop_t* loop, const sockaddr* address, ConnectCallback done);
  // Connect, given up after `timeout_ms` (`done` then gets DeadlineExceededError "timed out", and
  // a connection that completes later is closed). `done` runs once, on the loop.
  static void ConnectWithin(uv_loop_t* loop, const sockaddr_storage& address, uint64_t timeout_ms,
                            ConnectCallback done);

  ~TcpConnection();
  TcpConnection(const TcpConnection&) = delete;
  TcpConnection& operator=(const TcpConnection&) = delete;

  // Sets the handler and starts reading. Bytes given to Unread() are delivered first, from
  // within Start().
  void Start(Handler& handler);
  // Bytes already taken from the socket by a previous reader (e.g. after a PROXY header), to be
  // read again by the handler that Start() gets.
  void Unread(std::string bytes) { unread_ = std::move(bytes) + unread_; }
  // Takes back bytes given to Unread() that no handler has read yet (before a hand-off, which
  // moves only the socket).
  std::string TakeUnread() { return std::exchange(unread_, std::string()); }
  // Replaces the peer address with `address` ("ip:port" / "[ip6]:port"), the original client a
  // load balancer named in a PROXY header.
  absl::Status OverridePeer(std::string_view address);
  void PauseReading();
  void ResumeReading();
  // Writes bytes, or queues what the kernel does not take at once: a copy, or a reference when a
  // WriteBatch with a LendableBuffer lends them. Inside a WriteBatch the bytes wait for the
  // batch's end instead (see WriteBatch).
  void Write(std::string_view data);
  // Half-closes the write side once everything queued is written.
  void Shutdown();
  void Close();

  size_t queued_bytes() const { return queued_bytes_; }
  bool closed() const { return handle_ == nullptr; }
  const std::string& peer_address() const { return peer_; }  // "ip:port"
  const sockaddr_storage& peer_sockaddr() const { return peer_storage_; }
  // "ip:port" of this end of the connection.
  std::string local_address() const;
  uv_loop_t* loop() const { return loop_; }
  // Detaches the socket for handing to another loop: returns a dup of the fd and closes this.
  absl::StatusOr<int> DetachFd();
  // TCP keepalive: after `idle` without traffic, probes every `interval`; `count` unanswered
  // ones fail the connection (a read error, ETIMEDOUT). For connections that carry no pings of
  // their own. Stays with the socket through DetachFd.
  absl::Status SetKeepAlive(absl::Duration idle, absl::Duration interval, int count);

 private:
  explicit TcpConnection(uv_loop_t* loop);
  // Records the peer address (asked of the kernel unless `known`, the address connected to)
  // and turns Nagle off.
  absl::Status InitPeer(const sockaddr* known = nullptr);
  friend class WriteBatch;
  // One piece of a batched write: `data` itself (bytes of the batch's stable buffer) or, when
  // `data` is null, `size` bytes at `offset` in batch_copy_.
  struct BatchedPiece {
    const char* data;
    size_t offset;
    size_t size;
  };
  // Hands what the batch holds to the kernel in one writev and queues the rest; with `notify`,
  // a handler whose bytes all went out hears OnDrained (as it would from a completed write).
  void FlushBatched(bool notify);
  // Queues bytes the kernel did not take: referenced, with `*owner` keeping them alive, when an
  // owner is given and the piece is large enough; else copied.
  void Enqueue(std::string_view data, const std::shared_ptr<const void>* owner);
  void StartWrite();
  static void OnAlloc(uv_handle_t* handle, size_t suggested, uv_buf_t* buf);
  static void OnReadCb(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void OnWriteCb(uv_write_t* req, int status);
  static void OnShutdownCb(uv_shutdown_t* req, int status);

  uv_loop_t* loop_;
  uv_tcp_t* handle_ = nullptr;
  Handler* handler_ = nullptr;
  // Bytes waiting for the kernel, in order (queued_bytes_ counts them and those in flight).
  struct Segment {
    std::string copy;                   // the bytes, when `owner` is null
    std::shared_ptr<const void> owner;  // keeps `lent` alive
    std::string_view lent;
    size_t written = 0;  // bytes at the front that the kernel already took
    std::string_view rest() const {
      return (owner != nullptr ? lent : std::string_view(copy)).substr(written);
    }
  };
  struct WriteRequest;
  // Drops `taken` bytes from the front of `segments`, keeping a written copy's buffer for reuse.
  void Consume(std::vector<Segment>& segments, size_t taken);
  std::vector<Segment> out_;  // not yet handed to a write request
  std::string spare_;         // a written copy's buffer, for the next copy
  bool write_in_flight_ = false;
  bool shutdown_requested_ = false;
  bool shutdown_sent_ = false;
  bool reading_ = false;
  size_t queued_bytes_ = 0;
  std::string peer_;
  sockaddr_storage peer_storage_{};
  std::string unread_;
  WriteBatch* batch_ = nullptr;  // the batch holding this connection's writes, if any
  std::vector<BatchedPiece> batched_;
  std::string batch_copy_;  // batched bytes from outside the batch's stable buffer
};

// A buffer that a reader fills (decrypted records) and hands to a WriteBatch, letting the
// connections written to keep referencing the bytes the kernel did not take at once after the
// batch ends, instead of copying them. Data() returns memory no connection still references:
// the same buffer while none does, else a fresh one (the held one lives until its bytes are
// written). Lending stops while held buffers of the process exceed kMaxHeldBytes, bounding what
// slow receivers can pin: Owner() is then null and connections copy as usual.
class LendableBuffer {
 public:
  static constexpr size_t kMaxHeldBytes = 32 << 20;

  explicit LendableBuffer(size_t size) : size_(size) {}
  ~LendableBuffer();
  LendableBuffer(const LendableBuffer&) = delete;
  LendableBuffer& operator=(const LendableBuffer&) = delete;

  // Where to fill up to size() bytes; valid until the next call.
  char* Data();
  size_t size() const { return size_; }
  // What keeps the memory Data() returned alive, for WriteBatch; null while lending is stopped.
  std::shared_ptr<const void> Owner() const;
  // Bytes of buffers that connections hold and no LendableBuffer fills any more (all threads).
  static size_t HeldBytes();

 private:
  size_t size_;
  std::shared_ptr<char[]> buffer_;
};

// Coalesces writes. While a WriteBatch is in scope on a thread, TcpConnection::Write on that
// thread's connections queues the bytes, and when the batch ends each connection written to
// hands them to the kernel in one writev: a TLS read that decrypts many frames for one socket
// then costs that socket one system call, not one per frame. Bytes that lie inside `stable`
// (a buffer that must not change until the batch ends) are referenced; any others are copied.
// With an `owner` that keeps `stable` alive (LendableBuffer::Owner) the connections may keep
// referencing the bytes the kernel did not take after the batch ends.
// Close, Shutdown and DetachFd write a connection's batched bytes first, so the order of
// everything a connection sends is kept. Batches nest: a connection written to in an inner
// batch first writes what an outer one holds.
class WriteBatch {
 public:
  explicit WriteBatch(std::string_view stable, std::shared_ptr<const void> owner = nullptr);
  ~WriteBatch();
  WriteBatch(const WriteBatch&) = delete;
  WriteBatch& operator=(const WriteBatch&) = delete;

 private:
  friend class TcpConnection;
  // More pieces than this for one connection are written at once (writev takes at most
  // IOV_MAX).
  static constexpr size_t kMaxPieces = 256;
  static WriteBatch* Current();
  bool Holds(std::string_view data) const {
    return data.data() >= stable_.data() &&
           data.data() + data.size() <= stable_.data() + stable_.size();
  }
  void Forget(TcpConnection* connection);

  std::string_view stable_;
  std::shared_ptr<const void> owner_;
  WriteBatch* outer_;
  std::vector<TcpConnection*> connections_;
};

// Formats an address as "1.2.3.4:80" or "[::1]:80".
std::string FormatSockaddr(const sockaddr* address);
// Resolves a numeric "host:port"/"[v6]:port" (or "localhost:port") to a sockaddr.
absl::StatusOr<sockaddr_storage> ResolveNumeric(std::string_view host, uint16_t port);
// Resolves host:port for `socktype` (SOCK_STREAM, SOCK_DGRAM): an IP literal at once (`done` runs
// before this returns), a name through libuv's resolver without blocking the loop (`done` runs on
// the loop later; the caller checks there that its object still exists). Errors read
// "cannot resolve: <reason>".
void ResolveAsync(uv_loop_t* loop, const std::string& host, uint16_t port, int socktype,
                  std::function<void(absl::StatusOr<sockaddr_storage>)> done);
// Same, with every address the name resolves to, in the resolver's order (at least one on
// success; duplicates removed). For callers that must vet each address (an allow-list).
void ResolveAllAsync(uv_loop_t* loop, const std::string& host, uint16_t port, int socktype,
                     std::function<void(absl::StatusOr<std::vector<sockaddr_storage>>)> done);
std::string UvError(int code);

}  // namespace rdv

#endif  // RDV_COMMON_TCP_CONNECTION_H_
