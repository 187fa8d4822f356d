#include "relay/http_codec.h"

#include <http_parser.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace rdv {
namespace {

// Debian's Abseil has its own absl::string_view; the interfaces here use std::string_view.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Any return value other than 0 stops http-parser with HPE_CB_*. From on_headers_complete, 1 and
// 2 mean "no body" / "no body, then a tunnel", so stopping uses -1 everywhere.
constexpr int kStopParser = -1;

bool IsTokenChar(unsigned char c) {
  if (absl::ascii_isalnum(c)) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return IsTokenChar(c); });
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// "scheme://[userinfo@]authority[/path?query#fragment]" -> authority; "" if not absolute-form.
// http-parser has already checked the URL's syntax.
std::string_view AbsoluteFormAuthority(std::string_view target) {
  const size_t scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos || scheme_end == 0) return {};
  for (char c : target.substr(0, scheme_end)) {
    if (!absl::ascii_isalpha(static_cast<unsigned char>(c))) return {};
  }
  std::string_view authority = target.substr(scheme_end + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  if (const size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  return authority;
}

absl::Status MalformedRequest(std::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("malformed HTTP request: ", AsAbsl(why)));
}

// http-parser decides how the body is framed and the relay forwards it raw, but the backend
// frames it again from the headers the relay re-serializes. Any header set on which the two could
// disagree is refused (RFC 9112 6.1, 6.3; the classic TE/CL request-smuggling cases).
absl::Status CheckRequestFraming(const HttpRequestHead& head, const http_parser& parser) {
  int content_lengths = 0;
  std::string_view content_length;
  bool has_transfer_encoding = false;
  std::vector<std::string> codings;
  for (const HttpHeader& header : head.headers) {
    if (absl::EqualsIgnoreCase(header.name, "content-length")) {
      ++content_lengths;
      content_length = header.value;
    } else if (absl::EqualsIgnoreCase(header.name, "transfer-encoding")) {
      has_transfer_encoding = true;
      for (absl::string_view piece : absl::StrSplit(header.value, ',')) {
        std::string_view coding = TrimOws(std::string_view(piece.data(), piece.size()));
        if (!coding.empty()) codings.push_back(absl::AsciiStrToLower(AsAbsl(coding)));
      }
    }
  }
  const bool parser_chunked = (parser.flags & F_CHUNKED) != 0;
  if (has_transfer_encoding) {
    if (content_lengths > 0) {
      return MalformedRequest("both Transfer-Encoding and Content-Length");
    }
    if (codings.empty() || codings.back() != "chunked" ||
        std::count(codings.begin(), codings.end(), "chunked") != 1 || !parser_chunked) {
      return MalformedRequest("Transfer-Encoding must end in a single \"chunked\"");
    }
    return absl::OkStatus();
  }
  if (parser_chunked) return MalformedRequest("ambiguous body framing");
  if (content_lengths > 1) return MalformedRequest("more than one Content-Length");
  if (content_lengths == 1) {
    uint64_t length = 0;
    if (content_length.empty() ||
        !absl::ascii_isdigit(static_cast<unsigned char>(content_length[0])) ||
        !absl::SimpleAtoi(AsAbsl(content_length), &length) || length != parser.content_length) {
      return MalformedRequest("invalid Content-Length");
    }
  }
  return absl::OkStatus();
}

// Maps the error http-parser stopped with. `callback_error` explains a HPE_CB_* stop.
absl::Status ParserError(const http_parser& parser, const absl::Status& callback_error,
                         std::string_view what) {
  const auto error = HTTP_PARSER_ERRNO(&parser);
  if (error >= HPE_CB_message_begin && error <= HPE_CB_chunk_complete && !callback_error.ok()) {
    return callback_error;
  }
  switch (error) {
    case HPE_HEADER_OVERFLOW:
      return absl::ResourceExhaustedError(absl::StrCat("HTTP ", AsAbsl(what), " head larger than ",
                                                       HTTP_MAX_HEADER_SIZE, " bytes"));
    case HPE_UNEXPECTED_CONTENT_LENGTH:
      return absl::InvalidArgumentError(
          absl::StrCat("malformed HTTP ", AsAbsl(what),
                       ": conflicting Content-Length/Transfer-Encoding headers"));
    case HPE_INVALID_TRANSFER_ENCODING:
      return absl::InvalidArgumentError(absl::StrCat(
          "malformed HTTP ", AsAbsl(what), ": Transfer-Encoding does not end in chunked"));
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("malformed HTTP ", AsAbsl(what), ": ", http_errno_description(error)));
  }
}

}  // namespace

std::string_view HttpRequestHead::Header(std::string_view name) const {
  for (const HttpHeader& header : headers) {
    if (absl::EqualsIgnoreCase(header.name, AsAbsl(name))) return header.value;
  }
  return {};
}

std::string SerializeRequestHead(const HttpRequestHead& head,
                                 absl::Span<const std::string_view> drop,
                                 absl::Span<const HttpHeader> extra) {
  std::string out = absl::StrCat(head.method, " ", head.target, " HTTP/", head.version_major, ".",
                                 head.version_minor, "\r\n");
  auto append = [&out](const HttpHeader& header) {
    absl::StrAppend(&out, header.name, ": ", header.value, "\r\n");
  };
  for (const HttpHeader& header : head.headers) {
    const bool dropped = std::any_of(drop.begin(), drop.end(), [&](std::string_view name) {
      return absl::EqualsIgnoreCase(header.name, AsAbsl(name));
    });
    if (!dropped) append(header);
  }
  for (const HttpHeader& header : extra) append(header);
  out += "\r\n";
  return out;
}

// ---------------------------------------------------------------------------------------------
// HttpRequestFramer
//
// http-parser is run so that it never runs past a point the relay must act on:
//   - on_headers_complete pauses it. http-parser then returns *before* the byte it was on, the
//     head's final LF; Feed runs that byte on its own, which settles the body framing (or ends
//     a body-less request) without parsing any body.
//   - on_message_complete pauses it, so one execute never spans two requests and the count it
//     returns is exactly where the request ends.
// Body bytes are never taken from on_body: whatever http-parser consumes between the head and
// the end of the request is forwarded as is.

struct HttpRequestFramer::Callbacks {
  static HttpRequestFramer& Self(http_parser* parser) {
    return *static_cast<HttpRequestFramer*>(parser->data);
  }

  static int OnMessageBegin(http_parser* parser) {
    HttpRequestFramer& self = Self(parser);
    self.building_ = HttpRequestHead();
    self.last_callback_was_value_ = false;
    return 0;
  }

  static int OnUrl(http_parser* parser, const char* at, size_t length) {
    Self(parser).building_.target.append(at, length);
    return 0;
  }

  static int OnHeaderField(http_parser* parser, const char* at, size_t length) {
    HttpRequestFramer& self = Self(parser);
    if (self.phase_ != Phase::kHead) return 0;  // chunked trailers: forwarded raw with the body
    std::vector<HttpHeader>& headers = self.building_.headers;
    if (headers.empty() || self.last_callback_was_value_) {
      // max_headers is enforced in FinishHead: a name reported in pieces (split input) must not
      // trip it before a syntax error that whole input would report. Memory stays bounded by
      // max_head_bytes meanwhile.
      headers.emplace_back();
      self.last_callback_was_value_ = false;
    }
    headers.back().name.append(at, length);  // a name may arrive in pieces
    return 0;
  }

  static int OnHeaderValue(http_parser* parser, const char* at, size_t length) {
    HttpRequestFramer& self = Self(parser);
    if (self.phase_ != Phase::kHead) return 0;
    // http-parser reports a (possibly empty) value after every name; folded continuation lines
    // arrive as further pieces of the same value.
    self.building_.headers.back().value.append(at, length);
    self.last_callback_was_value_ = true;
    return 0;
  }

  static int OnHeadersComplete(http_parser* parser) {
    HttpRequestFramer& self = Self(parser);
    if (self.phase_ != Phase::kHead) return 0;
    if (absl::Status status = self.FinishHead(); !status.ok()) {
      self.callback_error_ = std::move(status);
      return kStopParser;
    }
    http_parser_pause(parser, 1);
    return 0;
  }

  static int OnMessageComplete(http_parser* parser) {
    http_parser_pause(parser, 1);
    return 0;
  }

  static const http_parser_settings& Settings() {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_message_begin = &OnMessageBegin;
      s.on_url = &OnUrl;
      s.on_header_field = &OnHeaderField;
      s.on_header_value = &OnHeaderValue;
      s.on_headers_complete = &OnHeadersComplete;
      s.on_message_complete = &OnMessageComplete;
      return s;
    }();
    return settings;
  }
};

HttpRequestFramer::HttpRequestFramer(Limits limits)
    : limits_(limits), parser_(std::make_unique<http_parser>()) {
  http_parser_init(parser_.get(), HTTP_REQUEST);
  parser_->data = this;
}

HttpRequestFramer::~HttpRequestFramer() = default;

absl::Status HttpRequestFramer::FinishHead() {
  HttpRequestHead& head = building_;
  const http_parser& parser = *parser_;
  if (head.headers.size() > limits_.max_headers) {
    return absl::ResourceExhaustedError(
        absl::StrCat("HTTP request has more than ", limits_.max_headers, " headers"));
  }
  // The non-strict http-parser also accepts HTTP/0.9-style lines and any digit as version.
  if (parser.http_major != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported HTTP version ", parser.http_major, ".", parser.http_minor));
  }
  head.version_major = parser.http_major;
  head.version_minor = parser.http_minor;
  head.method = http_method_str(static_cast<http_method>(parser.method));
  // It also lets a tab or 8-bit bytes into the target; a tab would split the re-serialized
  // request line differently at the backend.
  for (char c : head.target) {
    if (static_cast<unsigned char>(c) <= ' ' || c == '\x7f') {
      return MalformedRequest("control character in request target");
    }
  }
  int hosts = 0;
  for (HttpHeader& header : head.headers) {
    // ... and whitespace before the colon ("Transfer-Encoding : chunked"), which it then treats
    // as the header proper while many backends would not (RFC 9112 5.1: reject).
    if (!IsToken(header.name)) {
      return MalformedRequest(
          absl::StrCat("invalid header name \"", absl::CEscape(header.name), "\""));
    }
    header.value = std::string(TrimOws(header.value));
    if (absl::EqualsIgnoreCase(header.name, "host")) ++hosts;
  }
  // Two Host headers could route here to one service and be read by the backend as another.
  if (hosts > 1) return MalformedRequest("more than one Host header");
  if (absl::Status framing = CheckRequestFraming(head, parser); !framing.ok()) return framing;

  if (parser.method == HTTP_CONNECT) {
    head.host = head.target;
  } else if (std::string_view authority = AbsoluteFormAuthority(head.target); !authority.empty()) {
    head.host = std::string(authority);
  } else {
    head.host = std::string(head.Header("host"));
    // RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
    if (hosts == 0 && head.version_minor >= 1) return MalformedRequest("missing Host header");
  }
  head.keep_alive = http_should_keep_alive(&parser) != 0;
  head.upgrade = parser.upgrade != 0;
  head_ = std::move(building_);
  return absl::OkStatus();
}

absl::Status HttpRequestFramer::Fail(absl::Status status) {
  phase_ = Phase::kFailed;
  error_ = std::move(status);
  return error_;
}

absl::Status HttpRequestFramer::ParserError() const {
  return rdv::ParserError(*parser_, callback_error_, "request");
}

absl::StatusOr<HttpRequestFramer::Event> HttpRequestFramer::Feed(std::string_view input) {
  if (phase_ == Phase::kFailed) return error_;
  if (message_ended_) {
    message_ended_ = false;
    if (head_.upgrade) {
      phase_ = Phase::kTunnel;
    } else if (!head_.keep_alive) {
      phase_ = Phase::kClosed;
    } else {
      phase_ = Phase::kHead;
    }
    return Event{EventKind::kMessageEnd, 0, {}};
  }
  switch (phase_) {
    case Phase::kTunnel:
      return Event{input.empty() ? EventKind::kNeedMore : EventKind::kTunnel, input.size(), input};
    case Phase::kClosed:
      // Like strict http-parser: stray line ends after the last request are tolerated.
      if (input.find_first_not_of("\r\n") != std::string_view::npos) {
        return Fail(MalformedRequest("data after a request that closes the connection"));
      }
      return Event{EventKind::kNeedMore, input.size(), {}};
    case Phase::kHead:
      // An empty buffer would tell http-parser the stream ended.
      if (input.empty()) return Event{};
      return FeedHead(input);
    case Phase::kBody:
      if (input.empty()) return Event{};
      return FeedBody(input);
    case Phase::kFailed:
      break;
  }
  return error_;
}

absl::StatusOr<HttpRequestFramer::Event> HttpRequestFramer::FeedHead(std::string_view input) {
  auto too_large = [this] {
    return absl::ResourceExhaustedError(
        absl::StrCat("HTTP request head larger than ", limits_.max_head_bytes, " bytes"));
  };
  if (head_bytes_ >= limits_.max_head_bytes) return Fail(too_large());
  // Never give http-parser more than the head may still grow by, so the limit holds however
  // the head is split.
  const std::string_view chunk = input.substr(0, limits_.max_head_bytes - head_bytes_);
  http_parser* parser = parser_.get();
  const http_parser_settings& settings = Callbacks::Settings();
  const size_t parsed = http_parser_execute(parser, &settings, chunk.data(), chunk.size());
  if (HTTP_PARSER_ERRNO(parser) == HPE_PAUSED) {
    // Paused by on_headers_complete, on the head's final LF (chunk[parsed]).
    http_parser_pause(parser, 0);
    const size_t last = http_parser_execute(parser, &settings, chunk.data() + parsed, 1);
    if (HTTP_PARSER_ERRNO(parser) == HPE_PAUSED) {  // by on_message_complete: no body
      http_parser_pause(parser, 0);
      message_ended_ = true;
    } else if (HTTP_PARSER_ERRNO(parser) != HPE_OK) {
      return Fail(ParserError());
    } else if (last != 1) {
      return Fail(absl::InternalError("http-parser stopped inside a request head"));
    }
    head_bytes_ = 0;
    phase_ = Phase::kBody;
    return Event{EventKind::kHead, parsed + 1, {}};
  }
  if (HTTP_PARSER_ERRNO(parser) != HPE_OK) return Fail(ParserError());
  if (parsed != chunk.size()) {
    return Fail(absl::InternalError("http-parser stopped inside a request head"));
  }
  head_bytes_ += parsed;
  // Not complete: it needs at least one more byte than the limit allows.
  if (head_bytes_ >= limits_.max_head_bytes) return Fail(too_large());
  return Event{EventKind::kNeedMore, parsed, {}};
}

absl::StatusOr<HttpRequestFramer::Event> HttpRequestFramer::FeedBody(std::string_view input) {
  http_parser* parser = parser_.get();
  const size_t parsed =
      http_parser_execute(parser, &Callbacks::Settings(), input.data(), input.size());
  if (HTTP_PARSER_ERRNO(parser) == HPE_PAUSED) {  // by on_message_complete
    http_parser_pause(parser, 0);
    message_ended_ = true;
  } else if (HTTP_PARSER_ERRNO(parser) != HPE_OK) {
    // Deliver the body bytes before the bad one first, so that what is forwarded does not depend
    // on how the input was split; the error comes with the next Feed.
    absl::Status error = Fail(ParserError());
    if (parsed == 0) return error;
  } else if (parsed != input.size()) {
    return Fail(absl::InternalError("http-parser stopped inside a request body"));
  }
  if (parsed == 0) return Feed(input);  // only the end of the message: report it
  return Event{EventKind::kBody, parsed, input.substr(0, parsed)};
}

// ---------------------------------------------------------------------------------------------
// HttpResponseFramer
//
// No pausing here: the relay only needs counts, so one execute runs over whole buffers and the
// callbacks tally what ended. on_headers_complete tells http-parser which responses have no body
// at all (RFC 9112 6.3), since it only knows that from the headers.

struct HttpResponseFramer::Callbacks {
  static HttpResponseFramer& Self(http_parser* parser) {
    return *static_cast<HttpResponseFramer*>(parser->data);
  }

  static int OnHeadersComplete(http_parser* parser) {
    constexpr int kNoBody = 1;
    constexpr int kNoBodyThenTunnel = 2;
    HttpResponseFramer& self = Self(parser);
    if (self.expected_.empty()) {
      self.callback_error_ =
          absl::InvalidArgumentError("HTTP response without a request waiting for it");
      return kStopParser;
    }
    const int status = parser->status_code;
    const RequestKind request = self.expected_.front();
    self.interim_ = status / 100 == 1 && status != 101;
    // Any 101 switches protocols, whether or not it repeats the Upgrade headers.
    if (status == 101 || (request == RequestKind::kConnect && status / 100 == 2)) {
      return kNoBodyThenTunnel;
    }
    // http-parser would wait for a body if a 1xx/204/304 carried Content-Length.
    if (self.interim_ || status == 204 || status == 304 || request == RequestKind::kHead) {
      return kNoBody;
    }
    return 0;
  }

  static int OnMessageComplete(http_parser* parser) {
    HttpResponseFramer& self = Self(parser);
    if (self.interim_) {  // 100 Continue and friends: the final response is still to come
      self.interim_ = false;
      return 0;
    }
    self.expected_.pop_front();  // not empty: checked in OnHeadersComplete
    if (self.progress_ != nullptr) {
      ++self.progress_->responses_completed;
      if (!http_should_keep_alive(parser)) self.progress_->connection_close = true;
    }
    return 0;
  }

  static const http_parser_settings& Settings() {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_headers_complete = &OnHeadersComplete;
      s.on_message_complete = &OnMessageComplete;
      return s;
    }();
    return settings;
  }
};

HttpResponseFramer::HttpResponseFramer() : parser_(std::make_unique<http_parser>()) {
  http_parser_init(parser_.get(), HTTP_RESPONSE);
  parser_->data = this;
}

HttpResponseFramer::~HttpResponseFramer() = default;

void HttpResponseFramer::ExpectResponseTo(std::string_view method) {
  if (method == "HEAD") {
    expected_.push_back(RequestKind::kHead);
  } else if (method == "CONNECT") {
    expected_.push_back(RequestKind::kConnect);
  } else {
    expected_.push_back(RequestKind::kOther);
  }
}

absl::StatusOr<HttpResponseFramer::Progress> HttpResponseFramer::Feed(std::string_view input) {
  if (!error_.ok()) return error_;
  if (eof_) return absl::FailedPreconditionError("HttpResponseFramer fed after FinishOnEof");
  Progress progress;
  progress.tunnel = tunnel_;
  // An empty buffer would tell http-parser the stream ended.
  if (tunnel_ || input.empty()) return progress;
  return Execute(input);
}

absl::StatusOr<HttpResponseFramer::Progress> HttpResponseFramer::FinishOnEof() {
  if (!error_.ok()) return error_;
  if (eof_) return absl::FailedPreconditionError("HttpResponseFramer::FinishOnEof called twice");
  eof_ = true;
  Progress progress;
  progress.tunnel = tunnel_;
  if (tunnel_) return progress;
  return Execute({});
}

absl::StatusOr<HttpResponseFramer::Progress> HttpResponseFramer::Execute(std::string_view input) {
  Progress progress;
  progress_ = &progress;
  const size_t parsed =
      http_parser_execute(parser_.get(), &Callbacks::Settings(), input.data(), input.size());
  progress_ = nullptr;
  if (HTTP_PARSER_ERRNO(parser_.get()) != HPE_OK) {
    error_ = ParserError(*parser_, callback_error_, "response");
    if (input.empty() && HTTP_PARSER_ERRNO(parser_.get()) == HPE_INVALID_EOF_STATE) {
      error_ = absl::InvalidArgumentError("HTTP response cut short by end of stream");
    }
    return error_;
  }
  progress.http_bytes = input.empty() ? 0 : parsed;
  if (parser_->upgrade) {  // http-parser stops right after the 101 / 2xx-to-CONNECT head
    tunnel_ = true;
    progress.tunnel = true;
  } else if (parsed != input.size()) {
    error_ = absl::InternalError("http-parser stopped inside a response");
    return error_;
  }
  return progress;
}

std::string MakeErrorResponse(int code, std::string_view detail) {
  std::string body(detail);
  std::replace(body.begin(), body.end(), '\r', ' ');
  std::replace(body.begin(), body.end(), '\n', ' ');
  body += '\n';
  std::string_view reason = http_status_str(static_cast<http_status>(code));
  if (reason == "<unknown>") reason = "Unknown";
  return absl::StrCat("HTTP/1.1 ", code, " ", AsAbsl(reason),
                      "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ",
                      body.size(), "\r\nConnection: close\r\n\r\n", body);
}

}  // namespace rdv
