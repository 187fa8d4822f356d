#include "common/admin_http.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

std::string ErrorOf(std::string_view head) {
  absl::StatusOr<std::optional<AdminRequest>> request = ParseAdminRequest(head);
  return request.ok() ? "ok" : std::string(request.status().message());
}

TEST(ParseAdminRequestTest, CompleteRequest) {
  absl::StatusOr<std::optional<AdminRequest>> request =
      ParseAdminRequest("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n");
  ASSERT_TRUE(request.ok()) << request.status();
  ASSERT_TRUE(request->has_value());
  EXPECT_EQ((*request)->method, "GET");
  EXPECT_EQ((*request)->path, "/metrics");

  request = ParseAdminRequest("POST /status HTTP/1.0\n\n");  // bare LF
  ASSERT_TRUE(request.ok() && request->has_value());
  EXPECT_EQ((*request)->method, "POST");
  EXPECT_EQ((*request)->path, "/status");
}

TEST(ParseAdminRequestTest, Incomplete) {
  for (std::string_view prefix : {"", "G", "GET", "GET ", "GET /status HTTP/1.1",
                                  "GET /status HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: a\r\n"}) {
    absl::StatusOr<std::optional<AdminRequest>> request = ParseAdminRequest(prefix);
    ASSERT_TRUE(request.ok()) << prefix << ": " << request.status();
    EXPECT_FALSE(request->has_value()) << prefix;
  }
}

TEST(ParseAdminRequestTest, GarbageIsRefusedEarly) {
  EXPECT_EQ(ErrorOf(std::string_view("\x00\xff", 2)), "not an HTTP request");
  EXPECT_EQ(ErrorOf("\x16\x03\x01"), "not an HTTP request");
  EXPECT_EQ(ErrorOf("get / HTTP/1.1\r\n\r\n"), "not an HTTP request");
  EXPECT_EQ(ErrorOf("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), "not an HTTP request");
  EXPECT_EQ(ErrorOf("GET\r\n\r\n"), "not an HTTP request");
  EXPECT_EQ(ErrorOf("GET /\r\n\r\n"), "malformed request line");
  EXPECT_EQ(ErrorOf("GET metrics HTTP/1.1\r\n\r\n"), "malformed request target");
  EXPECT_EQ(ErrorOf("GET / HTTP/2\r\n\r\n"), "unsupported HTTP version");
  EXPECT_EQ(ErrorOf("GET / HTTP/1.1\r\nno colon\r\n\r\n"), "malformed header line");
  EXPECT_EQ(ErrorOf("GET / HTTP/1.1\r\nbad name: x\r\n\r\n"), "malformed header name");
  EXPECT_EQ(ErrorOf("GET /" + std::string(kMaxAdminHead, 'a')), "request line too long");
  std::string many = "GET / HTTP/1.1\r\n";
  while (many.size() <= kMaxAdminHead) many += "X-Filler: 0123456789\r\n";
  EXPECT_EQ(ErrorOf(many), "request head too large");
}

TEST(MetricsResponseTest, PrometheusText) {
  AdminResponse response = MetricsResponse();
  EXPECT_EQ(response.code, 200);
  EXPECT_THAT(response.content_type, HasSubstr("text/plain"));
}

}  // namespace
}  // namespace rdv
