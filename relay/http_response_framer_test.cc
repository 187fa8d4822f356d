#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "relay/http_codec.h"
#include "relay/http_codec_test_support.h"

namespace rdv {
namespace {

using http_test::Mutate;
using http_test::RandomSplit;

// ---------------------------------------------------------------------------------------------
// Responses

struct ResponseRun {
  int completed = 0;
  bool tunnel = false;
  size_t http_bytes = 0;
  bool close = false;
  absl::StatusCode code = absl::StatusCode::kOk;
  bool operator==(const ResponseRun& o) const {
    return completed == o.completed && tunnel == o.tunnel && http_bytes == o.http_bytes &&
           close == o.close && code == o.code;
  }
};

std::ostream& operator<<(std::ostream& os, const ResponseRun& r) {
  return os << "completed=" << r.completed << " tunnel=" << r.tunnel
            << " http_bytes=" << r.http_bytes << " close=" << r.close
            << " code=" << absl::StatusCodeToString(r.code);
}

ResponseRun FeedResponses(const std::vector<std::string>& methods,
                          const std::vector<std::string>& pieces, bool eof) {
  HttpResponseFramer framer;
  for (const std::string& method : methods) framer.ExpectResponseTo(method);
  ResponseRun run;
  auto add = [&run](const absl::StatusOr<HttpResponseFramer::Progress>& progress) {
    if (!progress.ok()) {
      run.code = progress.status().code();
      return false;
    }
    run.completed += progress->responses_completed;
    run.http_bytes += progress->http_bytes;
    run.close |= progress->connection_close;
    run.tunnel = progress->tunnel;
    return true;
  };
  for (const std::string& piece : pieces) {
    if (!add(framer.Feed(piece))) return run;
  }
  if (eof && !add(framer.FinishOnEof())) return run;
  EXPECT_EQ(static_cast<int>(methods.size()) - run.completed,
            static_cast<int>(framer.pending_responses()));
  return run;
}

ResponseRun ResponsesWhole(const std::vector<std::string>& methods, std::string_view input,
                           bool eof = false) {
  return FeedResponses(methods, {std::string(input)}, eof);
}

ResponseRun ResponsesBytewise(const std::vector<std::string>& methods, std::string_view input,
                              bool eof = false) {
  std::vector<std::string> pieces;
  for (char c : input) pieces.emplace_back(1, c);
  return FeedResponses(methods, pieces, eof);
}

TEST(HttpResponseFramerTest, ContentLengthAndChunked) {
  const std::string input =
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n";
  ResponseRun run = ResponsesWhole({"GET", "POST"}, input);
  EXPECT_EQ(run.completed, 2) << run;
  EXPECT_EQ(run.http_bytes, input.size());
  EXPECT_FALSE(run.close);
  EXPECT_EQ(run, ResponsesBytewise({"GET", "POST"}, input));
  // Counted when the last byte arrives, not before.
  ResponseRun partial = ResponsesWhole({"GET", "POST"}, input.substr(0, input.size() - 1));
  EXPECT_EQ(partial.completed, 1) << partial;
}

TEST(HttpResponseFramerTest, HeadResponsesHaveNoBody) {
  const std::string input =
      "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  ResponseRun run = ResponsesWhole({"HEAD", "HEAD", "GET"}, input);
  EXPECT_EQ(run.completed, 3) << run;
  EXPECT_EQ(run, ResponsesBytewise({"HEAD", "HEAD", "GET"}, input));
  // The same bytes after a GET: the first response is still waiting for its 1234 bytes.
  EXPECT_EQ(ResponsesWhole({"GET", "HEAD", "GET"}, input).completed, 0);
}

TEST(HttpResponseFramerTest, NoBodyStatuses) {
  const std::string input =
      "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  ResponseRun run = ResponsesWhole({"GET", "GET", "GET", "GET"}, input);
  EXPECT_EQ(run.completed, 4) << run;
  EXPECT_EQ(run.code, absl::StatusCode::kOk);
}

TEST(HttpResponseFramerTest, InterimResponsesAreNotFinal) {
  const std::string input =
      "HTTP/1.1 100 Continue\r\n\r\n"
      "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: 5\r\n\r\n"
      "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
  HttpResponseFramer framer;
  framer.ExpectResponseTo("PUT");
  absl::StatusOr<HttpResponseFramer::Progress> progress = framer.Feed(input.substr(0, 25));
  ASSERT_TRUE(progress.ok());
  EXPECT_EQ(progress->responses_completed, 0);
  EXPECT_EQ(framer.pending_responses(), 1u);
  progress = framer.Feed(input.substr(25));
  ASSERT_TRUE(progress.ok()) << progress.status();
  EXPECT_EQ(progress->responses_completed, 1);
  EXPECT_EQ(framer.pending_responses(), 0u);
  EXPECT_EQ(ResponsesBytewise({"PUT"}, input).completed, 1);
}

TEST(HttpResponseFramerTest, ReadUntilCloseBodyEndsAtEof) {
  const std::string input =
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this is body";
  HttpResponseFramer framer;
  framer.ExpectResponseTo("GET");
  absl::StatusOr<HttpResponseFramer::Progress> progress = framer.Feed(input);
  ASSERT_TRUE(progress.ok());
  EXPECT_EQ(progress->responses_completed, 0);
  progress = framer.Feed("HTTP/1.1 200 OK\r\n\r\n");  // still body
  ASSERT_TRUE(progress.ok());
  EXPECT_EQ(progress->responses_completed, 0);
  progress = framer.FinishOnEof();
  ASSERT_TRUE(progress.ok()) << progress.status();
  EXPECT_EQ(progress->responses_completed, 1);
  EXPECT_TRUE(progress->connection_close);
  EXPECT_EQ(framer.pending_responses(), 0u);
  EXPECT_EQ(framer.FinishOnEof().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ResponsesBytewise({"GET"}, input, /*eof=*/true).completed, 1);
}

TEST(HttpResponseFramerTest, EofBetweenResponsesIsClean) {
  ResponseRun run = ResponsesWhole({"GET", "GET"}, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                                   /*eof=*/true);
  EXPECT_EQ(run.code, absl::StatusCode::kOk);
  EXPECT_EQ(run.completed, 1);  // the second is still owed: pending_responses() == 1
}

TEST(HttpResponseFramerTest, TruncatedResponseIsAnErrorAtEof) {
  ResponseRun run =
      ResponsesWhole({"GET"}, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", /*eof=*/true);
  EXPECT_EQ(run.code, absl::StatusCode::kInvalidArgument) << run;
  run = ResponsesWhole({"GET"}, "HTTP/1.1 200 OK\r\nContent-Le", /*eof=*/true);
  EXPECT_EQ(run.code, absl::StatusCode::kInvalidArgument) << run;
}

TEST(HttpResponseFramerTest, SwitchingProtocolsStartsATunnel) {
  const std::string head =
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
  HttpResponseFramer framer;
  framer.ExpectResponseTo("GET");
  absl::StatusOr<HttpResponseFramer::Progress> progress =
      framer.Feed(head + "\x81\x02hiHTTP/1.1 200 OK\r\n");
  ASSERT_TRUE(progress.ok()) << progress.status();
  EXPECT_EQ(progress->responses_completed, 1);
  EXPECT_TRUE(progress->tunnel);
  EXPECT_EQ(progress->http_bytes, head.size());
  EXPECT_TRUE(framer.tunneling());
  progress = framer.Feed("not http at all");
  ASSERT_TRUE(progress.ok());
  EXPECT_TRUE(progress->tunnel);
  EXPECT_EQ(progress->http_bytes, 0u);
  EXPECT_EQ(progress->responses_completed, 0);
  ASSERT_TRUE(framer.FinishOnEof().ok());

  // A 101 without the Upgrade headers still switches.
  ResponseRun bare = ResponsesBytewise({"GET"}, "HTTP/1.1 101 Switching Protocols\r\n\r\nraw");
  EXPECT_TRUE(bare.tunnel) << bare;
  EXPECT_EQ(bare.http_bytes, 36u);
}

TEST(HttpResponseFramerTest, ConnectSuccessStartsATunnelFailureDoesNot) {
  ResponseRun ok = ResponsesWhole({"CONNECT"}, "HTTP/1.1 200 Connection Established\r\n\r\nraw");
  EXPECT_TRUE(ok.tunnel) << ok;
  EXPECT_EQ(ok.completed, 1);
  EXPECT_EQ(ok.http_bytes, 39u);
  const std::string refused =
      "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nnope";
  ResponseRun no = ResponsesWhole({"CONNECT"}, refused);
  EXPECT_FALSE(no.tunnel) << no;
  EXPECT_EQ(no.completed, 1);
  EXPECT_EQ(no.http_bytes, refused.size());
  // A 200 to a GET that mentions Upgrade is just a response.
  ResponseRun get = ResponsesWhole(
      {"GET"},
      "HTTP/1.1 200 OK\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n");
  EXPECT_FALSE(get.tunnel) << get;
}

TEST(HttpResponseFramerTest, ConnectionClose) {
  ResponseRun run = ResponsesWhole(
      {"GET"}, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
  EXPECT_TRUE(run.close) << run;
  EXPECT_TRUE(ResponsesWhole({"GET"}, "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").close);
  EXPECT_FALSE(ResponsesWhole({"GET"}, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").close);
}

TEST(HttpResponseFramerTest, UnsolicitedOrMalformedResponsesFail) {
  EXPECT_EQ(ResponsesWhole({}, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").code,
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResponsesWhole({"GET"},
                           "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                           "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .code,
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResponsesWhole({"GET"}, "SSH-2.0-OpenSSH_9.2\r\n").code,
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ResponsesWhole({"GET"}, "HTTP/1.1 2000 OK\r\n\r\n").code,
            absl::StatusCode::kInvalidArgument);
  HttpResponseFramer framer;
  framer.ExpectResponseTo("GET");
  absl::Status first = framer.Feed("garbage").status();
  EXPECT_FALSE(first.ok());
  EXPECT_EQ(framer.Feed("HTTP/1.1 200 OK\r\n\r\n").status(), first);  // dead for good
}

TEST(HttpCodecRandomizedTest, ResponseFramingDoesNotDependOnSplitsAndSurvivesGarbage) {
  struct Exchange {
    std::string method;
    std::string response;
  };
  const std::vector<Exchange> corpus = {
      {"GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"},
      {"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"},
      {"GET", "HTTP/1.1 204 No Content\r\n\r\n"},
      {"GET", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"},
      {"POST", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"},
      {"GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"},
      {"GET", "HTTP/1.1 404 Not Found\nContent-Length: 1\n\nx"},
      {"GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: ws\r\nConnection: upgrade\r\n\r\n"},
      {"CONNECT", "HTTP/1.1 200 OK\r\n\r\n"},
      {"GET", "HTTP/1.1 200 OK\r\n\r\nuntil close"},
  };
  std::mt19937 rng(77);
  int completed = 0, errors = 0;
  for (int iteration = 0; iteration < 3000; ++iteration) {
    std::vector<std::string> methods;
    std::string input;
    const int exchanges = std::uniform_int_distribution<int>(1, 4)(rng);
    for (int e = 0; e < exchanges; ++e) {
      const Exchange& exchange =
          corpus[std::uniform_int_distribution<size_t>(0, corpus.size() - 1)(rng)];
      methods.push_back(exchange.method);
      input += exchange.response;
    }
    if (iteration % 4 != 0) input = Mutate(std::move(input), rng);
    SCOPED_TRACE(::testing::Message()
                 << "iteration " << iteration << " input \"" << absl::CEscape(input) << "\"");
    const bool eof = iteration % 2 == 0;
    const ResponseRun whole = ResponsesWhole(methods, input, eof);
    EXPECT_TRUE(whole.code == absl::StatusCode::kOk ||
                whole.code == absl::StatusCode::kInvalidArgument)
        << whole;
    if (whole.code == absl::StatusCode::kOk && !whole.tunnel) {
      EXPECT_EQ(whole.http_bytes, input.size());
    }
    completed += whole.completed;
    errors += whole.code != absl::StatusCode::kOk;
    for (int split = 0; split < 3; ++split) {
      ResponseRun run = FeedResponses(methods, RandomSplit(input, rng), eof);
      if (whole.code != absl::StatusCode::kOk) {
        // Where an error stops the count depends on the split; that it fails does not.
        EXPECT_EQ(run.code, whole.code);
      } else {
        ASSERT_EQ(run, whole);
      }
    }
  }
  EXPECT_GT(completed, 1000);
  EXPECT_GT(errors, 300);
}
}  // namespace
}  // namespace rdv
