// The response side of `/TUNNEL:<name>/` requests (tunnel_path.h): a stage between the target's
// byte stream and the client, on streams that carry tunnelled requests.
//
// 1. frame the responses (http-parser), one per ExpectResponseTo() in request order;
// 2. a final response's head is re-serialized with Location, Content-Location, Refresh and
//    Set-Cookie mapped into the prefix (interim 1xx heads pass unchanged);
// 3. when the service asked for it (rewrite_html) and the response is text/html with identity
//    encoding, the body is decoded, passed through HtmlLinkRewriter and re-framed: chunked for
//    HTTP/1.1 clients, delimited by the end of the connection for HTTP/1.0 clients
//    (close_after_response() then says so); any other body goes through raw;
// 4. after a 101 or a 2xx to CONNECT everything is passed raw.
// Malformed input is not this stage's to judge (HttpResponseFramer, run on the same bytes,
// answers 502 or closes): from the first byte it cannot frame, it passes everything raw.
#ifndef RDV_RELAY_TUNNEL_RESPONSE_STAGE_H_
#define RDV_RELAY_TUNNEL_RESPONSE_STAGE_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "relay/html_link_rewriter.h"
#include "relay/stream_stage.h"
#include "relay/tunnel_path.h"

struct http_parser;  // <http_parser.h>

namespace rdv {

class TunnelResponseStage : public StreamStage {
 public:
  struct Request {
    std::string method;
    TunnelContext tunnel;
    bool rewrite_html = false;   // the service asked for HTML link rewriting
    bool client_http10 = false;  // the client spoke HTTP/1.0: no chunked encoding
  };

  TunnelResponseStage();
  ~TunnelResponseStage() override;
  TunnelResponseStage(const TunnelResponseStage&) = delete;
  TunnelResponseStage& operator=(const TunnelResponseStage&) = delete;

  void ExpectResponseTo(Request request);
  void OnData(std::string_view data, bool end_stream, std::string& out) override;

  // A response whose body was re-framed for an HTTP/1.0 client went out close-delimited: the
  // client connection must end after it.
  bool close_after_response() const { return close_after_response_; }
  // Counts for tests and metrics.
  int heads_rewritten() const { return heads_rewritten_; }
  int bodies_rewritten() const { return bodies_rewritten_; }

 private:
  struct Callbacks;
  enum class Phase { kHead, kBody, kRaw };

  void EmitHead(std::string& out);
  void FinishMessage(std::string& out);
  void EmitBody(std::string_view data, std::string& out);
  void GoRaw(std::string_view rest, std::string& out);

  std::unique_ptr<http_parser> parser_;
  Phase phase_ = Phase::kHead;
  std::deque<Request> expected_;
  // The response being framed.
  std::string head_raw_;
  std::string status_line_;
  std::vector<std::pair<std::string, std::string>> headers_;
  bool last_was_value_ = false;
  bool interim_ = false;
  bool paused_in_head_ = false;
  bool message_complete_ = false;
  std::unique_ptr<HtmlLinkRewriter> rewriter_;  // set while a body is being rewritten
  bool chunked_out_ = false;
  std::string* out_ = nullptr;  // where body callbacks write during an execute
  bool close_after_response_ = false;
  int heads_rewritten_ = 0;
  int bodies_rewritten_ = 0;
};

}  // namespace rdv

#endif  // RDV_RELAY_TUNNEL_RESPONSE_STAGE_H_
