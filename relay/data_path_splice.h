// The copy loop of a tunnel data path (docs/protocol.md "Tunnel data path", step 3): two plain
// TCP connections, one from each end of a tunnel, joined by the relay once both presented their
// tokens.
//
// 1. answer  `OK\r\n` on both connections, then the bytes either end sent early to the other.
// 2. copy    bytes read on one connection are written unchanged to the other (and to the
//            tunnel_tap_file when one is set). A side stops reading while more than
//            kDataPathHighWatermark bytes wait for the other connection, and reads again once
//            that one drained (TcpConnection::OnDrained).
// 3. end     EOF on one connection half-closes the other (Shutdown after what is queued); once
//            both ended and everything is written, both close. A read or write error on either
//            closes both at once.
//
// Lives on one worker loop; both connections must be on it.
#ifndef RDV_RELAY_DATA_PATH_SPLICE_H_
#define RDV_RELAY_DATA_PATH_SPLICE_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "common/tcp_connection.h"

namespace rdv {

// A side stops reading while the other connection holds more than this many bytes unwritten.
inline constexpr size_t kDataPathHighWatermark = 1 << 20;

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

  // `label` names the splice in logs; `tap_file` is the relay's tunnel_tap_file ("" = none).
  DataPathSplice(End first, End second, std::string label, std::string tap_file, Done done);
  ~DataPathSplice();
  DataPathSplice(const DataPathSplice&) = delete;
  DataPathSplice& operator=(const DataPathSplice&) = delete;

  // Answers OK on both connections and starts copying.
  void Start();
  // Closes both connections now (relay shutdown); `done` does not run.
  void Close();

  uint64_t bytes_forwarded() const { return bytes_forwarded_; }
  // How often a side stopped reading for its partner to drain.
  uint64_t pauses() const { return pauses_; }

 private:
  class Side : public TcpConnection::Handler {
   public:
    Side(DataPathSplice& splice, End end) : splice_(splice), end_(std::move(end)) {}
    void OnRead(std::string_view data) override { splice_.Forward(*this, data); }
    void OnEof() override { splice_.EndOf(*this); }
    void OnError(const absl::Status& status) override { splice_.Fail(*this, status); }
    void OnDrained() override { splice_.Drained(*this); }

    TcpConnection& connection() { return *end_.connection; }
    std::string& early() { return end_.early; }
    bool read_ended = false;          // EOF read: the other connection was shut down
    bool paused_for_partner = false;  // reading stopped while the other side drains

   private:
    DataPathSplice& splice_;
    End end_;
  };

  Side& other(Side& side) { return &side == &first_ ? second_ : first_; }
  void Forward(Side& from, std::string_view data);
  void EndOf(Side& from);
  void Drained(Side& writer);
  void Fail(Side& side, const absl::Status& status);
  void FinishIfDone();
  void Finish(const absl::Status& status);

  Side first_;
  Side second_;
  const std::string label_;
  const std::string tap_file_;
  Done done_;
  bool started_ = false;
  bool finished_ = false;
  uint64_t bytes_forwarded_ = 0;
  uint64_t pauses_ = 0;
};

}  // namespace rdv

#endif  // RDV_RELAY_DATA_PATH_SPLICE_H_
