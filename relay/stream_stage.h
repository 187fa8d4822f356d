// The one extension point for stream processing (STYLE.md item 2): a stage is handed a byte
// stream in order, in pieces of any size, and appends what it produces to `out`. Stages keep
// their own bounded state across calls; `end_stream` is the last call and flushes everything.
#ifndef RDV_RELAY_STREAM_STAGE_H_
#define RDV_RELAY_STREAM_STAGE_H_

#include <string>
#include <string_view>

namespace rdv {

class StreamStage {
 public:
  virtual ~StreamStage() = default;
  virtual void OnData(std::string_view data, bool end_stream, std::string& out) = 0;
};

}  // namespace rdv

#endif  // RDV_RELAY_STREAM_STAGE_H_
