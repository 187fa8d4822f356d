#include "relay/tunnel_path.h"

#include <gtest/gtest.h>

namespace rdv {
namespace {

TEST(ParseTunnelTarget, NotATunnel) {
  EXPECT_FALSE(ParseTunnelTarget("/"));
  EXPECT_FALSE(ParseTunnelTarget("/tunnel:www.orang.com/"));
  EXPECT_FALSE(ParseTunnelTarget("/x/TUNNEL:www.orang.com/"));
  EXPECT_FALSE(ParseTunnelTarget("http://relay/TUNNEL:www.orang.com/"));
  EXPECT_FALSE(ParseTunnelTarget("*"));
}

TEST(ParseTunnelTarget, RestAndQuery) {
  std::optional<TunnelTarget> t = ParseTunnelTarget("/TUNNEL:WWW.Orang.com/a/b?x=1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name, "www.orang.com");
  EXPECT_EQ(t->target, "/a/b?x=1");
  EXPECT_EQ(t->redirect, "");
  t = ParseTunnelTarget("/TUNNEL:www.orang.com/");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->target, "/");
}

TEST(ParseTunnelTarget, MissingSlashRedirects) {
  std::optional<TunnelTarget> t = ParseTunnelTarget("/TUNNEL:www.orang.com");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name, "www.orang.com");
  EXPECT_EQ(t->target, "");
  EXPECT_EQ(t->redirect, "/TUNNEL:www.orang.com/");
  t = ParseTunnelTarget("/TUNNEL:www.orang.com?q=1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->redirect, "/TUNNEL:www.orang.com/?q=1");
}

TEST(ParseTunnelTarget, BadNameIsEmpty) {
  EXPECT_EQ(ParseTunnelTarget("/TUNNEL:/x")->name, "");
  EXPECT_EQ(ParseTunnelTarget("/TUNNEL:")->name, "");
  EXPECT_EQ(ParseTunnelTarget("/TUNNEL:a%2fb/")->name, "");
  EXPECT_EQ(ParseTunnelTarget("/TUNNEL:host:80/")->name, "");
}

class TunnelRewrite : public ::testing::Test {
 protected:
  TunnelContext tunnel_ = MakeTunnelContext("www.orang.com", "/shop/cart/add?id=1");
};

TEST_F(TunnelRewrite, Context) {
  EXPECT_EQ(tunnel_.prefix, "/TUNNEL:www.orang.com");
  EXPECT_EQ(tunnel_.origin_path, "/shop/cart/add");
}

TEST_F(TunnelRewrite, UrlRootRelative) {
  EXPECT_EQ(RewriteUrlIntoTunnel("/", tunnel_), "/TUNNEL:www.orang.com/");
  EXPECT_EQ(RewriteUrlIntoTunnel("/landing.html?a=b#top", tunnel_),
            "/TUNNEL:www.orang.com/landing.html?a=b#top");
  EXPECT_EQ(RewriteUrlIntoTunnel("  /x ", tunnel_), "  /TUNNEL:www.orang.com/x ");
}

TEST_F(TunnelRewrite, UrlAbsoluteToServiceHost) {
  EXPECT_EQ(RewriteUrlIntoTunnel("http://www.orang.com/a?b", tunnel_), "/TUNNEL:www.orang.com/a?b");
  EXPECT_EQ(RewriteUrlIntoTunnel("https://WWW.ORANG.COM:8443/a", tunnel_),
            "/TUNNEL:www.orang.com/a");
  EXPECT_EQ(RewriteUrlIntoTunnel("//www.orang.com/img.png", tunnel_),
            "/TUNNEL:www.orang.com/img.png");
  EXPECT_EQ(RewriteUrlIntoTunnel("http://user@www.orang.com", tunnel_), "/TUNNEL:www.orang.com/");
  EXPECT_EQ(RewriteUrlIntoTunnel("http://www.orang.com?q", tunnel_), "/TUNNEL:www.orang.com/?q");
  // Already inside the prefix (a service that honours X-Forwarded-Prefix).
  EXPECT_EQ(RewriteUrlIntoTunnel("http://www.orang.com/TUNNEL:www.orang.com/x", tunnel_),
            "/TUNNEL:www.orang.com/x");
}

TEST_F(TunnelRewrite, UrlLeftAlone) {
  for (const char* url : {"style.css", "../up", "?q=1", "#frag", "", "//cdn.example.net/x.js",
                          "http://other.example.com/", "http://www.orang.com.evil.net/",
                          "mailto:a@www.orang.com", "ftp://www.orang.com/", "javascript:void(0)",
                          "/TUNNEL:www.orang.com/x", "/TUNNEL:www.orang.com", "/\\evil.net/"}) {
    EXPECT_EQ(RewriteUrlIntoTunnel(url, tunnel_), std::nullopt) << url;
  }
  // A different tunnel's prefix is just a root-relative path of this service.
  EXPECT_EQ(RewriteUrlIntoTunnel("/TUNNEL:www.orang.community/x", tunnel_),
            "/TUNNEL:www.orang.com/TUNNEL:www.orang.community/x");
}

TEST_F(TunnelRewrite, Location) {
  EXPECT_EQ(RewriteLocation("/landing.html", tunnel_), "/TUNNEL:www.orang.com/landing.html");
  EXPECT_EQ(RewriteLocation("http://www.orang.com/", tunnel_), "/TUNNEL:www.orang.com/");
  EXPECT_EQ(RewriteLocation("https://elsewhere.net/", tunnel_), "https://elsewhere.net/");
  EXPECT_EQ(RewriteLocation("next", tunnel_), "next");
}

TEST_F(TunnelRewrite, Refresh) {
  EXPECT_EQ(RewriteRefresh("5; url=/x", tunnel_), "5; url=/TUNNEL:www.orang.com/x");
  EXPECT_EQ(RewriteRefresh("0;URL = '/x?y' ", tunnel_), "0;URL = '/TUNNEL:www.orang.com/x?y' ");
  EXPECT_EQ(RewriteRefresh("0; URL=\"http://www.orang.com/a\"", tunnel_),
            "0; URL=\"/TUNNEL:www.orang.com/a\"");
  EXPECT_EQ(RewriteRefresh("3,/plain", tunnel_), "3,/TUNNEL:www.orang.com/plain");
  EXPECT_EQ(RewriteRefresh("10", tunnel_), "10");
  EXPECT_EQ(RewriteRefresh("1; url=http://other.net/", tunnel_), "1; url=http://other.net/");
  EXPECT_EQ(RewriteRefresh("1; url=relative", tunnel_), "1; url=relative");
}

TEST_F(TunnelRewrite, SetCookiePath) {
  EXPECT_EQ(RewriteSetCookie("session=abc; Path=/account", tunnel_),
            "session=abc; Path=/TUNNEL:www.orang.com/account");
  EXPECT_EQ(RewriteSetCookie("a=b; path=/; HttpOnly", tunnel_),
            "a=b; Path=/TUNNEL:www.orang.com/; HttpOnly");
  EXPECT_EQ(RewriteSetCookie("a=b;Secure;PATH=/x/;Max-Age=60", tunnel_),
            "a=b;Secure; Path=/TUNNEL:www.orang.com/x/;Max-Age=60");
  // Already inside the prefix.
  EXPECT_EQ(RewriteSetCookie("a=b; Path=/TUNNEL:www.orang.com/x", tunnel_),
            "a=b; Path=/TUNNEL:www.orang.com/x");
}

TEST_F(TunnelRewrite, SetCookieDefaultPath) {
  // The request was /shop/cart/add: the browser would have defaulted to /shop/cart.
  EXPECT_EQ(RewriteSetCookie("a=b", tunnel_), "a=b; Path=/TUNNEL:www.orang.com/shop/cart");
  EXPECT_EQ(RewriteSetCookie("a=b; Path=relative", tunnel_),
            "a=b; Path=/TUNNEL:www.orang.com/shop/cart");
  TunnelContext root = MakeTunnelContext("www.orang.com", "/login");
  EXPECT_EQ(RewriteSetCookie("a=b; HttpOnly", root), "a=b; HttpOnly; Path=/TUNNEL:www.orang.com/");
}

TEST_F(TunnelRewrite, SetCookieDomain) {
  EXPECT_EQ(RewriteSetCookie("a=b; Domain=www.orang.com; Path=/", tunnel_),
            "a=b; Path=/TUNNEL:www.orang.com/");
  EXPECT_EQ(RewriteSetCookie("a=b; domain=.Orang.com; Path=/", tunnel_),
            "a=b; Path=/TUNNEL:www.orang.com/");
  // Not a domain of the service: left for the browser to judge.
  EXPECT_EQ(RewriteSetCookie("a=b; Domain=ang.com; Path=/", tunnel_),
            "a=b; Domain=ang.com; Path=/TUNNEL:www.orang.com/");
}

TEST(TunnelRequest, Referer) {
  EXPECT_EQ(RewriteRefererOutOfTunnel("http://relay.test:8080/TUNNEL:www.orang.com/a?b",
                                      "relay.test:8080", "www.orang.com"),
            "http://www.orang.com/a?b");
  EXPECT_EQ(RewriteRefererOutOfTunnel("https://RELAY.test/TUNNEL:WWW.orang.com", "relay.test",
                                      "www.orang.com"),
            "https://www.orang.com/");
  // Another tunnel, another host, or not inside a tunnel: unchanged.
  for (const char* referer :
       {"http://relay.test/TUNNEL:other.com/a", "http://evil.test/TUNNEL:www.orang.com/a",
        "http://relay.test/a", "garbage", ""}) {
    EXPECT_EQ(RewriteRefererOutOfTunnel(referer, "relay.test", "www.orang.com"), referer);
  }
}

TEST(TunnelRequest, Origin) {
  EXPECT_EQ(RewriteOriginOutOfTunnel("http://relay.test:8080", "relay.test:8080", "www.orang.com"),
            "http://www.orang.com");
  EXPECT_EQ(RewriteOriginOutOfTunnel("null", "relay.test", "www.orang.com"), "null");
  EXPECT_EQ(RewriteOriginOutOfTunnel("http://other.test", "relay.test", "www.orang.com"),
            "http://other.test");
}

}  // namespace
}  // namespace rdv
