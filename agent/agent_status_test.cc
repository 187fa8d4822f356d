#include "agent/agent_status.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

AgentStatus Example() {
  AgentStatus status;
  status.agent_id = "site-a";
  status.links = {{"127.0.0.1:7000", "up"}, {"[::1]:7000", "connecting"}};
  AgentTunnelStatus tunnel;
  tunnel.kind = "pair";
  tunnel.name = "site-b";
  tunnel.role = "connect";
  tunnel.state = "up";
  tunnel.peer_agent = "site-b-agent";
  tunnel.hops = {"relay-a", "relay-b"};
  tunnel.streams = 3;
  tunnel.security = "psk";
  tunnel.path = "data";
  status.tunnels.push_back(tunnel);
  return status;
}

TEST(AgentStatusTest, JsonShape) {
  AgentStatus status;
  status.agent_id = "a1";
  status.links = {{"127.0.0.1:7000", "up"}};
  EXPECT_EQ(RenderAgentStatusJson(status),
            "{\"agent_id\": \"a1\", \"links\": [{\"relay\": \"127.0.0.1:7000\", \"state\": "
            "\"up\"}], \"tunnels\": []}\n");
  EXPECT_EQ(RenderAgentStatusJson(Example()),
            "{\"agent_id\": \"site-a\", \"links\": [{\"relay\": \"127.0.0.1:7000\", \"state\": "
            "\"up\"}, {\"relay\": \"[::1]:7000\", \"state\": \"connecting\"}], \"tunnels\": "
            "[{\"kind\": \"pair\", \"name\": \"site-b\", \"role\": \"connect\", \"state\": "
            "\"up\", \"peer_agent\": \"site-b-agent\", \"hops\": [\"relay-a\", \"relay-b\"], "
            "\"streams\": 3, \"security\": \"psk\", \"path\": \"data\"}]}\n");
}

TEST(AgentStatusTest, JsonQuoteEscapes) {
  EXPECT_EQ(JsonQuote("plain"), "\"plain\"");
  EXPECT_EQ(JsonQuote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(JsonQuote("line\nfeed\ttab\r"), "\"line\\nfeed\\ttab\\r\"");
  EXPECT_EQ(JsonQuote(std::string("nul\0bel\x07 del\x7f", 13)),
            "\"nul\\u0000bel\\u0007 del\\u007f\"");
  EXPECT_EQ(JsonQuote("caf\xc3\xa9 \xe2\x82\xac"), "\"caf\xc3\xa9 \xe2\x82\xac\"");  // UTF-8 kept
  EXPECT_EQ(JsonQuote("bad \xff \xc3 \xed\xa0\x80 \xc0\xaf"),
            "\"bad \\ufffd \\ufffd \\ufffd\\ufffd\\ufffd \\ufffd\\ufffd\"");
}

TEST(AgentStatusTest, RoundTrip) {
  AgentStatus status = Example();
  status.agent_id = "odd \"id\"\\ with\ncontrol\x01 and caf\xc3\xa9";
  absl::StatusOr<AgentStatus> parsed = ParseAgentStatusJson(RenderAgentStatusJson(status));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->agent_id, status.agent_id);
  ASSERT_EQ(parsed->links.size(), 2u);
  EXPECT_EQ(parsed->links[1].relay, "[::1]:7000");
  EXPECT_EQ(parsed->links[1].state, "connecting");
  ASSERT_EQ(parsed->tunnels.size(), 1u);
  const AgentTunnelStatus& tunnel = parsed->tunnels[0];
  EXPECT_EQ(tunnel.kind, "pair");
  EXPECT_EQ(tunnel.name, "site-b");
  EXPECT_EQ(tunnel.role, "connect");
  EXPECT_EQ(tunnel.state, "up");
  EXPECT_EQ(tunnel.peer_agent, "site-b-agent");
  EXPECT_THAT(tunnel.hops, testing::ElementsAre("relay-a", "relay-b"));
  EXPECT_EQ(tunnel.streams, 3u);
  EXPECT_EQ(tunnel.security, "psk");
  EXPECT_EQ(tunnel.path, "data");
}

TEST(AgentStatusTest, Draining) {
  AgentStatus status;
  status.agent_id = "a1";
  status.draining = true;
  status.open_streams = 2;
  EXPECT_EQ(RenderAgentStatusJson(status),
            "{\"agent_id\": \"a1\", \"draining\": true, \"open_streams\": 2, \"links\": [], "
            "\"tunnels\": []}\n");
  absl::StatusOr<AgentStatus> parsed = ParseAgentStatusJson(RenderAgentStatusJson(status));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->draining);
  EXPECT_EQ(parsed->open_streams, 2u);
  parsed = ParseAgentStatusJson("{\"agent_id\": \"a1\"}");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->draining);
  EXPECT_FALSE(ParseAgentStatusJson("{\"agent_id\": \"a\", \"draining\": \"maybe\"}").ok());
}

TEST(AgentStatusTest, ParseRejectsNonsense) {
  EXPECT_FALSE(ParseAgentStatusJson("<html>").ok());
  EXPECT_FALSE(ParseAgentStatusJson("[1, 2]").ok());
  EXPECT_FALSE(ParseAgentStatusJson("{\"agent_id\": [1]}").ok());
  EXPECT_FALSE(ParseAgentStatusJson("{\"agent_id\": \"a\", \"links\": [1]}").ok());
}

TEST(AgentStatusTest, Summary) {
  EXPECT_EQ(FormatAgentStatus(Example()),
            "agent site-a\n"
            "links:\n"
            "  127.0.0.1:7000 up\n"
            "  [::1]:7000 connecting\n"
            "tunnels:\n"
            "  pair site-b connect up peer site-b-agent via relay-a -> relay-b (psk, 3 streams, "
            "data path)\n");
  AgentStatus on_link = Example();
  on_link.tunnels[0].path = "link";
  on_link.tunnels[0].streams = 1;
  EXPECT_THAT(FormatAgentStatus(on_link),
              HasSubstr("  pair site-b connect up peer site-b-agent via relay-a -> relay-b (psk, "
                        "1 stream)\n"));
  AgentStatus draining = Example();
  draining.draining = true;
  draining.open_streams = 1;
  EXPECT_THAT(FormatAgentStatus(draining), testing::StartsWith("agent site-a (draining, 1 open "
                                                               "stream)\nlinks:\n"));
  AgentStatus empty;
  empty.agent_id = "lonely";
  EXPECT_EQ(FormatAgentStatus(empty), "agent lonely\nlinks: none\ntunnels: none\n");
}

}  // namespace
}  // namespace rdv
