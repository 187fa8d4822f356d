#include "common/stream_splice.h"

#include "common/str_cat.h"

namespace rdv {
namespace {
// Socket-side buffering allowed before stream credit is withheld.
constexpr size_t kSocketHighWatermark = 256 * 1024;
}  // namespace

StreamSplice::StreamSplice(std::unique_ptr<TcpConnection> socket, Stream* stream, DoneCallback done)
    : socket_(std::move(socket)), stream_(stream), done_(std::move(done)) {}

StreamSplice::~StreamSplice() {
  if (stream_ != nullptr && !stream_closed_) stream_->Reset("splice destroyed");
  socket_->Close();
}

void StreamSplice::Start(std::string_view initial) {
  if (!initial.empty() && !stream_->Write(initial)) socket_->PauseReading();
  socket_->Start(*this);
}

void StreamSplice::Abort(std::string_view reason) {
  if (stream_ != nullptr && !stream_closed_) {
    stream_closed_ = true;
    Stream* stream = stream_;
    stream_ = nullptr;
    stream->Reset(reason);
  }
  Finish(absl::AbortedError(AbslView(reason)));
}

void StreamSplice::OnRead(std::string_view data) {
  if (stream_closed_) return;
  if (!stream_->Write(data)) socket_->PauseReading();
}

void StreamSplice::OnEof() {
  if (!stream_closed_) stream_->End();
}

void StreamSplice::OnError(const absl::Status& status) {
  Abort(StrCat("socket error: ", status.message()));
}

void StreamSplice::OnDrained() {
  ReturnCredit();
  if (stream_closed_ && socket_->queued_bytes() == 0) Finish(absl::OkStatus());
}

void StreamSplice::ReturnCredit() {
  if (unreturned_credit_ == 0 || stream_closed_) return;
  if (socket_->queued_bytes() >= kSocketHighWatermark) return;
  size_t n = unreturned_credit_;
  unreturned_credit_ = 0;
  stream_->Consumed(n);
}

void StreamSplice::OnStreamData(Stream& stream, std::string_view data) {
  socket_->Write(data);
  unreturned_credit_ += data.size();
  ReturnCredit();
}

void StreamSplice::OnStreamEnd(Stream& stream) { socket_->Shutdown(); }

void StreamSplice::OnStreamWritable(Stream& stream) { socket_->ResumeReading(); }

void StreamSplice::OnStreamClosed(Stream& stream, const absl::Status& status) {
  stream_closed_ = true;
  stream_ = nullptr;
  if (!status.ok()) {
    Finish(status);
    return;
  }
  // Clean end: let the socket flush what the stream delivered, then finish.
  if (socket_->queued_bytes() == 0) Finish(absl::OkStatus());
}

void StreamSplice::Finish(const absl::Status& status) {
  if (finished_) return;
  finished_ = true;
  socket_->Close();
  if (done_) done_(*this, status);
}

}  // namespace rdv
