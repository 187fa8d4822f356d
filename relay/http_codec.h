// HTTP/1.x message framing for the relay's HTTP entrypoint, on top of http-parser 2.9.
//
// The relay proxies one client connection onto per-request streams:
//   1. client -> relay: HttpRequestFramer stops after each request head so the relay can route it
//      by Host and re-serialize the head (SerializeRequestHead) with its own headers added;
//   2. the request body is forwarded as the raw bytes the client sent (chunked framing included),
//      and the framer marks where the request ends so the next pipelined request is routed on
//      its own;
//   3. agent -> relay: HttpResponseFramer only finds response boundaries in the raw byte stream
//      the relay forwards unchanged, so the relay knows when each request has been answered and
//      when the connection has become a tunnel (101, or 2xx to CONNECT).
//
// The Debian build of http-parser is non-strict (it accepts, for example, whitespace before a
// header colon and HTTP/0.9 request lines). Because the relay re-serializes request heads while
// forwarding bodies raw, any disagreement between how the relay and the backend frame a request
// is a request-smuggling hole; HttpRequestFramer therefore adds its own checks on top of
// http-parser (see http_codec.cc) and rejects anything it cannot frame unambiguously.

#ifndef RDV_RELAY_HTTP_CODEC_H_
#define RDV_RELAY_HTTP_CODEC_H_

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

struct http_parser;  // <http_parser.h>, kept out of this interface.

namespace rdv {

struct HttpHeader {
  std::string name;   // as the client spelled it
  std::string value;  // surrounding whitespace removed; obs-fold joined as http-parser does
};

struct HttpRequestHead {
  std::string method;  // upper-case, one of http-parser's known methods
  std::string target;  // request-target exactly as sent (origin, absolute, authority or '*')
  int version_major = 1;
  int version_minor = 1;
  std::vector<HttpHeader> headers;  // in wire order
  // Where the request is addressed: the authority of an absolute-form target
  // ("http://host:port/path" -> "host:port", RFC 9112 3.2.2: it overrides Host), the target of
  // CONNECT, otherwise the Host header value. "" if there is none. Not lower-cased, port kept.
  std::string host;
  bool keep_alive = true;  // http_should_keep_alive(): false -> the connection ends after this
  // Connection: upgrade + Upgrade, or CONNECT. Once such a request ends, HttpRequestFramer
  // treats all further client bytes as tunnel bytes.
  bool upgrade = false;

  // First header named `name` (ASCII case-insensitive); "" if absent.
  std::string_view Header(std::string_view name) const;
};

// The head in wire form: request line with the client's method, target and version, then every
// header not named in `drop` (ASCII case-insensitive), then `extra`, then the blank line.
// Dropping Content-Length or Transfer-Encoding would corrupt framing: the body goes out raw.
// `extra` must be well-formed (token names, no CR/LF in values); the relay builds it itself.
std::string SerializeRequestHead(const HttpRequestHead& head,
                                 absl::Span<const std::string_view> drop,
                                 absl::Span<const HttpHeader> extra);

// Frames the client -> relay byte stream into requests. Usage: call Feed() with the unconsumed
// input, drop the first `consumed` bytes, act on the event, and repeat until it returns kNeedMore
// (which always consumes all input, possibly none):
//
//   kHead        a request head is complete: head() is valid until the next kHead. The head's
//                bytes are consumed and not returned; forward SerializeRequestHead(head(), ...).
//   kBody        `data` is raw request body (chunk framing and trailers included) to forward.
//   kMessageEnd  the current request is complete (consumes nothing). What follows is the next
//                request; or, after an upgrade/CONNECT request, tunnel bytes; or, after a
//                request that is not keep-alive, nothing (stray bytes other than CR/LF are
//                an InvalidArgumentError: stop reading from the client instead).
//   kTunnel      `data` is raw bytes after an upgrade/CONNECT request; every later Feed returns
//                kTunnel with all of its input. Switching is automatic: http-parser cannot
//                resume after an upgrade, and if the backend refuses it the bytes still reach
//                the same backend, which frames them itself (they just bypass routing).
//
// Errors (the framer is dead afterwards and keeps returning the same error; inside a body, the
// valid body bytes before the bad byte come first as kBody, then the error):
//   ResourceExhaustedError  head larger than max_head_bytes or more than max_headers headers
//                           (-> 431);
//   InvalidArgumentError    malformed or ambiguous request (-> 400); the message says what.
//                           Beyond http-parser's own checks: HTTP version other than 1.x, an
//                           HTTP/1.1 request without Host, several Host headers, header names
//                           that are not tokens, control characters in the target, and any
//                           Transfer-Encoding/Content-Length combination but a single
//                           Content-Length or a Transfer-Encoding ending in one "chunked".
// Not thread-safe; not movable (http-parser keeps a pointer back to the framer).
class HttpRequestFramer {
 public:
  struct Limits {
    // Bytes of request line + headers + blank line (plus stray CR/LF before the request line).
    // http-parser has a compiled-in ceiling of 80 KiB; larger values are capped by it.
    size_t max_head_bytes = 65536;
    size_t max_headers = 100;
  };
  enum class EventKind { kNeedMore, kHead, kBody, kMessageEnd, kTunnel };
  struct Event {
    EventKind kind = EventKind::kNeedMore;
    size_t consumed = 0;    // length of the input prefix this event accounts for
    std::string_view data;  // kBody/kTunnel: the consumed prefix itself (raw bytes to forward)
  };

  explicit HttpRequestFramer(Limits limits);
  ~HttpRequestFramer();
  HttpRequestFramer(const HttpRequestFramer&) = delete;
  HttpRequestFramer& operator=(const HttpRequestFramer&) = delete;

  absl::StatusOr<Event> Feed(std::string_view input);

  const HttpRequestHead& head() const { return head_; }
  // True once the bytes after an upgrade/CONNECT request are being passed through as kTunnel.
  bool tunneling() const { return phase_ == Phase::kTunnel; }

 private:
  struct Callbacks;  // http-parser callbacks, in the .cc
  enum class Phase { kHead, kBody, kTunnel, kClosed, kFailed };

  absl::StatusOr<Event> FeedHead(std::string_view input);
  absl::StatusOr<Event> FeedBody(std::string_view input);
  absl::Status Fail(absl::Status status);
  absl::Status ParserError() const;
  absl::Status FinishHead();  // validates `building_` and moves it to `head_`

  Limits limits_;
  std::unique_ptr<http_parser> parser_;
  Phase phase_ = Phase::kHead;
  bool message_ended_ = false;  // kMessageEnd owed on the next Feed
  size_t head_bytes_ = 0;       // bytes of the current (incomplete) head consumed so far
  HttpRequestHead building_;    // head being parsed
  bool last_callback_was_value_ = false;
  absl::Status callback_error_;  // why a callback stopped the parser
  absl::Status error_;           // set once the framer is dead
  HttpRequestHead head_;         // last complete head
};

// Finds response boundaries in the agent -> relay byte stream, which the relay forwards raw.
// Call ExpectResponseTo() for each request before feeding bytes of its response, in the order
// the requests were sent (HEAD responses have no body; 2xx to CONNECT starts a tunnel).
// Interim 1xx responses are skipped; 101 and 2xx-to-CONNECT complete a response and switch the
// connection to a tunnel (everything after is raw). Read-until-close bodies end at FinishOnEof().
// Errors are InvalidArgumentError (malformed, or a response nobody asked for; -> 502); the
// framer is dead afterwards. Not thread-safe; not movable.
class HttpResponseFramer {
 public:
  struct Progress {
    int responses_completed = 0;  // final responses that ended within this input / at EOF
    // The connection is a tunnel from input[http_bytes] on; it stays one, later Feeds report
    // tunnel with http_bytes == 0.
    bool tunnel = false;
    size_t http_bytes = 0;          // bytes of the input that were HTTP responses
    bool connection_close = false;  // a completed response was not keep-alive
  };

  HttpResponseFramer();
  ~HttpResponseFramer();
  HttpResponseFramer(const HttpResponseFramer&) = delete;
  HttpResponseFramer& operator=(const HttpResponseFramer&) = delete;

  void ExpectResponseTo(std::string_view method);
  absl::StatusOr<Progress> Feed(std::string_view input);
  // The agent side closed. Completes a read-until-close body; an error if a response was cut
  // short. Responses still owed are visible as pending_responses(). Call at most once, and do
  // not Feed afterwards (FailedPreconditionError).
  absl::StatusOr<Progress> FinishOnEof();

  size_t pending_responses() const { return expected_.size(); }
  bool tunneling() const { return tunnel_; }

 private:
  struct Callbacks;
  enum class RequestKind { kOther, kHead, kConnect };

  absl::StatusOr<Progress> Execute(std::string_view input);

  std::unique_ptr<http_parser> parser_;
  std::deque<RequestKind> expected_;  // requests sent whose final response has not ended
  bool tunnel_ = false;
  bool eof_ = false;
  bool interim_ = false;          // the response being parsed is a 1xx other than 101
  Progress* progress_ = nullptr;  // filled by callbacks during Execute()
  absl::Status callback_error_;
  absl::Status error_;
};

// A complete relay-generated response: "HTTP/1.1 <code> <reason>", Content-Type text/plain
// (UTF-8), Content-Length, Connection: close, and `detail` (CR/LF replaced by spaces) as a
// one-line body.
std::string MakeErrorResponse(int code, std::string_view detail);

}  // namespace rdv

#endif  // RDV_RELAY_HTTP_CODEC_H_
