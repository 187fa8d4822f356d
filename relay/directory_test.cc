#include "relay/directory.h"

#include <gtest/gtest.h>

namespace rdv {
namespace {

class FakeCarrier : public StreamCarrier {
 public:
  FakeCarrier(std::string credential, int worker)
      : credential_(std::move(credential)), worker_(worker) {}
  const std::string& credential() const override { return credential_; }
  int worker() const override { return worker_; }

 private:
  std::string credential_;
  int worker_;
};

link::ServiceSpec Http(const std::string& name) {
  link::ServiceSpec spec;
  spec.set_kind(link::HTTP);
  spec.set_name(name);
  return spec;
}

TEST(DirectoryTest, ExactWildcardAndAlias) {
  InMemoryDirectory directory("relay.test");
  FakeCarrier a("orang", 0), b("orang", 0);
  ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "www-orang-com", a).ok());
  ASSERT_TRUE(directory.Claim(Http("*.orang.com"), "wild", b).ok());

  RouteResult exact = directory.RouteHttp("www.orang.com", 0, "");
  EXPECT_EQ(exact.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(exact.carrier, &a);

  RouteResult wildcard = directory.RouteHttp("deep.api.orang.com", 0, "");
  EXPECT_EQ(wildcard.carrier, &b);
  EXPECT_EQ(wildcard.service.name(), "*.orang.com");

  EXPECT_EQ(directory.RouteHttp("www-orang-com.relay.test", 0, "").carrier, &a);
  EXPECT_EQ(directory.RouteHttp("wild.relay.test", 0, "").carrier, &b);
  // The wildcard does not cover the bare domain nor look-alikes.
  EXPECT_EQ(directory.RouteHttp("orang.com", 0, "").outcome, RouteResult::Outcome::kUnknown);
  EXPECT_EQ(directory.RouteHttp("evilorang.com", 0, "").outcome, RouteResult::Outcome::kUnknown);
}

TEST(DirectoryTest, LongestWildcardWins) {
  InMemoryDirectory directory("");
  FakeCarrier outer("orang", 0), inner("orang", 0);
  ASSERT_TRUE(directory.Claim(Http("*.orang.com"), "", outer).ok());
  ASSERT_TRUE(directory.Claim(Http("*.api.orang.com"), "", inner).ok());
  EXPECT_EQ(directory.RouteHttp("v1.api.orang.com", 0, "").carrier, &inner);
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").carrier, &outer);
}

TEST(DirectoryTest, NamesStayWithTheirCredential) {
  InMemoryDirectory directory("relay.test");
  FakeCarrier owner("orang", 0), thief("mallory", 0);
  ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "www", owner).ok());
  absl::Status stolen = directory.Claim(Http("www.orang.com"), "other", thief);
  EXPECT_EQ(stolen.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(directory.Claim(Http("x.mallory.com"), "www", thief).code(),
            absl::StatusCode::kAlreadyExists);  // alias taken
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").carrier, &owner);

  // After the owner's links go away the name is still the owner's: 503, not up for grabs.
  directory.Release(owner);
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").outcome, RouteResult::Outcome::kNoLink);
  EXPECT_FALSE(directory.Claim(Http("www.orang.com"), "", thief).ok());
  FakeCarrier returning("orang", 1);
  EXPECT_TRUE(directory.Claim(Http("www.orang.com"), "www", returning).ok());
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 1, "").carrier, &returning);
}

TEST(DirectoryTest, RoundRobinPrefersTheCallersWorker) {
  InMemoryDirectory directory("");
  FakeCarrier w0a("orang", 0), w0b("orang", 0), w1("orang", 1);
  for (FakeCarrier* c : {&w0a, &w0b, &w1}) {
    ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", *c).ok());
  }
  int a = 0, b = 0;
  for (int i = 0; i < 10; ++i) {
    RouteResult r = directory.RouteHttp("www.orang.com", 0, "");
    ASSERT_EQ(r.worker, 0);
    (r.carrier == &w0a ? a : b)++;
  }
  EXPECT_EQ(a, 5);
  EXPECT_EQ(b, 5);
  // A worker with no local member is told where the service lives.
  FakeCarrier only("other", 1);
  ASSERT_TRUE(directory.Claim(Http("solo.example"), "", only).ok());
  RouteResult remote = directory.RouteHttp("solo.example", 0, "");
  EXPECT_EQ(remote.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(remote.worker, 1);
}

TEST(DirectoryTest, TcpServicesByName) {
  InMemoryDirectory directory("");
  FakeCarrier c("orang", 0);
  link::ServiceSpec db;
  db.set_kind(link::TCP);
  db.set_name("db");
  db.set_port(2020);
  ASSERT_TRUE(directory.Claim(db, "", c).ok());
  RouteResult r = directory.RouteService(link::TCP, "db", 0, "");
  EXPECT_EQ(r.carrier, &c);
  EXPECT_EQ(r.service.port(), 2020u);
  EXPECT_EQ(directory.RouteService(link::TCP, "web", 0, "").outcome,
            RouteResult::Outcome::kUnknown);
  // An http service of the same name is a different address.
  EXPECT_EQ(directory.RouteService(link::HTTP, "db", 0, "").outcome,
            RouteResult::Outcome::kUnknown);
}

}  // namespace
}  // namespace rdv
