#include "relay/data_path_splice.h"

#include <utility>

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

}  // namespace

DataPathSplice::DataPathSplice(End first, End second, std::string label, std::string tap_file,
                               Done done)
    : first_(*this, std::move(first)),
      second_(*this, std::move(second)),
      label_(std::move(label)),
      tap_file_(std::move(tap_file)),
      done_(std::move(done)) {}

DataPathSplice::~DataPathSplice() { Close(); }

void DataPathSplice::Start() {
  started_ = true;
  Active().Inc();
  // Handlers first: a write that fails reports to them.
  first_.connection().Start(first_);
  second_.connection().Start(second_);
  for (Side* side : {&first_, &second_}) {
    side->connection().Write(kDataPathOk);
    if (finished_) return;
  }
  for (Side* side : {&first_, &second_}) {
    std::string early = std::exchange(side->early(), std::string());
    if (!early.empty()) Forward(*side, early);
    if (finished_) return;
  }
}

void DataPathSplice::Forward(Side& from, std::string_view data) {
  if (finished_) return;
  TapAppend(tap_file_, data);
  bytes_forwarded_ += data.size();
  BytesForwarded().Inc(data.size());
  Side& to = other(from);
  to.connection().Write(data);
  if (finished_) return;  // the write failed and closed both
  if (to.connection().queued_bytes() > kDataPathHighWatermark) {
    if (!from.paused_for_partner) ++pauses_;
    from.connection().PauseReading();
    from.paused_for_partner = true;
  }
}

void DataPathSplice::EndOf(Side& from) {
  if (finished_) return;
  from.read_ended = true;
  other(from).connection().Shutdown();
  FinishIfDone();
}

void DataPathSplice::Drained(Side& writer) {
  if (finished_) return;
  Side& reader = other(writer);
  if (reader.paused_for_partner && writer.connection().queued_bytes() <= kDataPathHighWatermark) {
    reader.paused_for_partner = false;
    if (!reader.read_ended) reader.connection().ResumeReading();
  }
  FinishIfDone();
}

void DataPathSplice::Fail(Side& side, const absl::Status& status) {
  if (finished_) return;
  spdlog::info("data path {}: connection from {} failed: {}", label_,
               side.connection().peer_address(), status.message());
  Finish(status);
}

void DataPathSplice::FinishIfDone() {
  // Both directions ended and everything was handed to the kernel: closing now sends the
  // last bytes and the FIN of each connection.
  if (first_.read_ended && second_.read_ended && first_.connection().queued_bytes() == 0 &&
      second_.connection().queued_bytes() == 0) {
    Finish(absl::OkStatus());
  }
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
  first_.connection().Close();
  second_.connection().Close();
}

}  // namespace rdv
