#include "relay/http_proxy_request.h"

#include "gtest/gtest.h"
#include "relay/proxy_auth.h"

namespace rdv {
namespace {

HttpRequestHead Head(std::string method, std::string target, std::string host,
                     std::vector<HttpHeader> headers) {
  HttpRequestHead head;
  head.method = std::move(method);
  head.target = std::move(target);
  head.host = std::move(host);
  head.headers = std::move(headers);
  return head;
}

const std::vector<ProxyUser> kUsers = {{"alice", "s3cret"}, {"bob", "pa:ss"}};

TEST(ProxyAuth, BasicCredentials) {
  EXPECT_TRUE(ProxyAuthorizationAllows({}, ""));
  EXPECT_TRUE(ProxyAuthorizationAllows(kUsers, "Basic YWxpY2U6czNjcmV0"));  // alice:s3cret
  EXPECT_TRUE(ProxyAuthorizationAllows(kUsers, "basic  Ym9iOnBhOnNz "));    // bob:pa:ss
  EXPECT_FALSE(ProxyAuthorizationAllows(kUsers, ""));
  EXPECT_FALSE(ProxyAuthorizationAllows(kUsers, "Basic YWxpY2U6d3Jvbmc="));  // alice:wrong
  EXPECT_FALSE(ProxyAuthorizationAllows(kUsers, "Bearer YWxpY2U6czNjcmV0"));
  EXPECT_FALSE(ProxyAuthorizationAllows(kUsers, "Basic !!!"));
  EXPECT_FALSE(ProxyAuthorizationAllows(kUsers, "Basic YWxpY2U="));  // no colon
  EXPECT_TRUE(ProxyUserMatches(kUsers, "alice", "s3cret"));
  EXPECT_FALSE(ProxyUserMatches(kUsers, "alice", "pa:ss"));
  std::string response = MakeProxyAuthRequiredResponse();
  EXPECT_EQ(response.rfind("HTTP/1.1 407 ", 0), 0u) << response;
  EXPECT_NE(response.find("\r\nProxy-Authenticate: Basic realm=\"rdv-relay\""), std::string::npos);
}

TEST(AdmitProxiedRequest, AbsoluteFormBecomesOriginForm) {
  std::string refusal;
  std::optional<HttpRequestHead> head =
      AdmitProxiedRequest(Head("GET", "http://www.orang.com:80/a/b?c=d", "www.orang.com:80",
                               {{"Host", "wrong.example"},
                                {"Proxy-Connection", "keep-alive"},
                                {"Proxy-Authorization", "Basic YWxpY2U6czNjcmV0"},
                                {"Accept", "*/*"}}),
                          kUsers, "peer", refusal);
  ASSERT_TRUE(head.has_value()) << refusal;
  EXPECT_EQ(head->target, "/a/b?c=d");
  ASSERT_EQ(head->headers.size(), 2u);
  EXPECT_EQ(head->headers[0].name, "Host");
  EXPECT_EQ(head->headers[0].value, "www.orang.com:80");
  EXPECT_EQ(head->headers[1].name, "Accept");
}

TEST(AdmitProxiedRequest, EmptyPathAndQueryOnly) {
  std::string refusal;
  auto head =
      AdmitProxiedRequest(Head("GET", "HTTP://x.example", "x.example", {}), {}, "p", refusal);
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->target, "/");
  head = AdmitProxiedRequest(Head("GET", "http://x.example?q", "x.example", {}), {}, "p", refusal);
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->target, "/?q");
}

TEST(AdmitProxiedRequest, OriginFormKeepsHost) {
  std::string refusal;
  auto head = AdmitProxiedRequest(
      Head("GET", "/x", "www.orang.com", {{"Host", "www.orang.com"}, {"Proxy-Connection", "x"}}),
      {}, "p", refusal);
  ASSERT_TRUE(head.has_value());
  EXPECT_EQ(head->target, "/x");
  ASSERT_EQ(head->headers.size(), 1u);
  EXPECT_EQ(head->headers[0].name, "Host");
}

TEST(AdmitProxiedRequest, Refusals) {
  std::string refusal;
  EXPECT_FALSE(
      AdmitProxiedRequest(Head("GET", "http://a.example/", "a.example", {}), kUsers, "p", refusal));
  EXPECT_EQ(refusal.rfind("HTTP/1.1 407 ", 0), 0u) << refusal;
  EXPECT_FALSE(
      AdmitProxiedRequest(Head("GET", "https://a.example/", "a.example", {}), {}, "p", refusal));
  EXPECT_EQ(refusal.rfind("HTTP/1.1 400 ", 0), 0u) << refusal;
  EXPECT_FALSE(
      AdmitProxiedRequest(Head("CONNECT", "a.example:443", "a.example:443", {}), {}, "p", refusal));
  EXPECT_EQ(refusal.rfind("HTTP/1.1 400 ", 0), 0u) << refusal;
}

}  // namespace
}  // namespace rdv
