// The copy loop of a tunnel data path (docs/protocol.md "Tunnel data path", step 3): two plain
// TCP connections, one from each end of a tunnel, joined by the relay once both presented their
// tokens.
//
// 1. answer  `OK\r\n` on both connections, then the bytes either end sent early to the other.
// 2. copy    bytes read on one connection are written unchanged to the other. Each direction
//            holds a bounded amount for a slow destination and stops reading its source until
//            that drained (backpressure, counted by pauses()).
// 3. end     EOF on one connection half-closes the other once what that direction holds is
//            written; once both ended, both close. A read or write error on either closes both
//            at once.
//
// How the bytes move (data_path_splice.cc):
//  - kernel splice, when there is no tunnel_tap_file: the sockets are detached from their
//    TcpConnections and bytes go socket -> pipe -> socket with splice(2), never through user
//    space. A direction holds at most one pipe (grown to kSplicePipeSize when the kernel allows).
//  - user-space copy, when a tap is set (the tap must see every byte) or pipes are unavailable:
//    TcpConnection reads and writes; a direction holds at most about kDataPathHighWatermark.
//
// Lives on one worker loop; both connections must be on it. The process must ignore SIGPIPE
// (common/process_main.cc does): splice(2) into a socket the peer closed raises it.
#ifndef RDV_RELAY_DATA_PATH_SPLICE_H_
#define RDV_RELAY_DATA_PATH_SPLICE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/tcp_connection.h"

namespace rdv {

// User-space copy: a side stops reading while the other connection holds more than this many
// bytes unwritten.
inline constexpr size_t kDataPathHighWatermark = 1 << 20;
// Kernel splice: the size each direction's pipe is grown to (fs.pipe-max-size permitting).
inline constexpr size_t kSplicePipeSize = 1 << 20;

class DataPathSplice {
 public:
  // One end: its connection (reading paused or not started) and what it sent after its
  // request line, to be forwarded once the splice starts.
  struct End {
    std::unique_ptr<TcpConnection> connection;
    std::string early;
  };
  // Runs once, when both connections are closed: OK status after both ends finished cleanly,
  // else the error that closed them. It may run from inside a connection's callback: the owner
  // destroys the splice later (STYLE 5), never from within `done`.
  using Done = std::function<void(const absl::Status& status)>;

  // `label` names the splice in logs; `tap_file` is the relay's tunnel_tap_file ("" = none,
  // which lets the bytes move by kernel splice).
  DataPathSplice(End first, End second, std::string label, std::string tap_file, Done done);
  ~DataPathSplice();
  DataPathSplice(const DataPathSplice&) = delete;
  DataPathSplice& operator=(const DataPathSplice&) = delete;

  // Answers OK on both connections and starts copying.
  void Start();
  // Closes both connections now (relay shutdown); `done` does not run.
  void Close();

  // Bytes taken from either connection for the other (early bytes included).
  uint64_t bytes_forwarded() const { return bytes_forwarded_; }
  // How often reading a side was paused for its partner to drain.
  uint64_t pauses() const { return pauses_; }
  // Whether the bytes move by kernel splice rather than through user space.
  bool zero_copy() const { return zero_copy_; }

 private:
  // How the bytes move: one of the two strategies above, chosen at construction.
  class Copier;
  class KernelSplice;
  class UserSpaceCopy;

  void Forwarded(size_t bytes);
  void Paused() { ++pauses_; }
  void Fail(const std::string& peer, const absl::Status& status);
  void Finish(const absl::Status& status);

  const std::string label_;
  Done done_;
  std::unique_ptr<Copier> copier_;
  bool zero_copy_ = false;
  bool started_ = false;
  bool finished_ = false;
  uint64_t bytes_forwarded_ = 0;
  uint64_t pauses_ = 0;
};

}  // namespace rdv

#endif  // RDV_RELAY_DATA_PATH_SPLICE_H_
