#include "relay/tunnel_response_stage.h"

#include <http_parser.h>

#include <algorithm>
#include <cctype>
#include <iterator>

#include "fmt/format.h"

namespace rdv {
namespace {

constexpr int kStopParser = -1;

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// "text/html; charset=utf-8" -> true.
bool IsHtml(std::string_view content_type) {
  content_type = TrimOws(content_type.substr(0, content_type.find(';')));
  return EqualsIgnoreCase(content_type, "text/html");
}

}  // namespace

struct TunnelResponseStage::Callbacks {
  static TunnelResponseStage& Self(http_parser* parser) {
    return *static_cast<TunnelResponseStage*>(parser->data);
  }

  static int OnMessageBegin(http_parser* parser) {
    TunnelResponseStage& self = Self(parser);
    self.headers_.clear();
    self.last_was_value_ = false;
    return 0;
  }

  static int OnHeaderField(http_parser* parser, const char* at, size_t length) {
    TunnelResponseStage& self = Self(parser);
    if (self.phase_ != Phase::kHead) return 0;  // trailers
    if (self.headers_.empty() || self.last_was_value_) {
      self.headers_.emplace_back();
      self.last_was_value_ = false;
    }
    self.headers_.back().first.append(at, length);
    return 0;
  }

  static int OnHeaderValue(http_parser* parser, const char* at, size_t length) {
    TunnelResponseStage& self = Self(parser);
    if (self.phase_ != Phase::kHead) return 0;
    self.headers_.back().second.append(at, length);
    self.last_was_value_ = true;
    return 0;
  }

  static int OnHeadersComplete(http_parser* parser) {
    constexpr int kNoBody = 1;
    constexpr int kNoBodyThenTunnel = 2;
    TunnelResponseStage& self = Self(parser);
    if (self.expected_.empty()) return kStopParser;  // unsolicited: HttpResponseFramer's to judge
    http_parser_pause(parser, 1);
    self.paused_in_head_ = true;
    const int status = parser->status_code;
    const Request& request = self.expected_.front();
    self.interim_ = status / 100 == 1 && status != 101;
    if (status == 101 || (request.method == "CONNECT" && status / 100 == 2)) {
      return kNoBodyThenTunnel;
    }
    if (self.interim_ || status == 204 || status == 304 || request.method == "HEAD") {
      return kNoBody;
    }
    return 0;
  }

  static int OnBody(http_parser* parser, const char* at, size_t length) {
    TunnelResponseStage& self = Self(parser);
    if (self.rewriter_ != nullptr && self.out_ != nullptr) {
      self.EmitBody(std::string_view(at, length), *self.out_);
    }
    return 0;
  }

  static int OnMessageComplete(http_parser* parser) {
    http_parser_pause(parser, 1);
    Self(parser).message_complete_ = true;
    return 0;
  }

  static const http_parser_settings& Settings() {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_message_begin = &OnMessageBegin;
      s.on_header_field = &OnHeaderField;
      s.on_header_value = &OnHeaderValue;
      s.on_headers_complete = &OnHeadersComplete;
      s.on_body = &OnBody;
      s.on_message_complete = &OnMessageComplete;
      return s;
    }();
    return settings;
  }
};

TunnelResponseStage::TunnelResponseStage() : parser_(std::make_unique<http_parser>()) {
  http_parser_init(parser_.get(), HTTP_RESPONSE);
  parser_->data = this;
}

TunnelResponseStage::~TunnelResponseStage() = default;

void TunnelResponseStage::ExpectResponseTo(Request request) {
  expected_.push_back(std::move(request));
}

void TunnelResponseStage::GoRaw(std::string_view rest, std::string& out) {
  if (phase_ == Phase::kHead) out += head_raw_;
  head_raw_.clear();
  out.append(rest);
  phase_ = Phase::kRaw;
  rewriter_.reset();
}

void TunnelResponseStage::OnData(std::string_view data, bool end_stream, std::string& out) {
  const http_parser_settings& settings = Callbacks::Settings();
  http_parser* parser = parser_.get();
  // An empty buffer tells http-parser that the stream ended, which completes a body read
  // until close; only done for end_stream.
  while (!data.empty() || (end_stream && phase_ == Phase::kBody)) {
    if (phase_ == Phase::kRaw) {
      out.append(data);
      return;
    }
    const bool eof = data.empty();
    out_ = &out;
    // http-parser reports 1 byte parsed for an error at EOF (an empty buffer): never more
    // than it was given.
    size_t parsed =
        std::min(http_parser_execute(parser, &settings, data.data(), data.size()), data.size());
    out_ = nullptr;
    const http_errno error = HTTP_PARSER_ERRNO(parser);
    if (error != HPE_OK && error != HPE_PAUSED) {
      // What the rewriter already took in on_body went out rewritten.
      GoRaw(rewriter_ != nullptr ? data.substr(parsed) : data, out);
      return;
    }
    if (paused_in_head_) {
      // Paused by on_headers_complete on the head's final LF (data[parsed]); it may also end
      // the message (no body), which pauses again.
      paused_in_head_ = false;
      http_parser_pause(parser, 0);
      out_ = &out;
      size_t last = http_parser_execute(parser, &settings, data.data() + parsed, 1);
      out_ = nullptr;
      if (HTTP_PARSER_ERRNO(parser) == HPE_PAUSED) {  // by on_message_complete: no body
        http_parser_pause(parser, 0);
      } else if (HTTP_PARSER_ERRNO(parser) != HPE_OK || last != 1) {
        GoRaw(data, out);
        return;
      }
      head_raw_.append(data.substr(0, parsed + 1));
      data.remove_prefix(parsed + 1);
      EmitHead(out);
      phase_ = Phase::kBody;
    } else if (phase_ == Phase::kHead) {
      head_raw_.append(data.substr(0, parsed));
      data.remove_prefix(parsed);
    } else {  // body bytes: raw unless the rewriter took them in on_body
      if (rewriter_ == nullptr) out.append(data.substr(0, parsed));
      data.remove_prefix(parsed);
    }
    if (message_complete_) {
      http_parser_pause(parser, 0);
      FinishMessage(out);
      if (parser->upgrade) {
        GoRaw(data, out);
        return;
      }
    } else if (eof) {
      break;  // http-parser did not complete a message at EOF: nothing more to do
    }
  }
}

void TunnelResponseStage::EmitHead(std::string& out) {
  const Request& request = expected_.front();
  const bool has_body = (parser_->flags & F_SKIPBODY) == 0;
  if (interim_) {
    out += head_raw_;
    head_raw_.clear();
    return;
  }
  ++heads_rewritten_;
  std::string_view content_type, content_encoding;
  for (const auto& [name, value] : headers_) {
    if (EqualsIgnoreCase(name, "content-type")) content_type = value;
    if (EqualsIgnoreCase(name, "content-encoding")) content_encoding = value;
  }
  content_encoding = TrimOws(content_encoding);
  const bool rewrite_body =
      request.rewrite_html && has_body && IsHtml(content_type) &&
      (content_encoding.empty() || EqualsIgnoreCase(content_encoding, "identity"));

  std::string_view raw(head_raw_);
  raw.remove_prefix(std::min(raw.size(), raw.find_first_not_of("\r\n")));
  out.append(raw.substr(0, raw.find('\n') + 1));  // status line as the target sent it
  for (const auto& [name, raw_value] : headers_) {
    std::string_view value = TrimOws(raw_value);
    std::string rewritten;
    if (EqualsIgnoreCase(name, "location") || EqualsIgnoreCase(name, "content-location")) {
      rewritten = RewriteLocation(value, request.tunnel);
    } else if (EqualsIgnoreCase(name, "refresh")) {
      rewritten = RewriteRefresh(value, request.tunnel);
    } else if (EqualsIgnoreCase(name, "set-cookie")) {
      rewritten = RewriteSetCookie(value, request.tunnel);
    } else if (rewrite_body && (EqualsIgnoreCase(name, "content-length") ||
                                EqualsIgnoreCase(name, "transfer-encoding") ||
                                (request.client_http10 && EqualsIgnoreCase(name, "connection")))) {
      continue;  // the body is re-framed below
    } else {
      rewritten = std::string(value);
    }
    out += name;
    out += ": ";
    out += rewritten;
    out += "\r\n";
  }
  if (rewrite_body) {
    ++bodies_rewritten_;
    rewriter_ = std::make_unique<HtmlLinkRewriter>(request.tunnel);
    chunked_out_ = !request.client_http10;
    out += chunked_out_ ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n";
  }
  out += "\r\n";
  head_raw_.clear();
}

void TunnelResponseStage::EmitBody(std::string_view data, std::string& out) {
  std::string rewritten;
  rewriter_->OnData(data, false, rewritten);
  if (rewritten.empty()) return;
  if (chunked_out_) fmt::format_to(std::back_inserter(out), "{:x}\r\n", rewritten.size());
  out += rewritten;
  if (chunked_out_) out += "\r\n";
}

void TunnelResponseStage::FinishMessage(std::string& out) {
  message_complete_ = false;
  phase_ = Phase::kHead;
  head_raw_.clear();
  if (interim_) {
    interim_ = false;
    return;
  }
  if (rewriter_ != nullptr) {
    std::string rest;
    rewriter_->OnData({}, true, rest);
    if (!rest.empty() && chunked_out_) {
      fmt::format_to(std::back_inserter(out), "{:x}\r\n", rest.size());
    }
    out += rest;
    if (chunked_out_) {
      out += (rest.empty() ? "" : "\r\n");
      out += "0\r\n\r\n";
    } else {
      close_after_response_ = true;
    }
    rewriter_.reset();
  }
  expected_.pop_front();
}

}  // namespace rdv
