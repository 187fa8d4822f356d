#include "agent/agent_config.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/config_test_support.h"
#include "common/tcp_connection.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

using config_test::Message;

constexpr std::string_view kFingerprint =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// Line numbers in the tests below refer to this text.
constexpr std::string_view kFullConfig = R"(agent_id: agent-7
relays: ["127.0.0.1:7000", "[::1]:7000", "relay.example.com:7443"]
server_name: Relay.Example.com
relay_ca_file: ""
relay_fingerprint: "sha256:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef"
credential:
  name: orang
  secret: "s3cret-s3cret"
  secret_file: ""
links: 3
reconnect:
  initial_ms: 50
  max_ms: 2000
connect_timeout_ms: 1500
log_level: warn
services:
  - name: WWW.orang.com
    kind: http
    target: 127.0.0.1:8081
    alias: ""
  - name: "*.orang.com"
    kind: http
    target: "[::1]:8082"
  - name: api.orang.com
    kind: http
    target: localhost:8083
    alias: API
  - name: db
    kind: tcp
    target: 127.0.0.1:5432
    port: 2020
  - name: cache
    kind: tcp
    target: 127.0.0.1:6379
)";

std::string MinimalConfig(std::string_view services =
                              "services:\n"
                              "  - name: www.orang.com\n"
                              "    kind: http\n"
                              "    target: 127.0.0.1:8081\n") {
  return "relays: [\"127.0.0.1:7000\"]\nrelay_fingerprint: \"" + std::string(kFingerprint) +
         "\"\ncredential:\n  name: orang\n  secret: s3cret-s3cret\n" + std::string(services);
}

absl::StatusOr<AgentConfig> Parse(std::string_view text) {
  return ParseAgentConfig(text, "agent.yaml");
}

// Replaces the first occurrence of `from` in the full config.
std::string FullWith(std::string_view from, std::string_view to) {
  return config_test::ReplaceFirst(kFullConfig, from, to);
}

std::string ErrorOf(std::string_view text) { return config_test::ParseErrorOf(Parse(text), text); }

std::string WriteTempFile(std::string_view name, std::string_view contents) {
  return config_test::WriteTempFile("agent_config_test_", name, contents);
}

TEST(AgentConfigTest, FullExample) {
  absl::StatusOr<AgentConfig> config = Parse(kFullConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->agent_id, "agent-7");
  EXPECT_THAT(config->relays, ElementsAre(HostPort{"127.0.0.1", 7000}, HostPort{"::1", 7000},
                                          HostPort{"relay.example.com", 7443}));
  EXPECT_EQ(config->server_name, "relay.example.com");
  EXPECT_EQ(config->relay_ca_file, "");
  EXPECT_EQ(config->relay_fingerprint, kFingerprint);
  EXPECT_EQ(config->credential.name, "orang");
  EXPECT_EQ(config->credential.secret, "s3cret-s3cret");
  EXPECT_EQ(config->links, 3u);
  EXPECT_EQ(config->reconnect.initial, absl::Milliseconds(50));
  EXPECT_EQ(config->reconnect.max, absl::Milliseconds(2000));
  EXPECT_EQ(config->connect_timeout, absl::Milliseconds(1500));
  EXPECT_EQ(config->log_level, "warn");
  ASSERT_EQ(config->services.size(), 5u);

  const ServiceConfig& www = config->services[0];
  EXPECT_EQ(www.name, "www.orang.com");
  EXPECT_EQ(www.kind, ServiceConfig::Kind::kHttp);
  EXPECT_EQ(www.kind_name(), "http");
  EXPECT_EQ(www.target, (HostPort{"127.0.0.1", 8081}));
  EXPECT_EQ(www.alias, "www-orang-com");
  EXPECT_EQ(www.port, 0);

  EXPECT_EQ(config->services[1].name, "*.orang.com");
  EXPECT_EQ(config->services[1].target, (HostPort{"::1", 8082}));
  EXPECT_EQ(config->services[1].alias, "orang-com");
  EXPECT_EQ(config->services[2].alias, "api");
  EXPECT_EQ(config->services[2].target, (HostPort{"localhost", 8083}));

  const ServiceConfig& db = config->services[3];
  EXPECT_EQ(db.name, "db");
  EXPECT_EQ(db.kind, ServiceConfig::Kind::kTcp);
  EXPECT_EQ(db.kind_name(), "tcp");
  EXPECT_EQ(db.port, 2020);
  EXPECT_EQ(db.alias, "");
  EXPECT_EQ(config->services[4].port, 0);

  EXPECT_EQ(config->ServerNameFor(config->relays[0]), "relay.example.com");
}

TEST(AgentConfigTest, DefaultsMatchSpec) {
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig());
  ASSERT_TRUE(config.ok()) << config.status();
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(config->agent_id, absl::StrCat(host, "-", getpid()));
  EXPECT_EQ(config->server_name, "");
  EXPECT_EQ(config->ServerNameFor(config->relays[0]), "127.0.0.1");
  EXPECT_EQ(config->links, 2u);
  EXPECT_EQ(config->reconnect.initial, absl::Milliseconds(100));
  EXPECT_EQ(config->reconnect.max, absl::Milliseconds(10000));
  EXPECT_EQ(config->connect_timeout, absl::Milliseconds(5000));
  EXPECT_EQ(config->shutdown_grace, absl::Milliseconds(10000));
  EXPECT_EQ(config->log_level, "info");
  EXPECT_TRUE(config->tunnel_data_path);
  ASSERT_EQ(config->services.size(), 1u);
  EXPECT_EQ(config->services[0].alias, "www-orang-com");
}

TEST(AgentConfigTest, CaFileAndSecretFile) {
  std::string ca = WriteTempFile("ca.pem", "-----BEGIN CERTIFICATE-----\n");
  std::string secret = WriteTempFile("secret", "from-file-secret\n");
  absl::StatusOr<AgentConfig> config = Parse(
      "relays: [\"127.0.0.1:7000\"]\nrelay_ca_file: " + ca + "\ncredential:\n  name: orang\n" +
      "  secret_file: " + secret + "\nservices:\n  - {name: db, kind: tcp, target: 'h:1'}\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->relay_ca_file, ca);
  EXPECT_EQ(config->relay_fingerprint, "");
  EXPECT_EQ(config->credential.secret, "from-file-secret");
  std::remove(ca.c_str());
  std::remove(secret.c_str());
}

TEST(AgentConfigTest, LoadFromFile) {
  std::string path = WriteTempFile("load.yaml", MinimalConfig());
  absl::StatusOr<AgentConfig> config = LoadAgentConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  std::string bad = WriteTempFile("bad.yaml", "links: 0\n" + MinimalConfig());
  EXPECT_EQ(Message(LoadAgentConfig(bad).status()),
            bad + ":1: links: expected an integer between 1 and 1024, got '0'");
  std::remove(path.c_str());
  std::remove(bad.c_str());
}

TEST(AgentConfigTest, RelayTrust) {
  EXPECT_EQ(ErrorOf(FullWith("relay_ca_file: \"\"", "relay_ca_file: /etc/hostname")),
            "agent.yaml:5: relay_fingerprint: set either relay_ca_file or relay_fingerprint, not "
            "both");
  std::string neither =
      "relays: [\"127.0.0.1:7000\"]\nrelay_ca_file: ''\ncredential:\n  name: orang\n"
      "  secret: s3cret-s3cret\nservices:\n  - {name: db, kind: tcp, target: 'h:1'}\n";
  EXPECT_EQ(ErrorOf(neither),
            "agent.yaml:1: one of relay_ca_file or relay_fingerprint is required to authenticate "
            "the relay");
  EXPECT_EQ(ErrorOf(FullWith("relay_ca_file: \"\"", "relay_ca_file: /nonexistent/ca.pem")),
            "agent.yaml:4: relay_ca_file: cannot read '/nonexistent/ca.pem': No such file or "
            "directory");
  EXPECT_EQ(ErrorOf(FullWith("sha256:01:23", "sha256:01:2")),
            "agent.yaml:5: relay_fingerprint: expected a SHA-256 fingerprint of 64 hex digits, "
            "got 63");
  EXPECT_EQ(ErrorOf(FullWith("sha256:01:23", "sha256:0x:23")),
            "agent.yaml:5: relay_fingerprint: expected a SHA-256 fingerprint: 64 hex digits, "
            "optionally prefixed with 'sha256:' and separated by ':'");
}

TEST(AgentConfigTest, NormalizeFingerprint) {
  std::string upper = absl::AsciiStrToUpper(std::string(kFingerprint));
  EXPECT_EQ(*NormalizeFingerprint(kFingerprint), kFingerprint);
  EXPECT_EQ(*NormalizeFingerprint(upper), kFingerprint);
  EXPECT_EQ(*NormalizeFingerprint("SHA256:" + upper), kFingerprint);
  EXPECT_EQ(*NormalizeFingerprint("sha256:" + std::string(kFingerprint)), kFingerprint);
  std::string colons;
  for (size_t i = 0; i < kFingerprint.size(); i += 2) {
    if (i) colons += ":";
    colons += kFingerprint.substr(i, 2);
  }
  EXPECT_EQ(*NormalizeFingerprint(colons), kFingerprint);
  EXPECT_FALSE(NormalizeFingerprint("").ok());
  EXPECT_FALSE(NormalizeFingerprint("sha256:").ok());
  EXPECT_FALSE(NormalizeFingerprint("sha1:" + std::string(kFingerprint)).ok());
  EXPECT_FALSE(NormalizeFingerprint(std::string(kFingerprint) + "00").ok());
  // (Built with append rather than operator+: GCC 12 warns falsely on " " + std::string.)
  std::string leading_space = " ";
  leading_space.append(kFingerprint);
  EXPECT_FALSE(NormalizeFingerprint(leading_space).ok());
}

TEST(AgentConfigTest, Relays) {
  EXPECT_EQ(ErrorOf(FullWith("relays: [\"127.0.0.1:7000\", ", "relays: [\"127.0.0.1:0\", ")),
            "agent.yaml:2: relays[0]: invalid address '127.0.0.1:0': port 0 is not allowed here");
  EXPECT_EQ(ErrorOf(FullWith("\"[::1]:7000\"", "\"::1:7000\"")),
            "agent.yaml:2: relays[1]: invalid address '::1:7000': an IPv6 address must be in "
            "brackets, e.g. [::1]:7000");
  EXPECT_EQ(ErrorOf(FullWith("\"[::1]:7000\"", "\"127.0.0.1:7000\"")),
            "agent.yaml:2: relays[1]: relay 127.0.0.1:7000 is listed twice");
  EXPECT_EQ(
      ErrorOf(FullWith("relays: [\"127.0.0.1:7000\", \"[::1]:7000\", \"relay.example.com:7443\"]",
                       "relays: []")),
      "agent.yaml:2: relays: at least one relay address is required");
  EXPECT_EQ(ErrorOf(FullWith(
                "relays: [\"127.0.0.1:7000\", \"[::1]:7000\", \"relay.example.com:7443\"]\n", "")),
            "agent.yaml:1: missing required key 'relays' at top level");
  EXPECT_EQ(ErrorOf(FullWith("server_name: Relay.Example.com", "server_name: bad_name")),
            "agent.yaml:3: server_name: expected a DNS name, got 'bad_name'");
}

TEST(AgentConfigTest, TopLevelValues) {
  EXPECT_EQ(ErrorOf(FullWith("links: 3", "links: 1025")),
            "agent.yaml:10: links: expected an integer between 1 and 1024, got '1025'");
  EXPECT_EQ(ErrorOf(FullWith("links: 3", "link: 3")),
            "agent.yaml:10: unknown key 'link' at top level");
  EXPECT_EQ(ErrorOf(FullWith("max_ms: 2000", "max_ms: 20")),
            "agent.yaml:13: reconnect.max_ms: reconnect.max_ms (20) must be at least "
            "reconnect.initial_ms (50)");
  EXPECT_EQ(ErrorOf(FullWith("max_ms: 2000", "maximum_ms: 2000")),
            "agent.yaml:13: unknown key 'maximum_ms' in 'reconnect'");
  EXPECT_EQ(ErrorOf(FullWith("initial_ms: 50", "initial_ms: fast")),
            "agent.yaml:12: reconnect.initial_ms: expected a duration in milliseconds between 10 "
            "and 86400000, got 'fast'");
  EXPECT_EQ(ErrorOf(FullWith("connect_timeout_ms: 1500", "connect_timeout_ms: 1.5")),
            "agent.yaml:14: connect_timeout_ms: expected a duration in milliseconds between 10 "
            "and 86400000, got '1.5'");
  EXPECT_EQ(ErrorOf(FullWith("log_level: warn", "log_level: warning")),
            "agent.yaml:15: log_level: expected one of trace|debug|info|warn|error, got "
            "'warning'");
  EXPECT_EQ(ErrorOf(FullWith("agent_id: agent-7", "agent_id: [a]")),
            "agent.yaml:1: agent_id: expected a string, got a list");
}

TEST(AgentConfigTest, TunnelDataPath) {
  absl::StatusOr<AgentConfig> off = Parse("tunnel_data_path: false\n" + MinimalConfig());
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->tunnel_data_path);
  absl::StatusOr<AgentConfig> on = Parse("tunnel_data_path: true\n" + MinimalConfig());
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->tunnel_data_path);
  EXPECT_EQ(ErrorOf("tunnel_data_path: sometimes\n" + MinimalConfig()),
            "agent.yaml:1: tunnel_data_path: expected true or false, got 'sometimes'");
  EXPECT_EQ(ErrorOf("tunnel_data_paths: false\n" + MinimalConfig()),
            "agent.yaml:1: unknown key 'tunnel_data_paths' at top level");
}

TEST(AgentConfigTest, ShutdownGrace) {
  absl::StatusOr<AgentConfig> zero = Parse("shutdown_grace_ms: 0\n" + MinimalConfig());
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->shutdown_grace, absl::ZeroDuration());
  absl::StatusOr<AgentConfig> minute = Parse("shutdown_grace_ms: 60000\n" + MinimalConfig());
  ASSERT_TRUE(minute.ok()) << minute.status();
  EXPECT_EQ(minute->shutdown_grace, absl::Minutes(1));
  EXPECT_EQ(ErrorOf("shutdown_grace_ms: 3600001\n" + MinimalConfig()),
            "agent.yaml:1: shutdown_grace_ms: expected a duration in milliseconds between 0 and "
            "3600000, got '3600001'");
  EXPECT_EQ(ErrorOf("shutdown_grace_ms: -1\n" + MinimalConfig()),
            "agent.yaml:1: shutdown_grace_ms: expected a duration in milliseconds between 0 and "
            "3600000, got '-1'");
}

TEST(AgentConfigTest, Credential) {
  EXPECT_EQ(ErrorOf(FullWith("  secret: \"s3cret-s3cret\"", "  secret: \"s3cret\"")),
            "agent.yaml:8: credential.secret: the secret must be at least 8 characters long (it "
            "has 6)");
  EXPECT_EQ(ErrorOf(FullWith("  name: orang\n", "")),
            "agent.yaml:7: missing required key 'name' in 'credential'");
  EXPECT_EQ(ErrorOf(FullWith("  secret_file: \"\"", "  secret_file: /x")),
            "agent.yaml:9: credential.secret_file: set either secret or secret_file, not both");
  EXPECT_EQ(ErrorOf(FullWith("  secret_file: \"\"", "  secret_fil: \"\"")),
            "agent.yaml:9: unknown key 'secret_fil' in 'credential'");
  EXPECT_EQ(ErrorOf(FullWith("credential:\n  name: orang\n  secret: \"s3cret-s3cret\"\n  "
                             "secret_file: \"\"\n",
                             "")),
            "agent.yaml:1: missing required key 'credential' at top level");
}

TEST(AgentConfigTest, Services) {
  EXPECT_EQ(ErrorOf(MinimalConfig("services: []\n")),
            "agent.yaml:6: services: at least one service (or a connect entry) is required");
  EXPECT_EQ(ErrorOf(MinimalConfig("")),
            "agent.yaml:1: at least one service (or a connect entry) is required");
  EXPECT_EQ(ErrorOf(FullWith("    kind: tcp\n    target: 127.0.0.1:6379",
                             "    kind: ftp\n    target: 127.0.0.1:6379")),
            "agent.yaml:33: services[4].kind: expected one of http|tcp|tls|smtp|udp|pair|private, "
            "got 'ftp'");
  EXPECT_EQ(ErrorOf(FullWith("  - name: cache\n    kind: tcp\n", "  - name: cache\n")),
            "agent.yaml:32: missing required key 'kind' in 'services[4]'");
  EXPECT_EQ(ErrorOf(FullWith("    target: 127.0.0.1:6379\n", "")),
            "agent.yaml:32: missing required key 'target' in 'services[4]'");
  EXPECT_EQ(ErrorOf(FullWith("    target: 127.0.0.1:6379", "    target: 127.0.0.1:0")),
            "agent.yaml:34: services[4].target: invalid address '127.0.0.1:0': port 0 is not "
            "allowed here");
  EXPECT_EQ(ErrorOf(FullWith("    target: 127.0.0.1:6379", "    target: 127.0.0.1")),
            "agent.yaml:34: services[4].target: invalid address '127.0.0.1': expected host:port, "
            "e.g. 127.0.0.1:7000 or [::1]:7000");
  EXPECT_EQ(ErrorOf(FullWith("    target: 127.0.0.1:6379", "    taget: 127.0.0.1:6379")),
            "agent.yaml:34: unknown key 'taget' in 'services[4]'");
}

TEST(AgentConfigTest, ServiceNamesPerKind) {
  EXPECT_EQ(ErrorOf(FullWith("name: api.orang.com", "name: api_x.orang.com")),
            "agent.yaml:24: services[2].name: expected a host name or *.suffix for an http "
            "service, e.g. www.example.com or *.example.com, got 'api_x.orang.com'");
  EXPECT_EQ(ErrorOf(FullWith("name: api.orang.com", "name: a.*.orang.com")),
            "agent.yaml:24: services[2].name: expected a host name or *.suffix for an http "
            "service, e.g. www.example.com or *.example.com, got 'a.*.orang.com'");
  EXPECT_EQ(ErrorOf(FullWith("name: db", "name: 5432")),
            "agent.yaml:28: services[3].name: expected a tcp service name (a letter, then "
            "letters, digits, '.', '_', '-'; at most 63), got '5432'");
  EXPECT_EQ(ErrorOf(FullWith("name: db", "name: \"*\"")),
            "agent.yaml:28: services[3].name: expected a tcp service name (a letter, then "
            "letters, digits, '.', '_', '-'; at most 63), got '*'");
  // A tcp name need not be a host name and vice versa: "my_db" is a fine tcp name.
  absl::StatusOr<AgentConfig> config = Parse(FullWith("name: db", "name: my_db"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->services[3].name, "my_db");
}

TEST(AgentConfigTest, DuplicateServices) {
  EXPECT_EQ(ErrorOf(FullWith("name: api.orang.com", "name: www.ORANG.com")),
            "agent.yaml:24: services[2].name: duplicate http service 'www.orang.com' (also "
            "services[0])");
  EXPECT_EQ(ErrorOf(FullWith("name: cache", "name: db")),
            "agent.yaml:32: services[4].name: duplicate tcp service 'db' (also services[3])");
  // The same name under different kinds is fine.
  absl::StatusOr<AgentConfig> config = Parse(FullWith("name: cache", "name: www"));
  ASSERT_TRUE(config.ok()) << config.status();
  config =
      Parse(MinimalConfig("services:\n  - {name: web, kind: http, target: 'a:1'}\n"
                          "  - {name: web, kind: tcp, target: 'a:2'}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
}

TEST(AgentConfigTest, AliasAndPortRules) {
  EXPECT_EQ(ErrorOf(FullWith("    target: 127.0.0.1:6379",
                             "    target: 127.0.0.1:6379\n    "
                             "alias: cache")),
            "agent.yaml:35: services[4].alias: alias is only valid for http services");
  EXPECT_EQ(ErrorOf(FullWith("    alias: API", "    alias: API\n    port: 80")),
            "agent.yaml:28: services[2].port: port is only valid for tcp and udp services");
  EXPECT_EQ(ErrorOf(FullWith("    alias: API", "    alias: api.x")),
            "agent.yaml:27: services[2].alias: expected a single DNS label (letters, digits, "
            "'-'; at most 63), got 'api.x'");
  EXPECT_EQ(ErrorOf(FullWith("    alias: API", "    alias: www-orang-com")),
            "agent.yaml:27: services[2].alias: alias 'www-orang-com' is already used by "
            "services[0]; set a different alias");
  EXPECT_EQ(ErrorOf(FullWith("    port: 2020", "    port: 70000")),
            "agent.yaml:31: services[3].port: expected an integer between 0 and 65535, got "
            "'70000'");
  EXPECT_EQ(ErrorOf(FullWith("    target: 127.0.0.1:6379",
                             "    target: 127.0.0.1:6379\n    "
                             "port: 2020")),
            "agent.yaml:35: services[4].port: port 2020 is already requested by services[3]");
  // Two services asking for "the relay's choice" do not collide.
  absl::StatusOr<AgentConfig> config = Parse(FullWith("    port: 2020", "    port: 0"));
  ASSERT_TRUE(config.ok()) << config.status();
}

TEST(AgentConfigTest, DerivedAliasCollision) {
  // "*.orang.com" and "orang.com" both derive "orang-com".
  EXPECT_EQ(ErrorOf(MinimalConfig("services:\n"
                                  "  - {name: '*.orang.com', kind: http, target: 'a:1'}\n"
                                  "  - {name: orang.com, kind: http, target: 'a:2'}\n")),
            "agent.yaml:8: services[1]: alias 'orang-com' is already used by services[0]; set a "
            "different alias");
}

TEST(AgentConfigTest, DerivedAliasTooLong) {
  std::string name = std::string(40, 'a') + "." + std::string(40, 'b') + ".com";
  EXPECT_THAT(
      ErrorOf(MinimalConfig("services:\n  - {name: " + name + ", kind: http, target: 'a:1'}\n")),
      StartsWith("agent.yaml:7: services[0]: the alias derived from the name ('aaaa"));
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig(
      "services:\n  - {name: " + name + ", kind: http, target: 'a:1', alias: short}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->services[0].alias, "short");
}

TEST(AgentConfigTest, DefaultAlias) {
  EXPECT_EQ(DefaultAlias("www.orang.com"), "www-orang-com");
  EXPECT_EQ(DefaultAlias("*.orang.com"), "orang-com");
  EXPECT_EQ(DefaultAlias("WWW.Orang.com"), "www-orang-com");
  EXPECT_EQ(DefaultAlias("localhost"), "localhost");
  EXPECT_EQ(DefaultAlias("*"), "");
}

}  // namespace
}  // namespace rdv

namespace rdv {
namespace {

TEST(AgentConfigTest, ProxyProtocol) {
  absl::StatusOr<AgentConfig> config = ParseAgentConfig(
      FullWith("    port: 2020\n", "    port: 2020\n    proxy_protocol: v2\n"), "agent.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  for (const ServiceConfig& service : config->services) {
    EXPECT_EQ(service.proxy_protocol, service.name == "db" ? "v2" : "off") << service.name;
  }
  EXPECT_EQ(ErrorOf(FullWith("    port: 2020\n", "    port: 2020\n    proxy_protocol: v3\n")),
            "agent.yaml:32: services[3].proxy_protocol: expected one of off|v1|v2, got 'v3'");
}

TEST(AgentConfigTest, RewriteHtml) {
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->services[0].rewrite_html);
  config =
      Parse(MinimalConfig("services:\n  - {name: www.orang.com, kind: http, target: 127.0.0.1:81, "
                          "rewrite_html: true}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->services[0].rewrite_html);
  EXPECT_NE(ErrorOf(MinimalConfig("services:\n  - {name: db, kind: tcp, target: 127.0.0.1:81, "
                                  "rewrite_html: true}\n"))
                .find("rewrite_html is only valid for http services"),
            std::string::npos);
  EXPECT_NE(ErrorOf(MinimalConfig("services:\n  - {name: www.orang.com, kind: http, target: "
                                  "127.0.0.1:81, rewrite_html: maybe}\n"))
                .find("rewrite_html"),
            std::string::npos);
}

TEST(AgentConfigTest, BalanceAndHealthCheck) {
  constexpr std::string_view kService =
      "services:\n"
      "  - name: www.orang.com\n"
      "    kind: http\n"
      "    target: 127.0.0.1:8081\n"
      "    balance: least_streams\n";
  absl::StatusOr<AgentConfig> off = Parse(MinimalConfig(kService));
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->services[0].balance, "least_streams");
  EXPECT_FALSE(off->services[0].health_check.has_value());  // off unless configured

  // Present but empty: every default.
  for (std::string_view empty : {"    health_check:\n", "    health_check: {}\n"}) {
    absl::StatusOr<AgentConfig> defaults =
        Parse(MinimalConfig(std::string(kService) + std::string(empty)));
    ASSERT_TRUE(defaults.ok()) << defaults.status();
    ASSERT_TRUE(defaults->services[0].health_check.has_value());
    const HealthCheckConfig& check = *defaults->services[0].health_check;
    EXPECT_EQ(check.kind, HealthCheckConfig::Kind::kTcp);
    EXPECT_EQ(check.interval, absl::Milliseconds(2000));
    EXPECT_EQ(check.timeout, absl::Milliseconds(1000));
    EXPECT_EQ(check.healthy_threshold, 1u);
    EXPECT_EQ(check.unhealthy_threshold, 2u);
  }

  absl::StatusOr<AgentConfig> http = Parse(MinimalConfig(
      std::string(kService) +
      "    health_check: {kind: http, interval_ms: 500, timeout_ms: 200, path: /healthz,\n"
      "                   expect_status: 204, host: probe.local, healthy_threshold: 3,\n"
      "                   unhealthy_threshold: 1}\n"));
  ASSERT_TRUE(http.ok()) << http.status();
  const HealthCheckConfig& check = *http->services[0].health_check;
  EXPECT_EQ(check.kind, HealthCheckConfig::Kind::kHttp);
  EXPECT_EQ(check.interval, absl::Milliseconds(500));
  EXPECT_EQ(check.timeout, absl::Milliseconds(200));
  EXPECT_EQ(check.path, "/healthz");
  EXPECT_EQ(check.expect_status, 204u);
  EXPECT_EQ(check.host, "probe.local");
  EXPECT_EQ(check.healthy_threshold, 3u);
  EXPECT_EQ(check.unhealthy_threshold, 1u);

  auto error = [&](std::string_view health) {
    return ErrorOf(
        MinimalConfig(std::string(kService) + "    health_check: " + std::string(health) + "\n"));
  };
  EXPECT_EQ(error("{kind: udp}"),
            "agent.yaml:11: services[0].health_check.kind: expected one of tcp|http, got 'udp'");
  EXPECT_THAT(error("{interval_ms: 500, timeout_ms: 500}"),
              HasSubstr("timeout_ms (500) must be below interval_ms (500)"));
  EXPECT_THAT(error("{path: /x}"), HasSubstr("health_check.path: only valid with kind: http"));
  EXPECT_THAT(error("{kind: http, path: x}"), HasSubstr("expected a request path starting"));
  EXPECT_THAT(error("{kind: http, expect_status: 99}"), HasSubstr("expect_status"));
  EXPECT_THAT(error("{unhealthy_threshold: 0}"), HasSubstr("unhealthy_threshold"));
  EXPECT_THAT(error("{intervl_ms: 5}"), HasSubstr("unknown key 'intervl_ms'"));
  EXPECT_EQ(ErrorOf(MinimalConfig(config_test::ReplaceFirst(kService, "least_streams", "random"))),
            "agent.yaml:10: services[0].balance: expected one of "
            "round_robin|least_streams|client_ip_hash, got 'random'");
}

// Line numbers in the tunnel tests refer to this text (MinimalConfig's first 5 lines, then this).
constexpr std::string_view kTunnelConfig = R"(services:
  - kind: pair
    name: site-b
    secret: "pairing-secret-0123"
    target: 127.0.0.1:22
    allow:
      - {network: 192.168.50.0/24, ports: "22,80,8000-8100"}
      - {network: "::1/128"}
  - kind: private
    name: db
    target: 127.0.0.1:5432
    secret: "db-shared-secret-01"
connect:
  - listen: 127.0.0.1:2222
    pair: site-b
    secret: "pairing-secret-0123"
  - listen: "[::1]:1080"
    private: db
    secret: "db-shared-secret-01"
    socks5: true
    users: [{username: u, password: p}]
)";

std::string TunnelWith(std::string_view from, std::string_view to) {
  return MinimalConfig(config_test::ReplaceFirst(kTunnelConfig, from, to));
}

sockaddr_storage Address(const char* ip, uint16_t port) {
  absl::StatusOr<sockaddr_storage> address = ResolveNumeric(ip, port);
  EXPECT_TRUE(address.ok()) << ip;
  return *address;
}

bool Allows(const AllowList& allow, const char* ip, uint16_t port) {
  sockaddr_storage address = Address(ip, port);
  return allow.Allows(reinterpret_cast<const sockaddr*>(&address));
}

TEST(AgentConfigTest, TunnelServicesAndConnects) {
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig(kTunnelConfig));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->services.size(), 2u);
  const ServiceConfig& pair = config->services[0];
  EXPECT_EQ(pair.kind, ServiceConfig::Kind::kPair);
  EXPECT_EQ(pair.kind_name(), "pair");
  EXPECT_TRUE(pair.is_tunnel());
  EXPECT_EQ(pair.secret, "pairing-secret-0123");
  EXPECT_EQ(pair.security(), "psk");
  EXPECT_EQ(pair.target, (HostPort{"127.0.0.1", 22}));
  EXPECT_EQ(pair.allow.size(), 2u);
  EXPECT_TRUE(Allows(pair.allow, "192.168.50.7", 8050));
  EXPECT_FALSE(Allows(pair.allow, "192.168.50.7", 443));
  EXPECT_TRUE(Allows(pair.allow, "::1", 443));
  EXPECT_EQ(config->services[1].kind, ServiceConfig::Kind::kPrivate);
  EXPECT_TRUE(config->services[1].allow.empty());

  ASSERT_EQ(config->connects.size(), 2u);
  const ConnectConfig& plain = config->connects[0];
  EXPECT_EQ(plain.listen, (HostPort{"127.0.0.1", 2222}));
  EXPECT_EQ(plain.kind, ServiceConfig::Kind::kPair);
  EXPECT_EQ(plain.name, "site-b");
  EXPECT_EQ(plain.secret, "pairing-secret-0123");
  EXPECT_EQ(plain.security(), "psk");
  EXPECT_FALSE(plain.socks5);
  const ConnectConfig& socks = config->connects[1];
  EXPECT_EQ(socks.listen, (HostPort{"::1", 1080}));
  EXPECT_EQ(socks.kind, ServiceConfig::Kind::kPrivate);
  EXPECT_EQ(socks.kind_name(), "private");
  EXPECT_TRUE(socks.socks5);
  ASSERT_EQ(socks.users.size(), 1u);
  EXPECT_EQ(socks.users[0].username, "u");
  EXPECT_EQ(socks.users[0].password, "p");
}

TEST(AgentConfigTest, ConnectOnlyAgent) {
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig(
      "connect:\n  - {listen: '127.0.0.1:0', pair: site-b, secret: pairing-secret-0123}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->services.empty());
  EXPECT_EQ(config->connects[0].listen.port, 0);
  config =
      Parse(MinimalConfig("services: []\nconnect:\n  - {listen: '127.0.0.1:0', pair: "
                          "site-b, secret: pairing-secret-0123}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
}

TEST(AgentConfigTest, TunnelServiceErrors) {
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"pairing-secret-0123\"\n    target: 127.0.0.1:22",
                               "    secret: \"short\"\n    target: 127.0.0.1:22")),
            "agent.yaml:9: services[0].secret: the secret must be at least 16 characters long (it "
            "has 5)");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"pairing-secret-0123\"\n    target: 127.0.0.1:22",
                               "    target: 127.0.0.1:22")),
            "agent.yaml:7: services[0]: one of secret or secret_file is required");
  EXPECT_EQ(
      ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\nconnect", "    port: 5\nconnect")),
      "agent.yaml:17: services[1].port: port is not valid for private services");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\nconnect",
                               "    proxy_protocol: v1\nconnect")),
            "agent.yaml:17: services[1].proxy_protocol: proxy_protocol is not valid for private "
            "services");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\nconnect", "connect")),
            "agent.yaml:14: services[1]: a private service needs secret or secret_file (PSK "
            "mode), or certificate_file and key_file (certificate mode)");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\nconnect",
                               "    secret: \"db-shared-secret-01\"\n"
                               "    certificate_file: /etc/hostname\n"
                               "    key_file: /etc/hostname\nconnect")),
            "agent.yaml:17: services[1].secret: set either a secret (PSK mode) or certificate_file "
            "and key_file (certificate mode), not both");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\nconnect",
                               "    certificate_file: /etc/hostname\nconnect")),
            "agent.yaml:14: services[1]: certificate mode needs both certificate_file and "
            "key_file");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"pairing-secret-0123\"\n    target",
                               "    secret: \"pairing-secret-0123\"\n"
                               "    certificate_file: /etc/hostname\n    target")),
            "agent.yaml:10: services[0].certificate_file: a pair is secured by its pairing secret; "
            "certificate_file and key_file are only valid for private services");
  EXPECT_EQ(
      ErrorOf(MinimalConfig("services:\n  - {name: w, kind: tcp, target: 'a:1', allow: []}\n")),
      "agent.yaml:7: services[0].allow: allow is only valid for pair and private services");
  // Without a target, a pair serves SOCKS5 connect ends only.
  absl::StatusOr<AgentConfig> config = Parse(TunnelWith("    target: 127.0.0.1:22\n", ""));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->services[0].has_target());
  // Certificate mode.
  config = Parse(TunnelWith("    secret: \"db-shared-secret-01\"\nconnect",
                            "    certificate_file: /etc/hostname\n"
                            "    key_file: /etc/hostname\nconnect"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->services[1].security(), "certificate");
  EXPECT_EQ(config->services[1].key_file, "/etc/hostname");
}

TEST(AgentConfigTest, AllowListErrors) {
  EXPECT_EQ(ErrorOf(TunnelWith("192.168.50.0/24", "192.168.50.1/24")),
            "agent.yaml:12: services[0].allow[0].network: invalid network '192.168.50.1/24': "
            "address has bits set beyond the /24 prefix");
  EXPECT_EQ(ErrorOf(TunnelWith("\"22,80,8000-8100\"", "\"22,80,8100-8000\"")),
            "agent.yaml:12: services[0].allow[0].ports: invalid port range '8100-8000': the first "
            "port is above the last");
  EXPECT_EQ(ErrorOf(TunnelWith("\"22,80,8000-8100\"", "\"22,0\"")),
            "agent.yaml:12: services[0].allow[0].ports: invalid port '0': expected 1-65535 or a "
            "range like 8000-8100");
  EXPECT_EQ(ErrorOf(TunnelWith("{network: \"::1/128\"}", "{ports: \"22\"}")),
            "agent.yaml:13: missing required key 'network' in 'services[0].allow[1]'");
  EXPECT_EQ(ErrorOf(TunnelWith("{network: \"::1/128\"}", "{network: \"::1/128\", port: 2}")),
            "agent.yaml:13: unknown key 'port' in 'services[0].allow[1]'");
}

TEST(AgentConfigTest, ConnectErrors) {
  EXPECT_EQ(ErrorOf(TunnelWith("    pair: site-b\n", "")),
            "agent.yaml:19: connect[0]: one of pair (a pair's name) or private (a private "
            "service's name) is required");
  EXPECT_EQ(ErrorOf(TunnelWith("    pair: site-b\n", "    pair: site-b\n    private: db\n")),
            "agent.yaml:21: connect[0].private: set either pair or private, not both");
  EXPECT_EQ(ErrorOf(TunnelWith("listen: 127.0.0.1:2222", "listen: localhost:2222")),
            "agent.yaml:19: connect[0].listen: invalid address 'localhost:2222': the host must be "
            "an IP address, e.g. 0.0.0.0 or [::]");
  EXPECT_EQ(ErrorOf(TunnelWith("\"[::1]:1080\"", "127.0.0.1:2222")),
            "agent.yaml:22: connect[1].listen: listen address 127.0.0.1:2222 is already used by "
            "connect[0]");
  EXPECT_EQ(ErrorOf(TunnelWith("    pair: site-b\n", "    pair: 1site\n")),
            "agent.yaml:20: connect[0].pair: expected a pair service name (a letter, then "
            "letters, digits, '.', '_', '-'; at most 63), got '1site'");
  EXPECT_EQ(ErrorOf(TunnelWith("    socks5: true\n", "")),
            "agent.yaml:25: connect[1].users: users are only valid with socks5: true (a plain "
            "port has no authentication)");
  EXPECT_EQ(ErrorOf(TunnelWith("{username: u, password: p}", "{username: u, password: ''}")),
            "agent.yaml:26: connect[1].users[0].password: expected 1 to 255 bytes, got 0");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"pairing-secret-0123\"\n  - listen",
                               "    secret: \"pairing-secret-0123\"\n    peer_fingerprint: " +
                                   std::string(kFingerprint) + "\n  - listen")),
            "agent.yaml:22: connect[0].peer_fingerprint: a pair is secured by its pairing secret; "
            "peer_fingerprint and peer_ca_file are only valid for private connect entries");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\n    socks5", "    socks5")),
            "agent.yaml:22: connect[1]: a private connect entry needs secret or secret_file (PSK "
            "mode), or peer_fingerprint or peer_ca_file (certificate mode)");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\n    socks5",
                               "    secret: \"db-shared-secret-01\"\n    peer_ca_file: "
                               "/etc/hostname\n    socks5")),
            "agent.yaml:25: connect[1].peer_ca_file: set either a secret (PSK mode) or "
            "peer_fingerprint/peer_ca_file (certificate mode), not both");
  EXPECT_EQ(ErrorOf(TunnelWith("    secret: \"db-shared-secret-01\"\n    socks5",
                               "    peer_fingerprint: nope\n    socks5")),
            "agent.yaml:24: connect[1].peer_fingerprint: expected a SHA-256 fingerprint: 64 hex "
            "digits, optionally prefixed with 'sha256:' and separated by ':'");
  EXPECT_EQ(ErrorOf(TunnelWith("    socks5: true\n", "    socks5: yes\n")),
            "agent.yaml:25: connect[1].socks5: expected true or false, got 'yes'");
  // Certificate mode.
  absl::StatusOr<AgentConfig> config = Parse(
      TunnelWith("    secret: \"db-shared-secret-01\"\n    socks5",
                 "    peer_fingerprint: \"sha256:" + std::string(kFingerprint) + "\"\n    socks5"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->connects[1].peer_fingerprint, kFingerprint);
  EXPECT_EQ(config->connects[1].security(), "certificate");
}

TEST(AllowListTest, PortLists) {
  absl::StatusOr<std::vector<PortRange>> ports = ParsePortList(" 22, 80,8000-8100 ");
  ASSERT_TRUE(ports.ok()) << ports.status();
  EXPECT_THAT(*ports, ElementsAre(PortRange{22, 22}, PortRange{80, 80}, PortRange{8000, 8100}));
  EXPECT_TRUE(ParsePortList("65535").ok());
  for (std::string_view bad : {"", "65536", "0", "a", "1-", "-5", "22,,80", "5-4", "+5", "1-2-3"}) {
    EXPECT_FALSE(ParsePortList(bad).ok()) << bad;
  }
}

TEST(AllowListTest, Matching) {
  AllowList allow;
  EXPECT_FALSE(Allows(allow, "127.0.0.1", 80));  // empty allows nothing
  ASSERT_TRUE(allow.Add("10.0.0.0/8", {{22, 22}, {8000, 8100}}).ok());
  ASSERT_TRUE(allow.Add("127.0.0.1", {}).ok());
  ASSERT_TRUE(allow.Add("2001:db8::/32", {{443, 443}}).ok());
  EXPECT_TRUE(Allows(allow, "10.1.2.3", 22));
  EXPECT_TRUE(Allows(allow, "10.1.2.3", 8000));
  EXPECT_TRUE(Allows(allow, "10.1.2.3", 8100));
  EXPECT_FALSE(Allows(allow, "10.1.2.3", 8101));
  EXPECT_FALSE(Allows(allow, "11.1.2.3", 22));
  EXPECT_TRUE(Allows(allow, "127.0.0.1", 1));
  EXPECT_TRUE(Allows(allow, "127.0.0.1", 65535));
  EXPECT_FALSE(Allows(allow, "127.0.0.2", 80));
  EXPECT_TRUE(Allows(allow, "::ffff:10.9.9.9", 22));  // IPv4-mapped matches the IPv4 block
  EXPECT_TRUE(Allows(allow, "2001:db8::1", 443));
  EXPECT_FALSE(Allows(allow, "2001:db8::1", 80));
  EXPECT_FALSE(Allows(allow, "::1", 443));
  EXPECT_FALSE(allow.Add("10.0.0.1/8", {}).ok());
}

TEST(AgentConfigTest, UdpServices) {
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig(
      "services:\n  - {name: dns, kind: udp, target: 'resolver.lan:53', port: 5353}\n"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->services[0].kind, ServiceConfig::Kind::kUdp);
  EXPECT_EQ(config->services[0].port, 5353);
  EXPECT_THAT(ErrorOf(MinimalConfig(
                  "services:\n  - {name: dns, kind: udp, target: 'a:53', proxy_protocol: v2}\n")),
              testing::HasSubstr("proxy_protocol is not valid for udp services"));
}

TEST(AgentConfigTest, Admin) {
  absl::StatusOr<AgentConfig> config = Parse(MinimalConfig());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->admin_listen.has_value());  // absent: no admin listener

  config = Parse(MinimalConfig() + "admin:\n  listen: 127.0.0.1:9101\n");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->admin_listen.has_value());
  EXPECT_EQ(*config->admin_listen, (HostPort{"127.0.0.1", 9101}));
  config = Parse(MinimalConfig() + "admin: {listen: \"[::1]:0\"}\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config->admin_listen, (HostPort{"::1", 0}));

  EXPECT_EQ(ErrorOf(MinimalConfig() + "admin:\n  listen: localhost:9101\n"),
            "agent.yaml:11: admin.listen: invalid address 'localhost:9101': the host must be an "
            "IP address, e.g. 0.0.0.0 or [::]");
  EXPECT_THAT(ErrorOf(MinimalConfig() + "admin:\n  listen: 127.0.0.1:70000\n"),
              StartsWith("agent.yaml:11: admin.listen: invalid address '127.0.0.1:70000'"));
  EXPECT_EQ(ErrorOf(MinimalConfig() + "admin:\n  port: 9101\n"),
            "agent.yaml:11: unknown key 'port' in 'admin'");
  EXPECT_EQ(ErrorOf(MinimalConfig() + "admin: {}\n"),
            "agent.yaml:10: missing required key 'listen' in 'admin'");
  EXPECT_EQ(ErrorOf(MinimalConfig() + "admin: 127.0.0.1:9101\n"),
            "agent.yaml:10: admin: expected a map, got '127.0.0.1:9101'");
}

}  // namespace
}  // namespace rdv
