#include "relay/http_codec.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "relay/http_codec_test_support.h"

namespace rdv {
namespace {

using EventKind = HttpRequestFramer::EventKind;
using http_test::Mutate;
using http_test::RandomSplit;

// What a framer made of a byte stream, independent of how the stream was split: heads (with the
// fields the relay uses), body and tunnel bytes merged into runs, message ends, and the error.
struct Transcript {
  std::vector<std::pair<char, std::string>> items;  // 'H' head, 'B' body, 'E' end, 'T' tunnel
  std::vector<HttpRequestHead> heads;
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string error;
  size_t consumed = 0;

  void Add(char kind, std::string_view data) {
    if ((kind == 'B' || kind == 'T') && !items.empty() && items.back().first == kind) {
      items.back().second.append(data);
    } else {
      items.emplace_back(kind, std::string(data));
    }
  }
  bool operator==(const Transcript& other) const {
    // How far a failing stream got before the error depends on the split; nothing else may.
    return items == other.items && code == other.code && error == other.error &&
           (code != absl::StatusCode::kOk || consumed == other.consumed);
  }
};

std::string Describe(const HttpRequestHead& head) {
  return SerializeRequestHead(head, {}, {}) + "|host=" + head.host +
         "|ka=" + std::to_string(head.keep_alive) + "|up=" + std::to_string(head.upgrade);
}

std::ostream& operator<<(std::ostream& os, const Transcript& t) {
  for (const auto& [kind, data] : t.items) os << kind << "{" << data << "} ";
  return os << "status=" << absl::StatusCodeToString(t.code) << " " << t.error
            << " consumed=" << t.consumed;
}

// Feeds `pieces` one after another the way the relay does: Feed until kNeedMore, per piece.
Transcript FeedPieces(HttpRequestFramer& framer, const std::vector<std::string>& pieces) {
  Transcript t;
  for (const std::string& piece : pieces) {
    std::string_view rest = piece;
    // Every event consumes bytes except kMessageEnd, which comes at most once per message.
    for (size_t guard = 0;; ++guard) {
      EXPECT_LT(guard, 2 * piece.size() + 4) << "framer does not make progress";
      if (guard >= 2 * piece.size() + 4) return t;
      absl::StatusOr<HttpRequestFramer::Event> event = framer.Feed(rest);
      if (!event.ok()) {
        t.code = event.status().code();
        t.error = std::string(event.status().message());
        // Dead for good: the same error again.
        absl::StatusOr<HttpRequestFramer::Event> again = framer.Feed("GET / HTTP/1.1\r\n");
        EXPECT_EQ(again.status(), event.status());
        return t;
      }
      EXPECT_LE(event->consumed, rest.size());
      if (event->kind == EventKind::kBody || event->kind == EventKind::kTunnel) {
        // Raw bytes of the input itself, not a copy.
        EXPECT_EQ(event->data.data(), rest.data());
        EXPECT_EQ(event->data.size(), event->consumed);
        EXPECT_GT(event->consumed, 0u);
      }
      const std::string_view data = rest.substr(0, event->consumed);
      rest.remove_prefix(event->consumed);
      t.consumed += event->consumed;
      switch (event->kind) {
        case EventKind::kNeedMore:
          EXPECT_TRUE(rest.empty()) << "kNeedMore must consume all input";
          break;
        case EventKind::kHead:
          t.heads.push_back(framer.head());
          t.Add('H', Describe(framer.head()));
          break;
        case EventKind::kBody:
          t.Add('B', data);
          break;
        case EventKind::kMessageEnd:
          EXPECT_EQ(event->consumed, 0u);
          t.Add('E', "");
          break;
        case EventKind::kTunnel:
          t.Add('T', data);
          break;
      }
      if (event->kind == EventKind::kNeedMore) break;
    }
  }
  return t;
}

Transcript FeedWhole(std::string_view input, HttpRequestFramer::Limits limits = {}) {
  HttpRequestFramer framer(limits);
  return FeedPieces(framer, {std::string(input)});
}

Transcript FeedBytewise(std::string_view input, HttpRequestFramer::Limits limits = {}) {
  std::vector<std::string> pieces;
  for (char c : input) pieces.emplace_back(1, c);
  HttpRequestFramer framer(limits);
  return FeedPieces(framer, pieces);
}

// ---------------------------------------------------------------------------------------------
// Requests

TEST(HttpRequestFramerTest, ParsesHeadAndStopsRightAfterIt) {
  const std::string head =
      "GET /path?q=1 HTTP/1.1\r\nHost: www.orang.com\r\nUser-Agent: t\r\nX-Dup: 1\r\n"
      "x-dup: 2\r\n\r\n";
  const std::string next = "GET /2 HTTP/1.1\r\nHost: b\r\n\r\n";
  HttpRequestFramer framer({});
  const std::string input = head + next;
  absl::StatusOr<HttpRequestFramer::Event> event = framer.Feed(input);
  ASSERT_TRUE(event.ok()) << event.status();
  EXPECT_EQ(event->kind, EventKind::kHead);
  EXPECT_EQ(event->consumed, head.size());
  const HttpRequestHead& h = framer.head();
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/path?q=1");
  EXPECT_EQ(h.version_major, 1);
  EXPECT_EQ(h.version_minor, 1);
  ASSERT_EQ(h.headers.size(), 4u);
  EXPECT_EQ(h.headers[0].name, "Host");
  EXPECT_EQ(h.headers[3].name, "x-dup");  // original spelling, wire order
  EXPECT_EQ(h.headers[3].value, "2");
  EXPECT_EQ(h.host, "www.orang.com");
  EXPECT_TRUE(h.keep_alive);
  EXPECT_FALSE(h.upgrade);
  EXPECT_EQ(h.Header("USER-agent"), "t");
  EXPECT_EQ(h.Header("x-DUP"), "1");  // first match
  EXPECT_EQ(h.Header("absent"), "");

  event = framer.Feed(std::string_view(input).substr(head.size()));
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kMessageEnd);
  EXPECT_EQ(event->consumed, 0u);
  event = framer.Feed(std::string_view(input).substr(head.size()));
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kHead);
  EXPECT_EQ(framer.head().target, "/2");
  event = framer.Feed("");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kMessageEnd);
  event = framer.Feed("");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kNeedMore);
}

TEST(HttpRequestFramerTest, HeadSplitByteByByte) {
  const std::string input = "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
  Transcript t = FeedBytewise(input);
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(t.heads[0].method, "POST");
  EXPECT_EQ(t.heads[0].Header("content-length"), "5");
  ASSERT_EQ(t.items.size(), 3u) << t;
  EXPECT_EQ(t.items[1], std::make_pair('B', std::string("hello")));
  EXPECT_EQ(t.items[2].first, 'E');
  EXPECT_EQ(t, FeedWhole(input));
}

TEST(HttpRequestFramerTest, PipelinedRequestsAreSeparated) {
  const std::string input =
      "GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n"
      "POST /b HTTP/1.1\r\nHost: b.example\r\nContent-Length: 3\r\n\r\nabc"
      "PUT /c HTTP/1.1\r\nHost: c.example\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
      "\r\n"  // stray CRLF between requests, as some clients send after a body
      "GET /d HTTP/1.1\r\nHost: d.example\r\n\r\n";
  Transcript t = FeedWhole(input);
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads.size(), 4u);
  EXPECT_EQ(t.heads[0].host, "a.example");
  EXPECT_EQ(t.heads[1].host, "b.example");
  EXPECT_EQ(t.heads[2].host, "c.example");
  EXPECT_EQ(t.heads[3].host, "d.example");
  std::vector<char> kinds;
  for (const auto& item : t.items) kinds.push_back(item.first);
  EXPECT_EQ(kinds, (std::vector<char>{'H', 'E', 'H', 'B', 'E', 'H', 'B', 'E', 'H', 'E'})) << t;
  EXPECT_EQ(t.items[3].second, "abc");
  EXPECT_EQ(t.items[6].second, "2\r\nxy\r\n0\r\n\r\n");
  EXPECT_EQ(t.consumed, input.size());
  EXPECT_EQ(t, FeedBytewise(input));
}

TEST(HttpRequestFramerTest, ChunkedBodyWithTrailersIsForwardedRaw) {
  const std::string body =
      "5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Checksum: 42\r\nX-More: y\r\n\r\n";
  const std::string input = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" +
                            body + "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  Transcript t = FeedWhole(input);
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_GE(t.items.size(), 3u);
  EXPECT_EQ(t.items[1], std::make_pair('B', body));
  ASSERT_EQ(t.heads.size(), 2u);
  // Trailers are body bytes, not head headers.
  EXPECT_EQ(t.heads[0].headers.size(), 2u);
  EXPECT_EQ(t.heads[0].Header("x-checksum"), "");
  EXPECT_EQ(t.heads[1].target, "/next");
  EXPECT_EQ(t, FeedBytewise(input));
}

TEST(HttpRequestFramerTest, ObsFoldIsJoined) {
  Transcript t = FeedWhole("GET / HTTP/1.1\r\nHost: h\r\nX-Long: first  \r\n \t second\r\n\r\n");
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads.size(), 1u);
  ASSERT_EQ(t.heads[0].headers.size(), 2u);
  // One line on re-serialization; the fold's whitespace stays, its CRLF is gone.
  EXPECT_EQ(t.heads[0].headers[1].value, "first   \t second");
  EXPECT_EQ(SerializeRequestHead(t.heads[0], {}, {}),
            "GET / HTTP/1.1\r\nHost: h\r\nX-Long: first   \t second\r\n\r\n");
}

TEST(HttpRequestFramerTest, BareLfLineEndings) {
  const std::string input = "GET /lf HTTP/1.1\nHost: h\nX-A:  v  \n\nGET /2 HTTP/1.1\nHost: h\n\n";
  Transcript t = FeedWhole(input);
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads.size(), 2u);
  EXPECT_EQ(t.heads[0].Header("x-a"), "v");
  EXPECT_EQ(t.heads[1].target, "/2");
  EXPECT_EQ(t.consumed, input.size());
  EXPECT_EQ(t, FeedBytewise(input));
}

TEST(HttpRequestFramerTest, EmptyHeaderValue) {
  Transcript t = FeedWhole("GET / HTTP/1.1\r\nX-Empty:\r\nHost: h\r\nX-Also: \r\n\r\n");
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads[0].headers.size(), 3u);
  EXPECT_EQ(t.heads[0].headers[0].name, "X-Empty");
  EXPECT_EQ(t.heads[0].headers[0].value, "");
  EXPECT_EQ(t.heads[0].host, "h");
}

TEST(HttpRequestFramerTest, HeadSizeLimitHoldsHoweverSplit) {
  const std::string prefix = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
  const std::string suffix = "\r\n\r\n";
  HttpRequestFramer::Limits limits;
  limits.max_head_bytes = 100;
  const std::string exact = prefix + std::string(100 - prefix.size() - suffix.size(), 'p') + suffix;
  ASSERT_EQ(exact.size(), 100u);
  const std::string over = prefix + std::string(101 - prefix.size() - suffix.size(), 'p') + suffix;

  for (bool bytewise : {false, true}) {
    SCOPED_TRACE(bytewise ? "bytewise" : "whole");
    Transcript ok = bytewise ? FeedBytewise(exact, limits) : FeedWhole(exact, limits);
    EXPECT_EQ(ok.code, absl::StatusCode::kOk) << ok;
    EXPECT_EQ(ok.heads.size(), 1u);
    Transcript bad = bytewise ? FeedBytewise(over, limits) : FeedWhole(over, limits);
    EXPECT_EQ(bad.code, absl::StatusCode::kResourceExhausted) << bad;
    EXPECT_TRUE(bad.heads.empty());
    // Fails as soon as the limit is crossed, without waiting for the head to end.
    Transcript endless = bytewise ? FeedBytewise(prefix + std::string(500, 'p'), limits)
                                  : FeedWhole(prefix + std::string(500, 'p'), limits);
    EXPECT_EQ(endless.code, absl::StatusCode::kResourceExhausted) << endless;
  }
  // The limit is per head: a second request of the same size is fine.
  Transcript two = FeedBytewise(exact + exact, limits);
  EXPECT_EQ(two.code, absl::StatusCode::kOk) << two;
  EXPECT_EQ(two.heads.size(), 2u);
}

TEST(HttpRequestFramerTest, HeadLargerThanHttpParserCeiling) {
  HttpRequestFramer::Limits limits;
  limits.max_head_bytes = 1 << 20;  // above http-parser's own 80 KiB
  Transcript t =
      FeedWhole("GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + std::string(100 * 1024, 'b'), limits);
  EXPECT_EQ(t.code, absl::StatusCode::kResourceExhausted) << t.error;
}

TEST(HttpRequestFramerTest, TooManyHeaders) {
  HttpRequestFramer::Limits limits;
  limits.max_headers = 3;
  EXPECT_EQ(FeedWhole("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", limits).code,
            absl::StatusCode::kOk);
  Transcript t = FeedBytewise("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", limits);
  EXPECT_EQ(t.code, absl::StatusCode::kResourceExhausted) << t;
  EXPECT_NE(t.error.find("headers"), std::string::npos) << t.error;
}

TEST(HttpRequestFramerTest, Expect100ContinuePassesThrough) {
  const std::string head =
      "PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
  HttpRequestFramer framer({});
  absl::StatusOr<HttpRequestFramer::Event> event = framer.Feed(head);
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kHead);
  EXPECT_EQ(framer.head().Header("expect"), "100-continue");
  EXPECT_EQ(SerializeRequestHead(framer.head(), {}, {}), head);
  event = framer.Feed("");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kNeedMore);  // waiting for the body the backend will ask for
  event = framer.Feed("data");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kBody);
  EXPECT_EQ(event->data, "data");
  event = framer.Feed("");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kMessageEnd);
}

TEST(HttpRequestFramerTest, AbsoluteFormTargetSetsHostFromAuthority) {
  Transcript t = FeedWhole(
      "GET http://www.orang.com:8080/p?q=1 HTTP/1.1\r\nHost: elsewhere.com\r\n\r\n"
      "GET https://user:pw@api.orang.com/x HTTP/1.1\r\nHost: api.orang.com\r\n\r\n"
      "GET http://[::1]:9000 HTTP/1.1\r\n\r\n"
      "OPTIONS * HTTP/1.1\r\nHost: star.com\r\n\r\n");
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads.size(), 4u);
  EXPECT_EQ(t.heads[0].host, "www.orang.com:8080");
  EXPECT_EQ(t.heads[0].target, "http://www.orang.com:8080/p?q=1");
  EXPECT_EQ(t.heads[1].host, "api.orang.com");
  EXPECT_EQ(t.heads[2].host, "[::1]:9000");
  EXPECT_EQ(t.heads[3].host, "star.com");
  EXPECT_EQ(t.heads[3].target, "*");
}

TEST(HttpRequestFramerTest, ConnectTunnelsEverythingAfterTheHead) {
  const std::string head = "CONNECT db.orang.com:5432 HTTP/1.1\r\nHost: db.orang.com:5432\r\n\r\n";
  HttpRequestFramer framer({});
  const std::string input = head + "\x16\x03\x01 raw tls";
  absl::StatusOr<HttpRequestFramer::Event> event = framer.Feed(input);
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kHead);
  EXPECT_EQ(event->consumed, head.size());
  EXPECT_EQ(framer.head().method, "CONNECT");
  EXPECT_EQ(framer.head().host, "db.orang.com:5432");
  EXPECT_TRUE(framer.head().upgrade);
  EXPECT_FALSE(framer.tunneling());
  std::string_view rest = std::string_view(input).substr(head.size());
  event = framer.Feed(rest);
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kMessageEnd);
  event = framer.Feed(rest);
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kTunnel);
  EXPECT_EQ(event->data, "\x16\x03\x01 raw tls");
  EXPECT_TRUE(framer.tunneling());
  // Even bytes that look like HTTP are tunnel bytes now.
  event = framer.Feed("GET / HTTP/1.1\r\n\r\n");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kTunnel);
  EXPECT_EQ(event->consumed, 18u);
  event = framer.Feed("");
  ASSERT_TRUE(event.ok());
  EXPECT_EQ(event->kind, EventKind::kNeedMore);
}

TEST(HttpRequestFramerTest, WebSocketUpgrade) {
  const std::string input =
      "GET /chat HTTP/1.1\r\nHost: ws.orang.com\r\nConnection: keep-alive, Upgrade\r\n"
      "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello";
  Transcript t = FeedWhole(input);
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_TRUE(t.heads[0].upgrade);
  ASSERT_EQ(t.items.size(), 3u);
  EXPECT_EQ(t.items[1].first, 'E');
  EXPECT_EQ(t.items[2], std::make_pair('T', std::string("\x81\x05hello")));
  EXPECT_EQ(t, FeedBytewise(input));
  // "Upgrade" without "Connection: upgrade" is only informational.
  Transcript plain = FeedWhole("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
  ASSERT_EQ(plain.heads.size(), 1u);
  EXPECT_FALSE(plain.heads[0].upgrade);
}

TEST(HttpRequestFramerTest, UpgradeWithBodyTunnelsAfterTheBody) {
  Transcript t = FeedBytewise(
      "POST /u HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: x\r\n"
      "Content-Length: 2\r\n\r\nabRAW");
  ASSERT_EQ(t.code, absl::StatusCode::kOk) << t;
  ASSERT_EQ(t.items.size(), 4u) << t;
  EXPECT_EQ(t.items[1], std::make_pair('B', std::string("ab")));
  EXPECT_EQ(t.items[2].first, 'E');
  EXPECT_EQ(t.items[3], std::make_pair('T', std::string("RAW")));
}

TEST(HttpRequestFramerTest, KeepAlive) {
  auto keep_alive = [](std::string_view request) {
    Transcript t = FeedWhole(request);
    EXPECT_EQ(t.code, absl::StatusCode::kOk) << t;
    return !t.heads.empty() && t.heads[0].keep_alive;
  };
  EXPECT_TRUE(keep_alive("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
  EXPECT_FALSE(keep_alive("GET / HTTP/1.0\r\n\r\n"));
  EXPECT_TRUE(keep_alive("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
}

TEST(HttpRequestFramerTest, NothingButLineEndsAfterAClosingRequest) {
  const std::string closing = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
  Transcript ok = FeedWhole(closing + "\r\n");
  EXPECT_EQ(ok.code, absl::StatusCode::kOk) << ok;
  Transcript bad = FeedWhole(closing + "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(bad.code, absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_EQ(bad.heads.size(), 1u);
}

TEST(HttpRequestFramerTest, RequestSmugglingIsRefused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"te+cl", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"},
      {"cl+te", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"},
      {"cl+te gzip", "Content-Length: 3\r\nTransfer-Encoding: gzip\r\n"},
      {"space before colon", "Transfer-Encoding : chunked\r\n"},
      {"tab before colon", "Content-Length\t: 3\r\n"},
      {"te not chunked", "Transfer-Encoding: gzip\r\n"},
      {"chunked not last", "Transfer-Encoding: chunked, gzip\r\n"},
      {"chunked not last, split", "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"},
      {"chunked twice", "Transfer-Encoding: chunked, chunked\r\n"},
      {"te xchunked", "Transfer-Encoding: xchunked\r\n"},
      {"two content-lengths", "Content-Length: 3\r\nContent-Length: 3\r\n"},
      {"content-length list", "Content-Length: 3, 3\r\n"},
      {"content-length sign", "Content-Length: +3\r\n"},
      {"two hosts", "Host: other\r\n"},
  };
  for (const auto& [name, headers] : cases) {
    SCOPED_TRACE(name);
    const std::string request = "POST / HTTP/1.1\r\nHost: h\r\n" + headers + "\r\nabc";
    Transcript t = FeedWhole(request);
    EXPECT_EQ(t.code, absl::StatusCode::kInvalidArgument) << t;
    EXPECT_TRUE(t.heads.empty()) << t;
    EXPECT_EQ(t, FeedBytewise(request));
  }
  // The accepted forms: a final chunked, spread over headers or not; one Content-Length.
  for (std::string headers : {"Transfer-Encoding: gzip, chunked\r\n",
                              "Transfer-Encoding: gzip\r\nTransfer-Encoding: CHUNKED \r\n"}) {
    Transcript t = FeedWhole("POST / HTTP/1.1\r\nHost: h\r\n" + headers + "\r\n0\r\n\r\n");
    EXPECT_EQ(t.code, absl::StatusCode::kOk) << t;
  }
}

TEST(HttpRequestFramerTest, MalformedRequestsAreInvalidArgument) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tls client hello", std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11)},
      {"http2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
      {"http2 version", "GET / HTTP/2.0\r\nHost: h\r\n\r\n"},
      {"http0.9", "GET /\r\n\r\n"},
      {"lower-case method", "get / HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"unknown method", "BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"space in target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"tab in target", "GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n"},
      {"control char in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n"},
      {"bare CR in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rY: b\r\n\r\n"},
      {"empty header name", "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n"},
      {"missing host on 1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"},
      {"bad chunk size", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
  };
  for (const auto& [name, request] : cases) {
    SCOPED_TRACE(name);
    Transcript t = FeedWhole(request);
    EXPECT_EQ(t.code, absl::StatusCode::kInvalidArgument) << t;
    EXPECT_FALSE(t.error.empty());
    EXPECT_EQ(t, FeedBytewise(request));
  }
  // HTTP/1.0 may omit Host.
  Transcript old = FeedWhole("GET / HTTP/1.0\r\n\r\n");
  ASSERT_EQ(old.code, absl::StatusCode::kOk) << old;
  EXPECT_EQ(old.heads[0].host, "");
}

TEST(HttpRequestFramerTest, ErrorMessagesSayWhatWasWrong) {
  Transcript t = FeedWhole(
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n");
  EXPECT_NE(t.error.find("Content-Length"), std::string::npos) << t.error;
  t = FeedWhole("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
  EXPECT_NE(t.error.find("Host"), std::string::npos) << t.error;
  t = FeedWhole("GET / HTTP/2.0\r\nHost: a\r\n\r\n");
  EXPECT_NE(t.error.find("version"), std::string::npos) << t.error;
}

TEST(HttpRequestFramerTest, HeadStaysValidWhileTheBodyStreams) {
  HttpRequestFramer framer({});
  ASSERT_TRUE(framer.Feed("POST /keep HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\n").ok());
  const std::string* name = &framer.head().headers[0].name;
  for (std::string_view piece : {"ab", "cd", "ef"}) {
    absl::StatusOr<HttpRequestFramer::Event> event = framer.Feed(piece);
    ASSERT_TRUE(event.ok());
    EXPECT_EQ(event->kind, EventKind::kBody);
  }
  EXPECT_EQ(&framer.head().headers[0].name, name);
  EXPECT_EQ(framer.head().target, "/keep");
}

TEST(SerializeRequestHeadTest, DropsAndAppends) {
  HttpRequestHead head;
  head.method = "POST";
  head.target = "/x";
  head.version_minor = 0;
  head.headers = {{"Host", "a"},
                  {"X-Forwarded-For", "evil"},
                  {"content-length", "2"},
                  {"x-forwarded-for", "evil2"}};
  const std::string_view drop[] = {"X-FORWARDED-FOR"};
  const HttpHeader extra[] = {{"X-Forwarded-For", "10.0.0.1"}, {"Via", "1.1 rdv"}};
  EXPECT_EQ(SerializeRequestHead(head, drop, extra),
            "POST /x HTTP/1.0\r\nHost: a\r\ncontent-length: 2\r\nX-Forwarded-For: 10.0.0.1\r\n"
            "Via: 1.1 rdv\r\n\r\n");
  EXPECT_EQ(SerializeRequestHead(head, {}, {}),
            "POST /x HTTP/1.0\r\nHost: a\r\nX-Forwarded-For: evil\r\ncontent-length: 2\r\n"
            "x-forwarded-for: evil2\r\n\r\n");
}

TEST(SerializeRequestHeadTest, RoundTripsThroughTheFramer) {
  const std::string request =
      "DELETE /r?x=%20 HTTP/1.1\r\nHost: h:8080\r\nAccept: */*\r\nCookie: a=b; c=d\r\n\r\n";
  Transcript t = FeedWhole(request);
  ASSERT_EQ(t.heads.size(), 1u);
  EXPECT_EQ(SerializeRequestHead(t.heads[0], {}, {}), request);
}

TEST(MakeErrorResponseTest, Format) {
  EXPECT_EQ(MakeErrorResponse(404, "no service for host www.orang.com"),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Length: 34\r\nConnection: close\r\n\r\nno service for host www.orang.com\n");
  const std::string response = MakeErrorResponse(400, "bad\r\nInjected: yes");
  EXPECT_NE(response.find("400 Bad Request"), std::string::npos);
  EXPECT_EQ(response.find("\r\nInjected"), std::string::npos);
  EXPECT_NE(response.find("\r\n\r\nbad  Injected: yes\n"), std::string::npos);
  EXPECT_EQ(MakeErrorResponse(431, "x").substr(0, 46),
            "HTTP/1.1 431 Request Header Fields Too Large\r\n");
  EXPECT_EQ(MakeErrorResponse(599, "x").substr(0, 22), "HTTP/1.1 599 Unknown\r\n");

  // What we generate, we can frame.
  HttpResponseFramer framer;
  framer.ExpectResponseTo("GET");
  absl::StatusOr<HttpResponseFramer::Progress> progress = framer.Feed(MakeErrorResponse(502, "x"));
  ASSERT_TRUE(progress.ok()) << progress.status();
  EXPECT_EQ(progress->responses_completed, 1);
  EXPECT_TRUE(progress->connection_close);
}

// ---------------------------------------------------------------------------------------------
// Randomized: split-invariance and robustness against garbage. Bounded and deterministic.

const std::vector<std::string>& RequestCorpus() {
  static const auto* corpus = new std::vector<std::string>{
      "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
      "GET /x?y=z HTTP/1.1\r\nHost: b.example:8080\r\nAccept: */*\r\nCookie: k=v\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: c\r\nContent-Length: 11\r\n\r\nhello world",
      "PUT /c HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: t\r\n\r\n",
      "GET http://abs.example/path HTTP/1.1\r\nHost: ignored\r\n\r\n",
      "GET /fold HTTP/1.1\r\nHost: e\r\nX-F: a\r\n b\r\n\r\n",
      "GET /lf HTTP/1.1\nHost: f\n\n",
      "POST /e HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
      "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
      "\r\n",
      "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
      "CONNECT t.example:443 HTTP/1.1\r\nHost: t.example:443\r\n\r\ntls",
      "GET /close HTTP/1.1\r\nHost: i\r\nConnection: close\r\n\r\n",
      "POST /x HTTP/1.1\r\nHost: j\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
      // Long heads, many headers: crossed by the randomized limits.
      "GET /big HTTP/1.1\r\nHost: k\r\nX-Pad: " + std::string(112, 'p') + "\r\n\r\n",
      "GET /many HTTP/1.1\r\nHost: l\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
  };
  return *corpus;
}

TEST(HttpCodecRandomizedTest, RequestFramingDoesNotDependOnSplitsAndSurvivesGarbage) {
  std::mt19937 rng(20240611);
  const auto& corpus = RequestCorpus();
  int parsed_heads = 0, errors = 0, too_large = 0;
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::string input;
    const int messages = std::uniform_int_distribution<int>(1, 4)(rng);
    for (int m = 0; m < messages; ++m) {
      input += corpus[std::uniform_int_distribution<size_t>(0, corpus.size() - 1)(rng)];
    }
    if (iteration % 4 != 0) input = Mutate(std::move(input), rng);
    // Limits small enough to be crossed at all sorts of places, or the defaults.
    HttpRequestFramer::Limits limits;
    if (iteration % 3 != 0) {
      limits.max_head_bytes = std::uniform_int_distribution<size_t>(1, 200)(rng);
      limits.max_headers = std::uniform_int_distribution<size_t>(0, 7)(rng);
    }
    SCOPED_TRACE(::testing::Message()
                 << "iteration " << iteration << " limits " << limits.max_head_bytes << "/"
                 << limits.max_headers << " input \"" << absl::CEscape(input) << "\"");
    const Transcript whole = FeedWhole(input, limits);
    if (whole.code == absl::StatusCode::kOk) {
      EXPECT_EQ(whole.consumed, input.size());
    } else {
      EXPECT_TRUE(whole.code == absl::StatusCode::kInvalidArgument ||
                  whole.code == absl::StatusCode::kResourceExhausted)
          << whole;
    }
    parsed_heads += static_cast<int>(whole.heads.size());
    errors += whole.code != absl::StatusCode::kOk;
    too_large += whole.code == absl::StatusCode::kResourceExhausted;
    for (int split = 0; split < 3; ++split) {
      HttpRequestFramer framer(limits);
      ASSERT_EQ(FeedPieces(framer, RandomSplit(input, rng)), whole);
    }
    if (iteration % 10 == 0) {
      ASSERT_EQ(FeedBytewise(input, limits), whole);
    }
  }
  // The generator exercises both outcomes.
  EXPECT_GT(parsed_heads, 1000);
  EXPECT_GT(errors, 300);
  EXPECT_GT(too_large, 300);
  std::cout << "heads " << parsed_heads << ", errors " << errors << " (too large " << too_large
            << ")\n";
}

}  // namespace
}  // namespace rdv
