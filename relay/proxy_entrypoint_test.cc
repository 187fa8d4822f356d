#include "relay/proxy_entrypoint.h"

#include <gtest/gtest.h>

namespace rdv {
namespace {

class FakeCarrier : public StreamCarrier {
 public:
  const std::string& credential() const override { return credential_; }
  int worker() const override { return 0; }

 private:
  std::string credential_ = "orang";
};

link::ServiceSpec Spec(link::ServiceKind kind, const std::string& name) {
  link::ServiceSpec spec;
  spec.set_kind(kind);
  spec.set_name(name);
  return spec;
}

class RouteProxyDestinationTest : public ::testing::Test {
 protected:
  RouteProxyDestinationTest() : directory_("relay.test") {
    config_.tls.emplace();
    config_.tls->listen = {{"0.0.0.0", 8443}};
    EXPECT_TRUE(directory_.Claim(Spec(link::HTTP, "www.orang.com"), "www", carrier_).ok());
    EXPECT_TRUE(directory_.Claim(Spec(link::TLS, "www.orang.com"), "", carrier_).ok());
    EXPECT_TRUE(directory_.Claim(Spec(link::HTTP, "*.api.orang.com"), "", carrier_).ok());
    EXPECT_TRUE(directory_.Claim(Spec(link::TCP, "db"), "", carrier_).ok());
    EXPECT_TRUE(directory_.Claim(Spec(link::TCP, "away"), "", away_).ok());
    directory_.Release(away_);
  }

  ProxyRoute Route(std::string_view host, uint16_t port) {
    return RouteProxyDestination(config_, directory_, 0, host, port, "127.0.0.1");
  }

  RelayConfig config_;
  InMemoryDirectory directory_;
  FakeCarrier carrier_;
  FakeCarrier away_;
};

TEST_F(RouteProxyDestinationTest, PortSelectsTlsOrHttp) {
  ProxyRoute tls = Route("WWW.Orang.com.", 443);
  EXPECT_FALSE(tls.refused);
  EXPECT_EQ(tls.kind, link::TLS);
  EXPECT_EQ(tls.name, "www.orang.com");
  EXPECT_EQ(tls.route.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(Route("www.orang.com", 8443).kind, link::TLS);  // the tls entrypoint's port
  ProxyRoute http = Route("www.orang.com", 80);
  EXPECT_EQ(http.kind, link::HTTP);
  EXPECT_EQ(http.route.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(Route("www.orang.com", 8080).kind, link::HTTP);
  EXPECT_EQ(Route("x.api.orang.com", 80).kind, link::HTTP);  // wildcard
  EXPECT_EQ(Route("www.relay.test", 80).kind, link::HTTP);   // alias
  EXPECT_TRUE(Route("x.api.orang.com", 443).refused);        // no tls service for it
  EXPECT_EQ(Route("x.api.orang.com", 443).refusal, ProxyRefusal::kUnknownName);
}

TEST_F(RouteProxyDestinationTest, TcpServiceByNameOnAnyPort) {
  for (uint16_t port : {1, 443, 5432}) {
    ProxyRoute route = Route("DB", port);
    EXPECT_FALSE(route.refused);
    EXPECT_EQ(route.kind, link::TCP);
    EXPECT_EQ(route.route.outcome, RouteResult::Outcome::kFound);
  }
  ProxyRoute away = Route("away", 22);
  EXPECT_FALSE(away.refused);
  EXPECT_EQ(away.route.outcome, RouteResult::Outcome::kNoLink);
}

TEST_F(RouteProxyDestinationTest, RefusesAddressesAndUnknownNames) {
  for (std::string_view literal : {"127.0.0.1", "::1", "10.0.0.5", "2001:db8::1"}) {
    ProxyRoute route = Route(literal, 80);
    EXPECT_TRUE(route.refused) << literal;
    EXPECT_EQ(route.refusal, ProxyRefusal::kNotAllowed) << literal;
  }
  for (std::string_view name : {"nope.example", "", "bad name", "a\r\nb", "-x"}) {
    ProxyRoute route = Route(name, 80);
    EXPECT_TRUE(route.refused) << name;
    EXPECT_EQ(route.refusal, ProxyRefusal::kUnknownName) << name;
  }
}

}  // namespace
}  // namespace rdv
