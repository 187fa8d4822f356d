#include "relay/relay_config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "common/config_test_support.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using config_test::Message;

// The spec's example, with a secret long enough to be accepted.
constexpr std::string_view kFullConfig = R"(relay_id: relay-1
state_dir: /var/lib/rdv
workers: 4
log_level: debug
agent_listener:
  listen: ["0.0.0.0:7000", "[::]:7000"]
  cert_file: ""
  key_file: ""
  handshake_timeout_ms: 5000
http:
  listen: ["0.0.0.0:8080", "[::]:8080"]
  zone: Relay.Example.com.
  max_head_bytes: 32768
  head_timeout_ms: 2000
  idle_timeout_ms: 30000
tcp:
  bind: ["0.0.0.0", "::"]
  ports:
    - service: db
      port: 2020
    - service: cache
      port: 2021
admin:
  listen: ["127.0.0.1:9100"]
link:
  stream_window: 262144
  link_window: 8388608
  ping_interval_ms: 1000
  idle_timeout_ms: 3000
  max_streams_per_link: 500
credentials:
  - name: orang
    secret: "s3cret-s3cret"
    secret_file: ""
    grants: ["http:*.orang.com", "http:www.orang.com", "tcp:2020-2030", "tcp:db"]
    networks: ["127.0.0.0/8", "::1/128"]
    max_links: 8
  - name: other
    secret: "another-secret"
)";

constexpr std::string_view kMinimalConfig = R"(credentials:
  - name: orang
    secret: "s3cret-s3cret"
)";

absl::StatusOr<RelayConfig> Parse(std::string_view text) {
  return ParseRelayConfig(text, "relay.yaml");
}

// Replaces the first occurrence of `from` in the full config.
std::string FullWith(std::string_view from, std::string_view to) {
  return config_test::ReplaceFirst(kFullConfig, from, to);
}

std::string ErrorOf(std::string_view text) { return config_test::ParseErrorOf(Parse(text), text); }

std::string WriteTempFile(std::string_view name, std::string_view contents) {
  return config_test::WriteTempFile("relay_config_test_", name, contents);
}

TEST(RelayConfigTest, FullExample) {
  absl::StatusOr<RelayConfig> config = Parse(kFullConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->relay_id, "relay-1");
  EXPECT_EQ(config->state_dir, "/var/lib/rdv");
  EXPECT_EQ(config->workers, 4u);
  EXPECT_EQ(config->log_level, "debug");
  EXPECT_THAT(config->agent_listener.listen,
              ElementsAre(HostPort{"0.0.0.0", 7000}, HostPort{"::", 7000}));
  EXPECT_EQ(config->agent_listener.cert_file, "");
  EXPECT_EQ(config->agent_listener.handshake_timeout, absl::Milliseconds(5000));
  ASSERT_TRUE(config->http.has_value());
  EXPECT_THAT(config->http->listen, ElementsAre(HostPort{"0.0.0.0", 8080}, HostPort{"::", 8080}));
  EXPECT_EQ(config->http->zone, "relay.example.com");
  EXPECT_EQ(config->http->max_head_bytes, 32768u);
  EXPECT_EQ(config->http->head_timeout, absl::Milliseconds(2000));
  EXPECT_EQ(config->http->idle_timeout, absl::Milliseconds(30000));
  EXPECT_THAT(config->tcp.bind, ElementsAre("0.0.0.0", "::"));
  ASSERT_EQ(config->tcp.ports.size(), 2u);
  EXPECT_EQ(config->tcp.ports[0].service, "db");
  EXPECT_EQ(config->tcp.ports[0].port, 2020);
  EXPECT_EQ(config->tcp.FixedPortFor("cache"), 2021);
  EXPECT_EQ(config->tcp.FixedPortFor("nope"), 0);
  EXPECT_THAT(config->admin.listen, ElementsAre(HostPort{"127.0.0.1", 9100}));
  EXPECT_EQ(config->link.stream_window, 262144u);
  EXPECT_EQ(config->link.link_window, 8388608u);
  EXPECT_EQ(config->link.ping_interval, absl::Milliseconds(1000));
  EXPECT_EQ(config->link.idle_timeout, absl::Milliseconds(3000));
  EXPECT_EQ(config->link.max_streams_per_link, 500u);

  ASSERT_EQ(config->credentials.size(), 2u);
  const CredentialConfig& orang = config->credentials[0];
  EXPECT_EQ(orang.name, "orang");
  EXPECT_EQ(orang.secret, "s3cret-s3cret");
  ASSERT_EQ(orang.grants.size(), 4u);
  EXPECT_EQ(orang.grants[0].ToString(), "http:*.orang.com");
  EXPECT_TRUE(orang.grants[2].IsPortRange());
  EXPECT_EQ(orang.networks.size(), 2u);
  EXPECT_EQ(orang.max_links, 8u);
  sockaddr_in6 loopback = {};
  loopback.sin6_family = AF_INET6;
  loopback.sin6_addr = in6addr_loopback;
  EXPECT_TRUE(orang.AllowsSource(reinterpret_cast<const sockaddr*>(&loopback)));
  sockaddr_in outside = {};
  outside.sin_family = AF_INET;
  inet_pton(AF_INET, "192.0.2.1", &outside.sin_addr);
  EXPECT_FALSE(orang.AllowsSource(reinterpret_cast<const sockaddr*>(&outside)));

  const CredentialConfig* other = config->FindCredential("other");
  ASSERT_NE(other, nullptr);
  EXPECT_TRUE(other->grants.empty());
  EXPECT_TRUE(other->networks.empty());
  EXPECT_TRUE(other->AllowsSource(reinterpret_cast<const sockaddr*>(&outside)));
  EXPECT_EQ(other->max_links, 64u);
  EXPECT_EQ(config->FindCredential("missing"), nullptr);
}

TEST(RelayConfigTest, DefaultsMatchSpec) {
  absl::StatusOr<RelayConfig> config = Parse(kMinimalConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(config->relay_id, host);
  EXPECT_EQ(config->state_dir, "./rdv-state");
  EXPECT_EQ(config->workers, 0u);
  EXPECT_EQ(config->log_level, "info");
  EXPECT_THAT(config->agent_listener.listen,
              ElementsAre(HostPort{"0.0.0.0", 7000}, HostPort{"::", 7000}));
  EXPECT_EQ(config->agent_listener.cert_file, "");
  EXPECT_EQ(config->agent_listener.key_file, "");
  EXPECT_EQ(config->agent_listener.handshake_timeout, absl::Milliseconds(10000));
  EXPECT_FALSE(config->http.has_value());
  EXPECT_THAT(config->tcp.bind, ElementsAre("0.0.0.0", "::"));
  EXPECT_TRUE(config->tcp.ports.empty());
  EXPECT_THAT(config->admin.listen, ElementsAre(HostPort{"127.0.0.1", 9100}));
  EXPECT_EQ(config->link.stream_window, 1048576u);
  EXPECT_EQ(config->link.link_window, 16777216u);
  EXPECT_EQ(config->link.ping_interval, absl::Milliseconds(10000));
  EXPECT_EQ(config->link.idle_timeout, absl::Milliseconds(30000));
  EXPECT_EQ(config->link.max_streams_per_link, 10000u);
  ASSERT_EQ(config->credentials.size(), 1u);
  EXPECT_EQ(config->credentials[0].max_links, 64u);
  EXPECT_TRUE(config->credentials[0].networks.empty());
}

TEST(RelayConfigTest, EmptyHttpSectionEnablesDefaults) {
  for (std::string_view http : {"http:\n", "http: {}\n"}) {
    absl::StatusOr<RelayConfig> config = Parse(std::string(http) + std::string(kMinimalConfig));
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE(config->http.has_value()) << http;
    EXPECT_THAT(config->http->listen, ElementsAre(HostPort{"0.0.0.0", 8080}, HostPort{"::", 8080}));
    EXPECT_EQ(config->http->zone, "");
    EXPECT_EQ(config->http->max_head_bytes, 65536u);
    EXPECT_EQ(config->http->head_timeout, absl::Milliseconds(10000));
    EXPECT_EQ(config->http->idle_timeout, absl::Milliseconds(60000));
  }
}

TEST(RelayConfigTest, PortZeroAndEmptyAdmin) {
  absl::StatusOr<RelayConfig> config = Parse(
      "agent_listener: {listen: ['127.0.0.1:0', '[::1]:0']}\n"
      "http: {listen: ['127.0.0.1:0']}\n"
      "admin: {listen: []}\n" +
      std::string(kMinimalConfig));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->agent_listener.listen,
              ElementsAre(HostPort{"127.0.0.1", 0}, HostPort{"::1", 0}));
  EXPECT_TRUE(config->admin.listen.empty());
}

TEST(RelayConfigTest, TunnelGrantsAndTapFile) {
  absl::StatusOr<RelayConfig> config = Parse(
      "tunnel_tap_file: /tmp/tap.bin\n"
      "credentials:\n"
      "  - name: site-a\n"
      "    secret: s3cret-s3cret\n"
      "    grants: ['pair:*', 'private:db', 'connect:db', 'pair:site-*']\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->tunnel_tap_file, "/tmp/tap.bin");
  const std::vector<Grant>& grants = config->credentials[0].grants;
  ASSERT_EQ(grants.size(), 4u);
  EXPECT_EQ(grants[0].kind(), GrantKind::kPair);
  EXPECT_EQ(grants[1].kind(), GrantKind::kPrivate);
  EXPECT_EQ(grants[2].kind(), GrantKind::kConnect);
  EXPECT_EQ(grants[3].ToString(), "pair:site-*");
  EXPECT_TRUE(Parse(kMinimalConfig)->tunnel_tap_file.empty());
}

TEST(RelayConfigTest, TunnelDataPath) {
  EXPECT_TRUE(Parse(kMinimalConfig)->tunnel_data_path);  // on by default
  absl::StatusOr<RelayConfig> off =
      Parse("tunnel_data_path: false\n" + std::string(kMinimalConfig));
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->tunnel_data_path);
  absl::StatusOr<RelayConfig> on = Parse("tunnel_data_path: true\n" + std::string(kMinimalConfig));
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->tunnel_data_path);
  EXPECT_EQ(ErrorOf("tunnel_data_path: sometimes\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: tunnel_data_path: expected true or false, got 'sometimes'");
  EXPECT_EQ(ErrorOf("tunnel_data_paths: false\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: unknown key 'tunnel_data_paths' at top level");
}

TEST(RelayConfigTest, ShutdownGrace) {
  EXPECT_EQ(Parse(kMinimalConfig)->shutdown_grace, absl::Seconds(10));
  absl::StatusOr<RelayConfig> zero = Parse("shutdown_grace_ms: 0\n" + std::string(kMinimalConfig));
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(zero->shutdown_grace, absl::ZeroDuration());
  absl::StatusOr<RelayConfig> long_grace =
      Parse("shutdown_grace_ms: 25000\n" + std::string(kMinimalConfig));
  ASSERT_TRUE(long_grace.ok()) << long_grace.status();
  EXPECT_EQ(long_grace->shutdown_grace, absl::Seconds(25));
  EXPECT_EQ(ErrorOf("shutdown_grace_ms: soon\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: shutdown_grace_ms: expected a duration in milliseconds between 0 and "
            "3600000, got 'soon'");
}

TEST(RelayConfigTest, SecretFile) {
  std::string path = WriteTempFile("secret", "file-secret-value\n");
  absl::StatusOr<RelayConfig> config =
      Parse("credentials:\n  - name: a\n    secret_file: " + path + "\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->credentials[0].secret, "file-secret-value");
  std::remove(path.c_str());
}

TEST(RelayConfigTest, CertAndKeyFiles) {
  std::string cert = WriteTempFile("cert.pem", "cert");
  std::string key = WriteTempFile("key.pem", "key");
  absl::StatusOr<RelayConfig> config =
      Parse("agent_listener:\n  cert_file: " + cert + "\n  key_file: " + key + "\n" +
            std::string(kMinimalConfig));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->agent_listener.cert_file, cert);
  EXPECT_EQ(config->agent_listener.key_file, key);

  EXPECT_EQ(ErrorOf("agent_listener:\n  cert_file: " + cert + "\n" + std::string(kMinimalConfig)),
            "relay.yaml:2: agent_listener.cert_file: cert_file and key_file must be set together "
            "(or neither)");
  EXPECT_EQ(ErrorOf("agent_listener:\n  key_file: " + key + "\n" + std::string(kMinimalConfig)),
            "relay.yaml:2: agent_listener.key_file: cert_file and key_file must be set together "
            "(or neither)");
  EXPECT_EQ(ErrorOf("agent_listener:\n  cert_file: /nonexistent/c.pem\n  key_file: " + key + "\n" +
                    std::string(kMinimalConfig)),
            "relay.yaml:2: agent_listener.cert_file: cannot read '/nonexistent/c.pem': No such "
            "file or directory");
  std::remove(cert.c_str());
  std::remove(key.c_str());
}

TEST(RelayConfigTest, LoadFromFile) {
  std::string path = WriteTempFile("load.yaml", kMinimalConfig);
  absl::StatusOr<RelayConfig> config = LoadRelayConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->credentials[0].name, "orang");

  std::string bad = WriteTempFile("bad.yaml", "workers: many\n" + std::string(kMinimalConfig));
  EXPECT_EQ(Message(LoadRelayConfig(bad).status()),
            bad + ":1: workers: expected an integer between 0 and 1024, got 'many'");
  std::remove(path.c_str());
  std::remove(bad.c_str());

  EXPECT_EQ(Message(LoadRelayConfig("/nonexistent/relay.yaml").status()),
            "cannot read '/nonexistent/relay.yaml': No such file or directory");
}

TEST(RelayConfigTest, SyntaxError) {
  EXPECT_THAT(ErrorOf("http:\n  listen: [\"a:1\"\ncredentials: []\n"),
              testing::StartsWith("relay.yaml:3:"));
}

// Each bad value is reported at its own line, with its dotted key.
TEST(RelayConfigTest, UnknownKeys) {
  EXPECT_EQ(ErrorOf(FullWith("workers: 4", "wrokers: 4")),
            "relay.yaml:3: unknown key 'wrokers' at top level");
  EXPECT_EQ(ErrorOf(FullWith("  zone:", "  zones:")),
            "relay.yaml:12: unknown key 'zones' in 'http'");
  EXPECT_EQ(ErrorOf(FullWith("  handshake_timeout_ms", "  handshake_timeout")),
            "relay.yaml:9: unknown key 'handshake_timeout' in 'agent_listener'");
  EXPECT_EQ(ErrorOf(FullWith("      port: 2021", "      prot: 2021")),
            "relay.yaml:22: unknown key 'prot' in 'tcp.ports[1]'");
  EXPECT_EQ(ErrorOf(FullWith("    max_links: 8", "    max_link: 8")),
            "relay.yaml:37: unknown key 'max_link' in 'credentials[0]'");
  EXPECT_EQ(ErrorOf(FullWith("  ping_interval_ms", "  ping_ms")),
            "relay.yaml:28: unknown key 'ping_ms' in 'link'");
  EXPECT_EQ(ErrorOf(FullWith("  listen: [\"127.0.0.1:9100\"]", "  port: 9100")),
            "relay.yaml:24: unknown key 'port' in 'admin'");
}

TEST(RelayConfigTest, BadValues) {
  EXPECT_EQ(ErrorOf(FullWith("max_head_bytes: 32768", "max_head_bytes: abc")),
            "relay.yaml:13: http.max_head_bytes: expected an integer between 1024 and 81920, "
            "got 'abc'");
  EXPECT_EQ(ErrorOf(FullWith("max_head_bytes: 32768", "max_head_bytes: 100")),
            "relay.yaml:13: http.max_head_bytes: expected an integer between 1024 and 81920, "
            "got '100'");
  EXPECT_EQ(ErrorOf(FullWith("workers: 4", "workers: -1")),
            "relay.yaml:3: workers: expected an integer between 0 and 1024, got '-1'");
  EXPECT_EQ(ErrorOf(FullWith("log_level: debug", "log_level: verbose")),
            "relay.yaml:4: log_level: expected one of trace|debug|info|warn|error, got 'verbose'");
  EXPECT_EQ(ErrorOf(FullWith("handshake_timeout_ms: 5000", "handshake_timeout_ms: 5s")),
            "relay.yaml:9: agent_listener.handshake_timeout_ms: expected a duration in "
            "milliseconds between 10 and 86400000, got '5s'");
  EXPECT_EQ(ErrorOf(FullWith("head_timeout_ms: 2000", "head_timeout_ms: 0")),
            "relay.yaml:14: http.head_timeout_ms: expected a duration in milliseconds between 10 "
            "and 86400000, got '0'");
  EXPECT_EQ(ErrorOf(FullWith("stream_window: 262144", "stream_window: 65535")),
            "relay.yaml:26: link.stream_window: expected an integer between 65536 and "
            "1073741824, got '65535'");
  EXPECT_EQ(ErrorOf(FullWith("max_streams_per_link: 500", "max_streams_per_link: 0")),
            "relay.yaml:30: link.max_streams_per_link: expected an integer between 1 and "
            "1000000, got '0'");
  EXPECT_EQ(ErrorOf(FullWith("  idle_timeout_ms: 3000\n", "  idle_timeout_ms: 1000\n")),
            "relay.yaml:29: link.idle_timeout_ms: link.idle_timeout_ms (1000) must be greater "
            "than link.ping_interval_ms (1000)");
  EXPECT_EQ(ErrorOf(FullWith("    max_links: 8", "    max_links: 0")),
            "relay.yaml:37: credentials[0].max_links: expected an integer between 1 and 100000, "
            "got '0'");
  EXPECT_EQ(ErrorOf(FullWith("relay_id: relay-1", "relay_id: relay 1")),
            "relay.yaml:1: relay_id: expected printable characters without spaces, got "
            "'relay 1'");
  EXPECT_EQ(ErrorOf(FullWith("state_dir: /var/lib/rdv", "state_dir: ''")),
            "relay.yaml:2: state_dir: must not be empty");
  EXPECT_EQ(ErrorOf(FullWith("zone: Relay.Example.com.", "zone: bad_zone")),
            "relay.yaml:12: http.zone: expected a DNS name, e.g. relay.example.com, got "
            "'bad_zone'");
  EXPECT_EQ(ErrorOf("http: 5\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: http: expected a map, got '5'");
}

TEST(RelayConfigTest, BadAddresses) {
  EXPECT_EQ(ErrorOf(FullWith("listen: [\"0.0.0.0:7000\", \"[::]:7000\"]",
                             "listen: [\"0.0.0.0:7000\", \"::7000\"]")),
            "relay.yaml:6: agent_listener.listen[1]: invalid address '::7000': an IPv6 address "
            "must be in brackets, e.g. [::1]:7000");
  EXPECT_EQ(ErrorOf(FullWith("listen: [\"0.0.0.0:8080\", \"[::]:8080\"]",
                             "listen: [\"localhost:8080\"]")),
            "relay.yaml:11: http.listen[0]: invalid address 'localhost:8080': the host must be an "
            "IP address, e.g. 0.0.0.0 or [::]");
  EXPECT_EQ(ErrorOf(FullWith("listen: [\"0.0.0.0:8080\", \"[::]:8080\"]", "listen: []")),
            "relay.yaml:11: http.listen: at least one address is required");
  EXPECT_EQ(ErrorOf(FullWith("listen: [\"0.0.0.0:7000\", \"[::]:7000\"]", "listen: []")),
            "relay.yaml:6: agent_listener.listen: at least one address is required");
  EXPECT_EQ(ErrorOf(FullWith("listen: [\"127.0.0.1:9100\"]", "listen: [\"127.0.0.1:70000\"]")),
            "relay.yaml:24: admin.listen[0]: invalid address '127.0.0.1:70000': port must be a "
            "number between 0 and 65535");
  EXPECT_EQ(ErrorOf(FullWith("listen: [\"127.0.0.1:9100\"]", "listen: [\"[::]:8080\"]")),
            "relay.yaml:24: admin.listen[0]: address [::]:8080 is also used by http.listen[1]");
  EXPECT_EQ(ErrorOf(FullWith("bind: [\"0.0.0.0\", \"::\"]", "bind: [\"0.0.0.0:1\"]")),
            "relay.yaml:17: tcp.bind[0]: expected an IP address without port, e.g. 0.0.0.0 or ::, "
            "got '0.0.0.0:1'");
  EXPECT_EQ(ErrorOf(FullWith("bind: [\"0.0.0.0\", \"::\"]", "bind: []")),
            "relay.yaml:17: tcp.bind: at least one address is required");
}

TEST(RelayConfigTest, DuplicateAddressAgainstDefault) {
  // The agent listener's default includes 0.0.0.0:7000.
  EXPECT_EQ(ErrorOf("http:\n  listen: ['0.0.0.0:7000']\n" + std::string(kMinimalConfig)),
            "relay.yaml:2: http.listen[0]: address 0.0.0.0:7000 is also used by "
            "agent_listener.listen[0]");
}

TEST(RelayConfigTest, TcpPorts) {
  EXPECT_EQ(ErrorOf(FullWith("service: cache", "service: db")),
            "relay.yaml:21: tcp.ports[1].service: service 'db' is already mapped by tcp.ports[0]");
  EXPECT_EQ(ErrorOf(FullWith("port: 2021", "port: 2020")),
            "relay.yaml:22: tcp.ports[1].port: port 2020 is already used by tcp.ports[0]");
  EXPECT_EQ(ErrorOf(FullWith("port: 2021", "port: 0")),
            "relay.yaml:22: tcp.ports[1].port: expected an integer between 1 and 65535, got '0'");
  EXPECT_EQ(ErrorOf(FullWith("service: cache", "service: 2021")),
            "relay.yaml:21: tcp.ports[1].service: expected a service name (a letter, then "
            "letters, digits, '.', '_', '-'; at most 63), got '2021'");
  EXPECT_EQ(ErrorOf(FullWith("    - service: cache\n      port: 2021\n", "    - service: cache\n")),
            "relay.yaml:21: missing required key 'port' in 'tcp.ports[1]'");
  EXPECT_EQ(ErrorOf(FullWith("    - service: cache\n      port: 2021\n", "    - cache\n")),
            "relay.yaml:21: tcp.ports[1]: expected a map, got 'cache'");
}

TEST(RelayConfigTest, Credentials) {
  EXPECT_EQ(ErrorOf("workers: 1\n"),
            "relay.yaml:1: missing required key 'credentials' at top level");
  EXPECT_EQ(ErrorOf("workers: 1\ncredentials: []\n"),
            "relay.yaml:2: credentials: at least one credential is required");
  EXPECT_EQ(ErrorOf(FullWith("  - name: other", "  - name: orang")),
            "relay.yaml:38: credentials[1].name: duplicate credential name 'orang' (also "
            "credentials[0])");
  EXPECT_EQ(ErrorOf(FullWith("secret: \"another-secret\"", "secret: \"short\"")),
            "relay.yaml:39: credentials[1].secret: the secret must be at least 8 characters long "
            "(it has 5)");
  EXPECT_EQ(ErrorOf(FullWith("secret_file: \"\"", "secret_file: /etc/hostname")),
            "relay.yaml:34: credentials[0].secret_file: set either secret or secret_file, not "
            "both");
  EXPECT_EQ(ErrorOf(FullWith("    secret: \"another-secret\"\n", "")),
            "relay.yaml:38: credentials[1]: one of secret or secret_file is required");
  EXPECT_EQ(ErrorOf(FullWith("  - name: other\n", "  - nmae: other\n")),
            "relay.yaml:38: unknown key 'nmae' in 'credentials[1]'");
  EXPECT_EQ(ErrorOf(FullWith("  - name: other\n", "  - secret_file: ''\n")),
            "relay.yaml:38: missing required key 'name' in 'credentials[1]'");
}

TEST(RelayConfigTest, SameCredentialComparesEveryTerm) {
  absl::StatusOr<RelayConfig> base = Parse(kFullConfig);
  ASSERT_TRUE(base.ok()) << base.status();
  const CredentialConfig& orang = base->credentials[0];
  EXPECT_TRUE(SameCredential(orang, orang));
  EXPECT_FALSE(SameCredential(orang, base->credentials[1]));
  for (auto [from, to] : std::vector<std::pair<std::string_view, std::string_view>>{
           {"s3cret-s3cret", "s3cret-rotated"},
           {", \"tcp:db\"]", "]"},
           {"\"tcp:db\"", "\"tcp:cache\""},
           {"\"127.0.0.0/8\", ", ""},
           {"max_links: 8", "max_links: 9"}}) {
    absl::StatusOr<RelayConfig> changed = Parse(FullWith(from, to));
    ASSERT_TRUE(changed.ok()) << changed.status();
    EXPECT_FALSE(SameCredential(orang, changed->credentials[0])) << from << " -> " << to;
    EXPECT_TRUE(SameCredential(base->credentials[1], changed->credentials[1]));
  }
}

TEST(RelayConfigTest, GrantsAndNetworks) {
  EXPECT_EQ(ErrorOf(FullWith("\"tcp:2020-2030\"", "\"tcp:2030-2020\"")),
            "relay.yaml:35: credentials[0].grants[2]: invalid grant 'tcp:2030-2020': port range "
            "must be within 1-65535 and low <= high");
  EXPECT_EQ(ErrorOf(FullWith("\"http:www.orang.com\"", "\"www.orang.com\"")),
            "relay.yaml:35: credentials[0].grants[1]: invalid grant 'www.orang.com': expected "
            "kind:pattern, e.g. http:*.example.com");
  EXPECT_EQ(ErrorOf(FullWith("\"http:www.orang.com\"", "\"ftp:x\"")),
            "relay.yaml:35: credentials[0].grants[1]: invalid grant 'ftp:x': unknown kind 'ftp' "
            "(http, tcp, tls, smtp, udp, pair, private, connect)");
  EXPECT_EQ(ErrorOf(FullWith("\"http:www.orang.com\"", "\"pair:site b\"")),
            "relay.yaml:35: credentials[0].grants[1]: invalid grant 'pair:site b': expected a "
            "name (a letter, then letters, digits, '.', '_', '-'), a name prefix followed by * "
            "(site-*), or *");
  EXPECT_EQ(ErrorOf(FullWith("\"http:www.orang.com\"", "\"connect:\"")),
            "relay.yaml:35: credentials[0].grants[1]: invalid grant 'connect:': expected a "
            "name (a letter, then letters, digits, '.', '_', '-'), a name prefix followed by * "
            "(site-*), or *");
  EXPECT_EQ(ErrorOf(FullWith("\"::1/128\"", "\"::1/129\"")),
            "relay.yaml:36: credentials[0].networks[1]: invalid network '::1/129': prefix length "
            "must be 0-128");
  EXPECT_EQ(ErrorOf(FullWith("\"127.0.0.0/8\"", "\"127.0.0.1/8\"")),
            "relay.yaml:36: credentials[0].networks[0]: invalid network '127.0.0.1/8': address "
            "has bits set beyond the /8 prefix");
  EXPECT_EQ(ErrorOf(FullWith("grants: [", "grants: [[1], ")),
            "relay.yaml:35: credentials[0].grants[0]: expected a string, got a list");
  // Block-style lists report the item's own line.
  EXPECT_EQ(ErrorOf("credentials:\n  - name: a\n    secret: abcdefgh\n    grants:\n"
                    "      - http:ok.example.com\n      - http:bad_name\n"),
            "relay.yaml:6: credentials[0].grants[1]: invalid grant 'http:bad_name': expected a "
            "host name or *.suffix, e.g. www.example.com or *.example.com");
}

TEST(RelayConfigTest, ProxyProtocolFrom) {
  absl::StatusOr<RelayConfig> none = Parse(kMinimalConfig);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->proxy_protocol_from.empty());
  absl::StatusOr<RelayConfig> config =
      Parse("proxy_protocol_from: [\"10.0.0.0/8\", \"::1/128\"]\n" + std::string(kMinimalConfig));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->proxy_protocol_from.size(), 2u);
  EXPECT_EQ(ErrorOf("proxy_protocol_from: [\"10.0.0.1/8\"]\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: proxy_protocol_from[0]: invalid network '10.0.0.1/8': address has bits "
            "set beyond the /8 prefix");
  EXPECT_EQ(ErrorOf("proxy_protocol_from: 10.0.0.0/8\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: proxy_protocol_from: expected a list, got '10.0.0.0/8'");
}

// An `upstream` section (cascaded relays) before the minimal config. The section's own errors
// name its first key's line (2).
constexpr std::string_view kUpstream = R"(upstream:
  relay: relay-b.example.com:7001
  credential: {name: relay-a, secret: "upstream-secret"}
  relay_fingerprint: "SHA256:0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef"
)";

std::string UpstreamWith(std::string_view from, std::string_view to) {
  return config_test::ReplaceFirst(kUpstream, from, to) + std::string(kMinimalConfig);
}

TEST(RelayConfigTest, Upstream) {
  absl::StatusOr<RelayConfig> none = Parse(kMinimalConfig);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->upstream.has_value());
  // A key without a value is the default: no upstream.
  absl::StatusOr<RelayConfig> empty = Parse("upstream:\n" + std::string(kMinimalConfig));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_FALSE(empty->upstream.has_value());

  absl::StatusOr<RelayConfig> config = Parse(std::string(kUpstream) + std::string(kMinimalConfig));
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->upstream.has_value());
  const UpstreamConfig& upstream = *config->upstream;
  EXPECT_EQ(upstream.relay, (HostPort{"relay-b.example.com", 7001}));
  EXPECT_EQ(upstream.credential.name, "relay-a");
  EXPECT_EQ(upstream.credential.secret, "upstream-secret");
  EXPECT_EQ(upstream.trust.relay_fingerprint,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  EXPECT_EQ(upstream.trust.relay_ca_file, "");
  EXPECT_EQ(upstream.ServerName(), "relay-b.example.com");

  std::string ca = WriteTempFile("upstream-ca.pem", "not parsed at load\n");
  std::string secret = WriteTempFile("upstream-secret", "secret-from-file\n");
  absl::StatusOr<RelayConfig> by_ca =
      Parse("upstream:\n  relay: \"[::1]:7001\"\n  credential: {name: a, secret_file: " + secret +
            "}\n  relay_ca_file: " + ca + "\n  server_name: Relay-B.Example.com\n" +
            std::string(kMinimalConfig));
  ASSERT_TRUE(by_ca.ok()) << by_ca.status();
  EXPECT_EQ(by_ca->upstream->relay, (HostPort{"::1", 7001}));
  EXPECT_EQ(by_ca->upstream->credential.secret, "secret-from-file");
  EXPECT_EQ(by_ca->upstream->trust.relay_ca_file, ca);
  EXPECT_EQ(by_ca->upstream->trust.relay_fingerprint, "");
  EXPECT_EQ(by_ca->upstream->ServerName(), "relay-b.example.com");
  std::remove(ca.c_str());
  std::remove(secret.c_str());
}

TEST(RelayConfigTest, UpstreamErrors) {
  EXPECT_EQ(ErrorOf(UpstreamWith("  relay: relay-b.example.com:7001\n", "")),
            "relay.yaml:2: missing required key 'relay' in 'upstream'");
  EXPECT_EQ(ErrorOf(UpstreamWith("relay-b.example.com:7001", "relay-b.example.com")),
            "relay.yaml:2: upstream.relay: invalid address 'relay-b.example.com': expected "
            "host:port, e.g. 127.0.0.1:7000 or [::1]:7000");
  EXPECT_EQ(ErrorOf(UpstreamWith("relay-b.example.com:7001", "relay-b.example.com:0")),
            "relay.yaml:2: upstream.relay: invalid address 'relay-b.example.com:0': port 0 is not "
            "allowed here");
  EXPECT_EQ(
      ErrorOf(UpstreamWith("  credential: {name: relay-a, secret: \"upstream-secret\"}\n", "")),
      "relay.yaml:2: missing required key 'credential' in 'upstream'");
  EXPECT_EQ(ErrorOf(UpstreamWith("secret: \"upstream-secret\"", "secret: \"short\"")),
            "relay.yaml:3: upstream.credential.secret: the secret must be at least 8 characters "
            "long (it has 5)");
  EXPECT_EQ(ErrorOf(UpstreamWith("{name: relay-a, ", "{")),
            "relay.yaml:3: missing required key 'name' in 'upstream.credential'");
  EXPECT_EQ(ErrorOf(UpstreamWith("{name: relay-a, ", "{name: relay-a, grants: [], ")),
            "relay.yaml:3: unknown key 'grants' in 'upstream.credential'");
  EXPECT_EQ(ErrorOf(UpstreamWith("  relay_fingerprint:", "  relay_fingerprnt:")),
            "relay.yaml:4: unknown key 'relay_fingerprnt' in 'upstream'");
  EXPECT_EQ(ErrorOf(UpstreamWith("SHA256:0123", "SHA256:0x23")),
            "relay.yaml:4: upstream.relay_fingerprint: expected a SHA-256 fingerprint: 64 hex "
            "digits, optionally prefixed with 'sha256:' and separated by ':'");
  EXPECT_EQ(ErrorOf(UpstreamWith("  relay_fingerprint: \"SHA256:0123456789abcdef0123456789ABCDEF"
                                 "0123456789abcdef0123456789abcdef\"\n",
                                 "")),
            "relay.yaml:2: upstream: one of relay_ca_file or relay_fingerprint is required to "
            "authenticate the relay");
  EXPECT_EQ(ErrorOf(UpstreamWith("  relay_fingerprint:",
                                 "  relay_ca_file: /etc/hostname\n"
                                 "  relay_fingerprint:")),
            "relay.yaml:5: upstream.relay_fingerprint: set either relay_ca_file or "
            "relay_fingerprint, not both");
  EXPECT_EQ(ErrorOf(UpstreamWith("  relay_fingerprint:",
                                 "  relay_ca_file: /nonexistent/ca.pem\n"
                                 "  relay_fingerprint:")),
            "relay.yaml:4: upstream.relay_ca_file: cannot read '/nonexistent/ca.pem': No such "
            "file or directory");
  EXPECT_EQ(ErrorOf(UpstreamWith("  relay_fingerprint:",
                                 "  server_name: not_a_name\n"
                                 "  relay_fingerprint:")),
            "relay.yaml:4: upstream.server_name: expected a DNS name, got 'not_a_name'");
  EXPECT_EQ(ErrorOf("upstream: relay-b:7001\n" + std::string(kMinimalConfig)),
            "relay.yaml:1: upstream: expected a map, got 'relay-b:7001'");
  // The secret is never echoed.
  EXPECT_THAT(ErrorOf(UpstreamWith("secret: \"upstream-secret\"", "secret: \"hunter2\"")),
              testing::Not(HasSubstr("hunter2")));
}

TEST(RelayConfigTest, SecretNeverEchoed) {
  std::string error = ErrorOf(FullWith("secret: \"another-secret\"", "secret: \"hunter2\""));
  EXPECT_THAT(error, testing::Not(HasSubstr("hunter2")));
}

}  // namespace
}  // namespace rdv
