// Splices a TCP socket onto a link stream until both directions have ended.
//
// Flow: socket bytes -> Stream::Write (reading pauses while the stream is over its watermark);
// stream bytes -> socket write, and stream credit returns (Consumed) only once the socket has
// taken them, so a client that stops reading stalls its own stream and nothing else.
// Half-closes propagate both ways; a reset or socket error aborts the other side.
#ifndef RDV_COMMON_STREAM_SPLICE_H_
#define RDV_COMMON_STREAM_SPLICE_H_

#include <functional>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "common/link.h"
#include "common/tcp_connection.h"

namespace rdv {

class StreamSplice : public TcpConnection::Handler, public StreamHandler {
 public:
  // `done` runs once when the splice has finished; the owner then destroys the splice (deferred,
  // never from inside `done`'s caller stack).
  using DoneCallback = std::function<void(StreamSplice&, const absl::Status&)>;

  // `stream` may be nullptr when the stream is attached later with Attach().
  StreamSplice(std::unique_ptr<TcpConnection> socket, Stream* stream, DoneCallback done);
  ~StreamSplice() override;

  void Attach(Stream& stream) { stream_ = &stream; }
  // Starts moving bytes. `initial` is written to the stream first (bytes already read).
  void Start(std::string_view initial = {});
  // Resets the stream and closes the socket.
  void Abort(std::string_view reason);
  TcpConnection& socket() { return *socket_; }
  Stream* stream() { return stream_; }

  // TcpConnection::Handler
  void OnRead(std::string_view data) override;
  void OnEof() override;
  void OnError(const absl::Status& status) override;
  void OnDrained() override;
  // StreamHandler
  void OnStreamAccepted(Stream& stream) override {}
  void OnStreamData(Stream& stream, std::string_view data) override;
  void OnStreamEnd(Stream& stream) override;
  void OnStreamWritable(Stream& stream) override;
  void OnStreamClosed(Stream& stream, const absl::Status& status) override;

 private:
  void Finish(const absl::Status& status);
  void ReturnCredit();

  std::unique_ptr<TcpConnection> socket_;
  Stream* stream_;
  DoneCallback done_;
  size_t unreturned_credit_ = 0;
  bool stream_closed_ = false;
  bool finished_ = false;
};

}  // namespace rdv

#endif  // RDV_COMMON_STREAM_SPLICE_H_
