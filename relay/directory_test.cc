#include "relay/directory.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

namespace rdv {
namespace {

class FakeCarrier : public StreamCarrier {
 public:
  FakeCarrier(std::string credential, int worker, std::string agent = "")
      : credential_(std::move(credential)), worker_(worker), agent_(std::move(agent)) {}
  const std::string& credential() const override { return credential_; }
  int worker() const override { return worker_; }
  const std::string& agent() const override { return agent_; }
  size_t open_streams() const override { return streams; }

  size_t streams = 0;

 private:
  std::string credential_;
  int worker_;
  std::string agent_;
};

link::ServiceSpec Http(const std::string& name, const std::string& balance = "") {
  link::ServiceSpec spec;
  spec.set_kind(link::HTTP);
  spec.set_name(name);
  spec.set_balance(balance);
  return spec;
}

// Routes `n` times from `worker` and counts the picks per carrier.
std::map<const StreamCarrier*, int> Spread(Directory& directory, int n, int worker = 0,
                                           std::string_view client_ip = "") {
  std::map<const StreamCarrier*, int> picks;
  for (int i = 0; i < n; ++i) {
    RouteResult r = directory.RouteHttp("www.orang.com", worker, client_ip);
    EXPECT_EQ(r.outcome, RouteResult::Outcome::kFound);
    picks[r.carrier]++;
  }
  return picks;
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

TEST(DirectoryTest, ForgottenClaimsFreeTheirNamesAndAliases) {
  InMemoryDirectory directory("relay.test");
  FakeCarrier owner("orang", 0), other("other", 0);
  ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "www", owner).ok());
  ASSERT_TRUE(directory.Claim(Http("api.orang.com"), "api", owner).ok());
  directory.Release(owner);  // a claim outlives its links
  size_t forgotten =
      directory.ForgetClaims([](const std::string& credential, const link::ServiceSpec& service) {
        return !(credential == "orang" && service.name() == "www.orang.com");
      });
  EXPECT_EQ(forgotten, 1u);
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").outcome, RouteResult::Outcome::kUnknown);
  EXPECT_EQ(directory.RouteHttp("api.orang.com", 0, "").outcome, RouteResult::Outcome::kNoLink);
  // The name and its alias are free for another credential now; the kept claim is not.
  EXPECT_TRUE(directory.Claim(Http("www.orang.com"), "www", other).ok());
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").carrier, &other);
  EXPECT_EQ(directory.Claim(Http("api.orang.com"), "", other).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(DirectoryTest, RoundRobinSpreadsOverAllWorkers) {
  // The policy decides across workers; a member on another worker is reached by a hand-off.
  InMemoryDirectory directory("");
  FakeCarrier w0a("orang", 0), w0b("orang", 0), w1("orang", 1);
  for (FakeCarrier* c : {&w0a, &w0b, &w1}) {
    ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", *c).ok());
  }
  std::map<const StreamCarrier*, int> picks = Spread(directory, 30);
  EXPECT_EQ(picks[&w0a], 10);
  EXPECT_EQ(picks[&w0b], 10);
  EXPECT_EQ(picks[&w1], 10);
  RouteResult r;
  do {
    r = directory.RouteHttp("www.orang.com", 0, "");
  } while (r.carrier != &w1);
  EXPECT_EQ(r.worker, 1);
  // A worker with no local member is told where the service lives.
  FakeCarrier only("other", 1);
  ASSERT_TRUE(directory.Claim(Http("solo.example"), "", only).ok());
  RouteResult remote = directory.RouteHttp("solo.example", 0, "");
  EXPECT_EQ(remote.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(remote.worker, 1);
}

TEST(DirectoryTest, MembersAreAgentsNotLinks) {
  // Agent a keeps three links, agent b one: round robin alternates agents, then a's links in
  // turn, preferring the caller's worker.
  InMemoryDirectory directory("");
  FakeCarrier a0("orang", 0, "a"), a1("orang", 1, "a"), a0bis("orang", 0, "a"), b1("orang", 1, "b");
  for (FakeCarrier* c : {&a0, &a1, &a0bis, &b1}) {
    ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", *c).ok());
  }
  std::map<const StreamCarrier*, int> picks = Spread(directory, 20, /*worker=*/0);
  EXPECT_EQ(picks[&b1], 10);
  EXPECT_EQ(picks[&a0] + picks[&a0bis], 10);
  EXPECT_EQ(picks[&a1], 0);  // a has links on worker 0: no hand-off needed
  EXPECT_GE(picks[&a0], 4);
  EXPECT_GE(picks[&a0bis], 4);
  // From worker 1, a's link there is used.
  picks = Spread(directory, 20, /*worker=*/1);
  EXPECT_EQ(picks[&a1], 10);
  EXPECT_EQ(picks[&b1], 10);
}

TEST(DirectoryTest, LeastStreamsPicksTheLeastLoadedAgent) {
  InMemoryDirectory directory("");
  FakeCarrier a("orang", 0, "a"), b("orang", 0, "b"), c("orang", 1, "c");
  for (FakeCarrier* x : {&a, &b, &c}) {
    ASSERT_TRUE(directory.Claim(Http("www.orang.com", "least_streams"), "", *x).ok());
  }
  // Idle: the tied agents take turns, so every agent gets its share.
  std::map<const StreamCarrier*, int> picks = Spread(directory, 30);
  EXPECT_EQ(picks[&a], 10);
  EXPECT_EQ(picks[&b], 10);
  EXPECT_EQ(picks[&c], 10);
  // a holds streams: new ones go to b and c only.
  a.streams = 5;
  picks = Spread(directory, 20);
  EXPECT_EQ(picks[&a], 0);
  EXPECT_EQ(picks[&b], 10);
  EXPECT_EQ(picks[&c], 10);
  // The count follows the opens: simulate each pick opening a stream that stays.
  std::map<const StreamCarrier*, int> opened;
  b.streams = 0;
  c.streams = 0;
  for (int i = 0; i < 16; ++i) {
    RouteResult r = directory.RouteHttp("www.orang.com", 0, "");
    ++static_cast<FakeCarrier*>(r.carrier)->streams;
    opened[r.carrier]++;
  }
  EXPECT_EQ(opened[&a], 2);  // b and c caught up with a's 5 first, then all three alternate
  EXPECT_EQ(opened[&b], 7);
  EXPECT_EQ(opened[&c], 7);
  // An agent's load is the sum over its links.
  FakeCarrier d0("orang", 0, "d"), d1("orang", 1, "d");
  ASSERT_TRUE(directory.Claim(Http("www.orang.com", "least_streams"), "", d0).ok());
  ASSERT_TRUE(directory.Claim(Http("www.orang.com", "least_streams"), "", d1).ok());
  d0.streams = 4;
  d1.streams = 4;  // 8 in all, more than a, b and c (7 each)
  EXPECT_NE(directory.RouteHttp("www.orang.com", 0, "").carrier->agent(), "d");
}

TEST(DirectoryTest, ClientIpHashIsStickyAndMovesOnlyTheLeaversShare) {
  InMemoryDirectory directory("");
  FakeCarrier a("orang", 0, "a"), b("orang", 0, "b"), c("orang", 1, "c");
  for (FakeCarrier* x : {&a, &b, &c}) {
    ASSERT_TRUE(directory.Claim(Http("www.orang.com", "client_ip_hash"), "", *x).ok());
  }
  std::map<std::string, const StreamCarrier*> owner;
  std::map<const StreamCarrier*, int> share;
  for (int i = 1; i <= 300; ++i) {
    std::string ip = "10.0." + std::to_string(i / 256) + "." + std::to_string(i % 256);
    RouteResult first = directory.RouteHttp("www.orang.com", 0, ip);
    for (int repeat = 0; repeat < 3; ++repeat) {
      EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, ip).carrier, first.carrier) << ip;
    }
    owner[ip] = first.carrier;
    share[first.carrier]++;
  }
  for (FakeCarrier* x : {&a, &b, &c}) {
    EXPECT_GT(share[x], 60) << x->agent();  // 100 expected each
  }
  // c leaves: its clients spread over a and b, everybody else stays put.
  directory.Release(c);
  for (const auto& [ip, carrier] : owner) {
    const StreamCarrier* now = directory.RouteHttp("www.orang.com", 0, ip).carrier;
    if (carrier == &c) {
      EXPECT_TRUE(now == &a || now == &b);
    } else {
      EXPECT_EQ(now, carrier) << ip;
    }
  }
  // IPv6 literals hash like any other address; no client address falls back to round robin.
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "2001:db8::1").carrier,
            directory.RouteHttp("www.orang.com", 0, "2001:db8::1").carrier);
  std::map<const StreamCarrier*, int> picks = Spread(directory, 10, 0, "");
  EXPECT_EQ(picks[&a], 5);
  EXPECT_EQ(picks[&b], 5);
}

TEST(DirectoryTest, UnhealthyAgentsGetNoNewStreams) {
  InMemoryDirectory directory("");
  FakeCarrier a0("orang", 0, "a"), a1("orang", 1, "a"), b("orang", 0, "b"), c("orang", 0, "c");
  for (FakeCarrier* x : {&a0, &a1, &b, &c}) {
    ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", *x).ok());
  }
  // A report on one link covers the agent: both of a's links stop taking streams.
  absl::StatusOr<bool> changed = directory.SetHealth(a0, link::HTTP, "www.orang.com", false);
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(*changed);
  changed = directory.SetHealth(a1, link::HTTP, "www.orang.com", false);
  ASSERT_TRUE(changed.ok());
  EXPECT_FALSE(*changed);  // the same news over the agent's other link
  std::map<const StreamCarrier*, int> picks = Spread(directory, 20);
  EXPECT_EQ(picks[&a0] + picks[&a1], 0);
  EXPECT_EQ(picks[&b], 10);
  EXPECT_EQ(picks[&c], 10);

  // Everybody unhealthy: no link to route to, and the caller can say why.
  ASSERT_TRUE(directory.SetHealth(b, link::HTTP, "www.orang.com", false).ok());
  ASSERT_TRUE(directory.SetHealth(c, link::HTTP, "www.orang.com", false).ok());
  RouteResult none = directory.RouteHttp("www.orang.com", 0, "");
  EXPECT_EQ(none.outcome, RouteResult::Outcome::kNoLink);
  EXPECT_TRUE(none.unhealthy);

  // Recovery over either link brings the agent back.
  changed = directory.SetHealth(a1, link::HTTP, "www.orang.com", true);
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(*changed);
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").carrier, &a0);

  // A report for a name the link does not serve is refused.
  EXPECT_EQ(directory.SetHealth(a0, link::HTTP, "other.orang.com", false).status().code(),
            absl::StatusCode::kNotFound);

  // An agent whose links all left forgets its report: a new link starts healthy.
  directory.Release(b);
  FakeCarrier b_again("orang", 0, "b");
  ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", b_again).ok());
  picks = Spread(directory, 20);
  EXPECT_EQ(picks[&b_again], 10);
  EXPECT_EQ(picks[&a0], 10);
}

TEST(DirectoryTest, PolicyBelongsToTheGroup) {
  InMemoryDirectory directory("");
  FakeCarrier a("orang", 0, "a"), a_second("orang", 0, "a"), b("orang", 0, "b");
  ASSERT_TRUE(directory.Claim(Http("www.orang.com", "least_streams"), "", a).ok());
  absl::Status mismatch = directory.Claim(Http("www.orang.com", "round_robin"), "", b);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(mismatch.message().find("least_streams"), std::string_view::npos);
  EXPECT_EQ(directory.Claim(Http("www.orang.com", "fastest"), "", b).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").service.balance(), "least_streams");
  // Once the group is empty, the next registration sets the policy ("" = round robin).
  directory.Release(a);
  ASSERT_TRUE(directory.Claim(Http("www.orang.com", ""), "", b).ok());
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 0, "").service.balance(), "round_robin");
  EXPECT_TRUE(directory.Claim(Http("www.orang.com", "round_robin"), "", a_second).ok());
  // An agent's own links do not hold the policy against it (a restart with another policy
  // while its old link lingers), other agents' do.
  FakeCarrier a_restarted("orang", 1, "a");
  EXPECT_EQ(directory.Claim(Http("www.orang.com", "least_streams"), "", a_restarted).code(),
            absl::StatusCode::kFailedPrecondition);  // b is another agent of the group
  directory.Release(b);
  EXPECT_TRUE(directory.Claim(Http("www.orang.com", "least_streams"), "", a_restarted).ok());
  EXPECT_EQ(directory.RouteHttp("www.orang.com", 1, "").service.balance(), "least_streams");
}

TEST(DirectoryTest, RerouteKeepsTheHandedOffChoice) {
  InMemoryDirectory directory("");
  FakeCarrier a("orang", 0, "a"), b("orang", 1, "b");
  ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", a).ok());
  ASSERT_TRUE(directory.Claim(Http("www.orang.com"), "", b).ok());
  // Worker 0 picked b on worker 1; worker 1 keeps that choice without advancing the turn.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(directory.Reroute(link::HTTP, "www.orang.com", 1, "", &b).carrier, &b);
  }
  std::map<const StreamCarrier*, int> picks = Spread(directory, 10);
  EXPECT_EQ(picks[&a], 5);
  EXPECT_EQ(picks[&b], 5);
  // Lookup matches without picking.
  RouteResult looked = directory.Lookup(link::HTTP, "www.orang.com");
  EXPECT_EQ(looked.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(looked.carrier, nullptr);
  EXPECT_EQ(directory.Lookup(link::HTTP, "nope.example").outcome, RouteResult::Outcome::kUnknown);
  // The chosen link went unhealthy or away meanwhile: a fresh pick.
  ASSERT_TRUE(directory.SetHealth(b, link::HTTP, "www.orang.com", false).ok());
  EXPECT_EQ(directory.Reroute(link::HTTP, "www.orang.com", 1, "", &b).carrier, &a);
  directory.Release(b);
  EXPECT_EQ(directory.Reroute(link::HTTP, "www.orang.com", 1, "", &b).carrier, &a);
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

link::ServiceSpec Private(const std::string& name) {
  link::ServiceSpec spec;
  spec.set_kind(link::PRIVATE);
  spec.set_name(name);
  return spec;
}

link::ServiceSpec Pair(const std::string& name, const std::string& pair_id) {
  link::ServiceSpec spec;
  spec.set_kind(link::PAIR);
  spec.set_name(name);
  spec.set_pair_id(pair_id);
  return spec;
}

constexpr char kPairIdA[] = "0123456789abcdef0123456789abcdef";
constexpr char kPairIdB[] = "fedcba9876543210fedcba9876543210";

TEST(DirectoryTest, PairsAreKeyedByPairId) {
  InMemoryDirectory directory("relay.test");
  FakeCarrier a("site-a", 0, "agent-a"), b("site-b", 1, "agent-b"), other("site-a", 0, "a2");
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", a).ok());
  // Another pairing secret under the same name is another pair: no conflict.
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdB), "", b).ok());

  RouteResult first = directory.RoutePair(kPairIdA, 0, "");
  EXPECT_EQ(first.outcome, RouteResult::Outcome::kFound);
  EXPECT_EQ(first.carrier, &a);
  EXPECT_EQ(first.service.name(), "site-b");
  EXPECT_EQ(first.service.pair_id(), kPairIdA);
  EXPECT_EQ(directory.RoutePair(kPairIdB, 0, "").carrier, &b);
  EXPECT_EQ(directory.RoutePair(kPairIdB, 0, "").worker, 1);
  // Not by name.
  EXPECT_EQ(directory.RouteService(link::PAIR, "site-b", 0, "").outcome,
            RouteResult::Outcome::kUnknown);

  // A pair id is unique relay-wide: another credential cannot take it.
  FakeCarrier thief("mallory", 0, "m");
  absl::Status taken = directory.Claim(Pair("site-b", kPairIdA), "", thief);
  EXPECT_EQ(taken.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(taken.message(), "pair site-b (this pairing secret) is held by another credential");
  // The same credential's other agent joins the group.
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", other).ok());
  std::map<const StreamCarrier*, int> picks;
  for (int i = 0; i < 4; ++i) picks[directory.RoutePair(kPairIdA, 0, "").carrier]++;
  EXPECT_EQ(picks[&a], 2);
  EXPECT_EQ(picks[&other], 2);
}

TEST(DirectoryTest, TunnelEntriesAreNeverReachedFromPublicKinds) {
  InMemoryDirectory directory("relay.test");
  FakeCarrier c("site", 0);
  ASSERT_TRUE(directory.Claim(Private("db"), "", c).ok());
  ASSERT_TRUE(directory.Claim(Pair("db", kPairIdA), "", c).ok());
  EXPECT_EQ(directory.RouteService(link::PRIVATE, "db", 0, "").carrier, &c);
  for (link::ServiceKind kind : {link::HTTP, link::TLS, link::SMTP}) {
    EXPECT_EQ(directory.RouteHost(kind, "db", 0, "").outcome, RouteResult::Outcome::kUnknown);
    EXPECT_EQ(directory.RouteHost(kind, std::string(kPairIdA), 0, "").outcome,
              RouteResult::Outcome::kUnknown);
    EXPECT_EQ(directory.Lookup(kind, "db").outcome, RouteResult::Outcome::kUnknown);
  }
  for (link::ServiceKind kind : {link::TCP, link::UDP}) {
    EXPECT_EQ(directory.RouteService(kind, "db", 0, "").outcome, RouteResult::Outcome::kUnknown);
    EXPECT_EQ(directory.RouteService(kind, std::string(kPairIdA), 0, "").outcome,
              RouteResult::Outcome::kUnknown);
  }
  // Nor by a zone alias or a wildcard: tunnel kinds match exactly.
  EXPECT_EQ(directory.RouteHttp("db.relay.test", 0, "").outcome, RouteResult::Outcome::kUnknown);
  EXPECT_EQ(directory.RouteHost(link::PRIVATE, "x.db", 0, "").outcome,
            RouteResult::Outcome::kUnknown);
}

TEST(DirectoryTest, TunnelServicesListsHeldTunnelEntries) {
  InMemoryDirectory directory("");
  FakeCarrier a("site", 0, "agent-a"), b("site", 1, "agent-b");
  link::ServiceSpec tcp;
  tcp.set_kind(link::TCP);
  tcp.set_name("ssh");
  ASSERT_TRUE(directory.Claim(tcp, "", a).ok());
  ASSERT_TRUE(directory.Claim(Private("db"), "", a).ok());
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", b).ok());
  EXPECT_TRUE(directory.Claim(Http("www.orang.com"), "", a).ok());

  auto names = [&] {
    std::map<std::string, std::string> out;  // name -> pair_id
    for (const link::ServiceSpec& spec : directory.TunnelServices()) {
      EXPECT_TRUE(IsTunnelKind(spec.kind()));
      out[spec.name()] = spec.pair_id();
    }
    return out;
  };
  EXPECT_EQ(names(), (std::map<std::string, std::string>{{"db", ""}, {"site-b", kPairIdA}}));
  // Entries whose members all left are not listed (their claims remain).
  directory.Release(b);
  EXPECT_EQ(names(), (std::map<std::string, std::string>{{"db", ""}}));
  EXPECT_EQ(directory.RoutePair(kPairIdA, 0, "").outcome, RouteResult::Outcome::kNoLink);
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", b).ok());
  EXPECT_EQ(names().size(), 2u);
}

TEST(DirectoryTest, WithdrawForgetsOneRegistrationOfOneLink) {
  InMemoryDirectory directory("");
  FakeCarrier a("site", 0, "agent-a"), a2("site", 1, "agent-a"), b("site", 0, "agent-b");
  ASSERT_TRUE(directory.Claim(Private("db"), "", a).ok());
  ASSERT_TRUE(directory.Claim(Private("db"), "", a2).ok());
  ASSERT_TRUE(directory.Claim(Private("cache"), "", a).ok());
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", b).ok());

  EXPECT_TRUE(directory.Withdraw(Private("db"), a));
  EXPECT_FALSE(directory.Withdraw(Private("db"), a));   // already gone
  EXPECT_FALSE(directory.Withdraw(Private("web"), a));  // never registered
  // The agent's other link still serves db; the link's other registration stays.
  EXPECT_EQ(directory.RouteService(link::PRIVATE, "db", 0, "").carrier, &a2);
  EXPECT_EQ(directory.RouteService(link::PRIVATE, "cache", 0, "").carrier, &a);
  EXPECT_TRUE(directory.Withdraw(Private("db"), a2));
  EXPECT_EQ(directory.RouteService(link::PRIVATE, "db", 0, "").outcome,
            RouteResult::Outcome::kNoLink);

  // A pair by its pair_id; the wrong pair_id does not match; by name when it has none.
  EXPECT_FALSE(directory.Withdraw(Pair("site-b", kPairIdB), b));
  EXPECT_TRUE(directory.Withdraw(Pair("site-b", kPairIdA), b));
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", b).ok());
  EXPECT_TRUE(directory.Withdraw(Pair("site-b", ""), b));
  EXPECT_EQ(directory.RoutePair(kPairIdA, 0, "").outcome, RouteResult::Outcome::kNoLink);
  EXPECT_EQ(directory.TunnelServices().size(), 1u);  // cache
}

TEST(DirectoryTest, HealthOfAPairIsReportedByName) {
  InMemoryDirectory directory("");
  FakeCarrier a("site", 0, "agent-a"), b("site", 0, "agent-b");
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", a).ok());
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", b).ok());
  absl::StatusOr<bool> changed = directory.SetHealth(a, link::PAIR, "site-b", false);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_TRUE(*changed);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(directory.RoutePair(kPairIdA, 0, "").carrier, &b);
  EXPECT_FALSE(directory.SetHealth(a, link::PAIR, "office", false).ok());
  EXPECT_FALSE(directory.SetHealth(a, link::PRIVATE, "site-b", false).ok());
}

TEST(DirectoryTest, OtherPairHoldersOneLinkPerAgent) {
  InMemoryDirectory directory("");
  FakeCarrier a1("site", 0, "agent-a"), a2("site", 1, "agent-a"), b("other", 1, "agent-b"),
      same("site", 0, "agent-c");
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", a1).ok());
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdA), "", a2).ok());
  ASSERT_TRUE(directory.Claim(Pair("site-b", kPairIdB), "", b).ok());
  ASSERT_TRUE(directory.Claim(Pair("office", std::string(31, 'a') + "b"), "", same).ok());

  // Someone asked for "site-b" with a third secret: both pairs' holders are told, once each.
  std::vector<RouteResult> holders = directory.OtherPairHolders("site-b", std::string(32, 'c'));
  ASSERT_EQ(holders.size(), 2u);
  std::map<const StreamCarrier*, int> workers;
  for (const RouteResult& holder : holders) workers[holder.carrier] = holder.worker;
  EXPECT_TRUE(workers.contains(&a1) != workers.contains(&a2));
  EXPECT_EQ(workers.at(&b), 1);
  // The asker's own pair id is not "other".
  holders = directory.OtherPairHolders("site-b", kPairIdA);
  ASSERT_EQ(holders.size(), 1u);
  EXPECT_EQ(holders[0].carrier, &b);
  EXPECT_EQ(holders[0].service.pair_id(), kPairIdB);
  EXPECT_TRUE(directory.OtherPairHolders("nobody", kPairIdA).empty());
}

}  // namespace
}  // namespace rdv
