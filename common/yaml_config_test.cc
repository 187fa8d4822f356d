#include "common/yaml_config.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/config_test_support.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

using config_test::Message;
using ::testing::StartsWith;

// ---- HostPort ------------------------------------------------------------------------------

TEST(HostPortTest, Parses) {
  EXPECT_EQ(*ParseHostPort("127.0.0.1:7000"), (HostPort{"127.0.0.1", 7000}));
  EXPECT_EQ(*ParseHostPort("0.0.0.0:0"), (HostPort{"0.0.0.0", 0}));
  EXPECT_EQ(*ParseHostPort("[::]:7000"), (HostPort{"::", 7000}));
  EXPECT_EQ(*ParseHostPort("[::1]:65535"), (HostPort{"::1", 65535}));
  EXPECT_EQ(*ParseHostPort("[2001:db8::1]:80"), (HostPort{"2001:db8::1", 80}));
  EXPECT_EQ(*ParseHostPort("[::ffff:1.2.3.4]:80"), (HostPort{"::ffff:1.2.3.4", 80}));
  EXPECT_EQ(*ParseHostPort("localhost:8081"), (HostPort{"localhost", 8081}));
  EXPECT_EQ(*ParseHostPort("relay.example.com:7000"), (HostPort{"relay.example.com", 7000}));
}

TEST(HostPortTest, Rejects) {
  for (std::string_view bad : {"",
                               ":80",
                               "127.0.0.1",
                               "127.0.0.1:",
                               "127.0.0.1:65536",
                               "127.0.0.1:-1",
                               "127.0.0.1:+80",
                               "127.0.0.1:8o",
                               "127.0.0.1:000080",
                               "::1:80",
                               "[::1]",
                               "[::1]80",
                               "[::1:80",
                               "[]:80",
                               "[1.2.3.4]:80",
                               "[host]:80",
                               "bad_host:80",
                               "-x.com:80",
                               "1.2.3.999:80",
                               " 127.0.0.1:80",
                               "127.0.0.1:80 "}) {
    absl::StatusOr<HostPort> parsed = ParseHostPort(bad);
    EXPECT_FALSE(parsed.ok()) << "'" << bad << "' parsed as " << parsed->host << " "
                              << parsed->port;
  }
}

TEST(HostPortTest, Messages) {
  EXPECT_EQ(Message(ParseHostPort("::1:80").status()),
            "invalid address '::1:80': an IPv6 address must be in brackets, e.g. [::1]:7000");
  EXPECT_EQ(Message(ParseHostPort("host:99999").status()),
            "invalid address 'host:99999': port must be a number between 0 and 65535");
}

TEST(HostPortTest, Formats) {
  EXPECT_EQ(FormatHostPort({"127.0.0.1", 7000}), "127.0.0.1:7000");
  EXPECT_EQ(FormatHostPort({"::1", 7000}), "[::1]:7000");
  EXPECT_EQ(FormatHostPort({"example.com", 0}), "example.com:0");
  for (std::string_view text : {"[::]:1", "1.2.3.4:5", "a.b:65535"}) {
    EXPECT_EQ(FormatHostPort(*ParseHostPort(text)), text);
  }
}

TEST(HostPortTest, IpLiteral) {
  EXPECT_TRUE(IsIpLiteral("0.0.0.0"));
  EXPECT_TRUE(IsIpLiteral("::"));
  EXPECT_TRUE(IsIpLiteral("fe80::1"));
  EXPECT_FALSE(IsIpLiteral("[::]"));
  EXPECT_FALSE(IsIpLiteral("localhost"));
  EXPECT_FALSE(IsIpLiteral("1.2.3"));
  EXPECT_FALSE(IsIpLiteral(""));
}

// ---- Documents -----------------------------------------------------------------------------

YamlMap MustRoot(std::string_view text) {
  absl::StatusOr<YamlDocument> document = YamlDocument::Parse(text, "t.yaml");
  EXPECT_TRUE(document.ok()) << document.status();
  absl::StatusOr<YamlMap> root = document->Root();
  EXPECT_TRUE(root.ok()) << root.status();
  return *root;
}

TEST(YamlDocumentTest, SyntaxErrorNamesLineAndColumn) {
  absl::StatusOr<YamlDocument> document = YamlDocument::Parse("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml");
  ASSERT_FALSE(document.ok());
  EXPECT_EQ(document.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(document.status().message()), StartsWith("bad.yaml:3:"));

  document = YamlDocument::Parse("a: 1\n  b: 2\n", "indent.yaml");
  ASSERT_FALSE(document.ok());
  EXPECT_THAT(std::string(document.status().message()), StartsWith("indent.yaml:2:"));

  document = YamlDocument::Parse("a: 1\nb: c: d\n", "colon.yaml");
  ASSERT_FALSE(document.ok());
  EXPECT_THAT(std::string(document.status().message()), StartsWith("colon.yaml:2:"));
}

TEST(YamlDocumentTest, SecondDocumentRejected) {
  absl::StatusOr<YamlDocument> document = YamlDocument::Parse("a: 1\n---\nb: 2\n", "two.yaml");
  ASSERT_FALSE(document.ok());
  EXPECT_THAT(std::string(document.status().message()), HasSubstr("only one YAML document"));
}

TEST(YamlDocumentTest, EmptyDocumentIsEmptyMap) {
  YamlMap root = MustRoot("");
  EXPECT_TRUE(root.CheckKeys({}).ok());
  EXPECT_FALSE(root.Find("x").has_value());
  EXPECT_EQ(Message(root.Require("x").status()), "t.yaml:1: missing required key 'x' at top level");
  root = MustRoot("# only a comment\n");
  EXPECT_TRUE(root.CheckKeys({}).ok());
}

TEST(YamlDocumentTest, RootMustBeMap) {
  absl::StatusOr<YamlDocument> document = YamlDocument::Parse("- a\n- b\n", "list.yaml");
  ASSERT_TRUE(document.ok());
  EXPECT_EQ(Message(document->Root().status()), "list.yaml:1: expected a map, got a list");
}

TEST(YamlDocumentTest, LoadFile) {
  std::string path = ::testing::TempDir() + "/yaml_config_test_load.yaml";
  {
    std::ofstream out(path);
    out << "a: 1\nb:\n  c: x\n";
  }
  absl::StatusOr<YamlDocument> document = YamlDocument::LoadFile(path);
  ASSERT_TRUE(document.ok()) << document.status();
  absl::StatusOr<YamlMap> root = document->Root();
  ASSERT_TRUE(root.ok());
  absl::Status status = root->CheckKeys({"a"});
  EXPECT_EQ(Message(status), path + ":2: unknown key 'b' at top level");
  std::remove(path.c_str());

  absl::StatusOr<YamlDocument> missing = YamlDocument::LoadFile(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(Message(missing.status()), "cannot read '" + path + "': No such file or directory");
}

// ---- Keys ----------------------------------------------------------------------------------

TEST(YamlMapTest, UnknownKeyNamesDottedPath) {
  YamlMap root = MustRoot("http:\n  listen: []\n  foo: 1\n");
  EXPECT_TRUE(root.CheckKeys({"http"}).ok());
  absl::StatusOr<YamlMap> http = root.Find("http")->AsMap();
  ASSERT_TRUE(http.ok());
  EXPECT_EQ(Message(http->CheckKeys({"listen"})), "t.yaml:3: unknown key 'foo' in 'http'");
}

TEST(YamlMapTest, UnknownKeyInListItem) {
  YamlMap root = MustRoot("credentials:\n  - name: a\n  - name: b\n    colour: red\n");
  absl::StatusOr<std::vector<YamlValue>> items = root.Find("credentials")->AsList();
  ASSERT_TRUE(items.ok());
  ASSERT_EQ(items->size(), 2u);
  absl::StatusOr<YamlMap> second = (*items)[1].AsMap();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(Message(second->CheckKeys({"name"})),
            "t.yaml:4: unknown key 'colour' in 'credentials[1]'");
}

TEST(YamlMapTest, DuplicateKey) {
  YamlMap root = MustRoot("a: 1\nb: 2\na: 3\n");
  EXPECT_EQ(Message(root.CheckKeys({"a", "b"})), "t.yaml:3: duplicate key 'a' at top level");
}

TEST(YamlMapTest, NonScalarKey) {
  YamlMap root = MustRoot("? [a, b]\n: 1\n");
  EXPECT_THAT(std::string(root.CheckKeys({"a"}).message()),
              HasSubstr("keys must be plain strings"));
}

TEST(YamlMapTest, NullValueReadsAsAbsent) {
  YamlMap root = MustRoot("a:\nb: ~\nc: null\n");
  EXPECT_TRUE(root.HasKey("a"));
  EXPECT_FALSE(root.HasKey("d"));
  EXPECT_FALSE(root.Find("a").has_value());
  EXPECT_FALSE(root.Find("b").has_value());
  EXPECT_FALSE(root.Find("c").has_value());
  uint32_t value = 7;
  EXPECT_TRUE(root.ReadUint<uint32_t>("a", 0, 10, &value).ok());
  EXPECT_EQ(value, 7u);
  EXPECT_EQ(Message(root.Require("b").status()), "t.yaml:1: missing required key 'b' at top level");
}

TEST(YamlMapTest, NullSectionIsEmptyMap) {
  YamlMap root = MustRoot("http:\n");
  ASSERT_TRUE(root.HasKey("http"));
  // Find() reports null as absent; callers wanting "present but empty" use HasKey.
  EXPECT_FALSE(root.Find("http").has_value());
}

TEST(YamlMapTest, RequireNamesMap) {
  YamlMap root = MustRoot("x: 1\ncredential:\n  secret: abc\n");
  absl::StatusOr<YamlMap> credential = root.Find("credential")->AsMap();
  ASSERT_TRUE(credential.ok());
  EXPECT_EQ(Message(credential->Require("name").status()),
            "t.yaml:3: missing required key 'name' in 'credential'");
}

// ---- Typed getters -------------------------------------------------------------------------

TEST(YamlMapTest, Uint) {
  YamlMap root = MustRoot(
      "http:\n  max_head_bytes: abc\n  a: 2048\n  b: 1023\n  c: -5\n  d: 99999999999999999999999\n"
      "  e: [1]\n  f: 0x100\n  g: 1.5\n  h: \"4096\"\n  i: 18446744073709551615\n"
      "  j: 18446744073709551616\n");
  absl::StatusOr<YamlMap> http = root.Find("http")->AsMap();
  ASSERT_TRUE(http.ok());
  uint32_t value = 0;
  EXPECT_EQ(Message(http->ReadUint<uint32_t>("max_head_bytes", 1024, 16777216, &value)),
            "t.yaml:2: http.max_head_bytes: expected an integer between 1024 and 16777216, got "
            "'abc'");
  EXPECT_TRUE(http->ReadUint<uint32_t>("a", 1024, 16777216, &value).ok());
  EXPECT_EQ(value, 2048u);
  EXPECT_EQ(Message(http->ReadUint<uint32_t>("b", 1024, 16777216, &value)),
            "t.yaml:4: http.b: expected an integer between 1024 and 16777216, got '1023'");
  EXPECT_EQ(Message(http->ReadUint<uint32_t>("c", 0, 10, &value)),
            "t.yaml:5: http.c: expected an integer between 0 and 10, got '-5'");
  EXPECT_THAT(std::string(http->ReadUint<uint32_t>("d", 0, 10, &value).message()),
              StartsWith("t.yaml:6: http.d: expected an integer"));
  EXPECT_EQ(Message(http->ReadUint<uint32_t>("e", 0, 10, &value)),
            "t.yaml:7: http.e: expected an integer between 0 and 10, got a list");
  EXPECT_FALSE(http->ReadUint<uint32_t>("f", 0, 1000, &value).ok());
  EXPECT_FALSE(http->ReadUint<uint32_t>("g", 0, 1000, &value).ok());
  EXPECT_TRUE(http->ReadUint<uint32_t>("h", 0, 5000, &value).ok());
  EXPECT_EQ(value, 4096u);
  uint64_t big = 0;
  EXPECT_TRUE(http->ReadUint<uint64_t>("i", 0, UINT64_MAX, &big).ok());
  EXPECT_EQ(big, UINT64_MAX);
  EXPECT_FALSE(http->ReadUint<uint64_t>("j", 0, UINT64_MAX, &big).ok());
  EXPECT_TRUE(http->ReadUint<uint32_t>("absent", 0, 10, &value).ok());
  EXPECT_EQ(value, 4096u);
}

TEST(YamlMapTest, String) {
  YamlMap root = MustRoot("a: hello\nb: 123\nc: [x]\nd: {k: v}\ne: ''\n");
  std::string value = "default";
  EXPECT_TRUE(root.ReadString("absent", &value).ok());
  EXPECT_EQ(value, "default");
  EXPECT_TRUE(root.ReadString("a", &value).ok());
  EXPECT_EQ(value, "hello");
  EXPECT_TRUE(root.ReadString("b", &value).ok());
  EXPECT_EQ(value, "123");
  EXPECT_EQ(Message(root.ReadString("c", &value)), "t.yaml:3: c: expected a string, got a list");
  EXPECT_EQ(Message(root.ReadString("d", &value)), "t.yaml:4: d: expected a string, got a map");
  EXPECT_TRUE(root.ReadString("e", &value).ok());
  EXPECT_EQ(value, "");
}

TEST(YamlMapTest, LongValuesAreCutInMessages) {
  std::string long_value(200, 'x');
  YamlMap root = MustRoot("a: " + long_value + "\n");
  uint32_t value = 0;
  std::string message(root.ReadUint<uint32_t>("a", 0, 1, &value).message());
  EXPECT_THAT(message, HasSubstr("got '" + std::string(80, 'x') + "...'"));
  EXPECT_LT(message.size(), 150u);
}

TEST(YamlMapTest, Enum) {
  YamlMap root = MustRoot("log_level: loud\nok: warn\n");
  std::string level = "info";
  EXPECT_EQ(
      Message(root.ReadEnum("log_level", {"trace", "debug", "info", "warn", "error"}, &level)),
      "t.yaml:1: log_level: expected one of trace|debug|info|warn|error, got 'loud'");
  EXPECT_EQ(level, "info");
  EXPECT_TRUE(root.ReadEnum("ok", {"trace", "debug", "info", "warn", "error"}, &level).ok());
  EXPECT_EQ(level, "warn");
}

TEST(YamlMapTest, Bool) {
  YamlMap root = MustRoot("a: true\nb: False\nc: yes please\n");
  bool value = false;
  EXPECT_TRUE(root.ReadBool("a", &value).ok());
  EXPECT_TRUE(value);
  EXPECT_TRUE(root.ReadBool("b", &value).ok());
  EXPECT_FALSE(value);
  EXPECT_EQ(Message(root.ReadBool("c", &value)),
            "t.yaml:3: c: expected true or false, got 'yes please'");
}

TEST(YamlMapTest, DurationMs) {
  YamlMap root = MustRoot("link:\n  ping_interval_ms: 250\n  idle_timeout_ms: 5s\n");
  absl::StatusOr<YamlMap> link = root.Find("link")->AsMap();
  ASSERT_TRUE(link.ok());
  absl::Duration value = absl::Seconds(1);
  EXPECT_TRUE(link->ReadDurationMs("ping_interval_ms", 10, 60000, &value).ok());
  EXPECT_EQ(value, absl::Milliseconds(250));
  EXPECT_EQ(Message(link->ReadDurationMs("idle_timeout_ms", 10, 60000, &value)),
            "t.yaml:3: link.idle_timeout_ms: expected a duration in milliseconds between 10 and "
            "60000, got '5s'");
  EXPECT_EQ(value, absl::Milliseconds(250));
}

TEST(YamlMapTest, StringList) {
  YamlMap root = MustRoot("a: [x, y]\nb:\n  - p\n  - [q]\nc: single\nd: []\n");
  std::vector<std::string> value = {"default"};
  EXPECT_TRUE(root.ReadStringList("a", &value).ok());
  EXPECT_EQ(value, (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(Message(root.ReadStringList("b", &value)),
            "t.yaml:4: b[1]: expected a string, got a list");
  EXPECT_EQ(Message(root.ReadStringList("c", &value)),
            "t.yaml:5: c: expected a list, got 'single'");
  EXPECT_TRUE(root.ReadStringList("d", &value).ok());
  EXPECT_TRUE(value.empty());
}

TEST(YamlMapTest, HostPortList) {
  YamlMap root = MustRoot(
      "listen: [\"0.0.0.0:7000\", \"[::]:0\"]\n"
      "bad:\n  - 127.0.0.1:1\n  - localhost:80\n"
      "zero: [\"relay:0\"]\n"
      "v6: [\"::1:80\"]\n");
  std::vector<HostPort> value;
  EXPECT_TRUE(root.ReadHostPortList("listen", true, true, &value).ok());
  EXPECT_EQ(value, (std::vector<HostPort>{{"0.0.0.0", 7000}, {"::", 0}}));
  EXPECT_EQ(Message(root.ReadHostPortList("bad", true, true, &value)),
            "t.yaml:4: bad[1]: invalid address 'localhost:80': the host must be an IP address, "
            "e.g. 0.0.0.0 or [::]");
  EXPECT_TRUE(root.ReadHostPortList("bad", true, false, &value).ok());
  EXPECT_EQ(Message(root.ReadHostPortList("zero", false, false, &value)),
            "t.yaml:5: zero[0]: invalid address 'relay:0': port 0 is not allowed here");
  EXPECT_EQ(Message(root.ReadHostPortList("v6", true, false, &value)),
            "t.yaml:6: v6[0]: invalid address '::1:80': an IPv6 address must be in brackets, "
            "e.g. [::1]:7000");
}

TEST(YamlMapTest, Secret) {
  std::string path = ::testing::TempDir() + "/yaml_config_test_secret";
  {
    std::ofstream out(path);
    out << "from-a-file\r\n\n";
  }
  YamlMap root = MustRoot(
      "inline:\n  secret: abcdefgh\n  secret_file: ''\n"
      "file:\n  secret_file: " +
      path +
      "\n"
      "both:\n  secret: abcdefgh\n  secret_file: /x\n"
      "neither:\n  other: 1\n"
      "short:\n  secret: abc\n"
      "missing:\n  secret_file: /nonexistent/secret\n");
  auto section = [&](std::string_view key) { return *root.Find(key)->AsMap(); };
  EXPECT_EQ(*section("inline").ReadSecret("secret", "secret_file", 8), "abcdefgh");
  EXPECT_EQ(*section("file").ReadSecret("secret", "secret_file", 8), "from-a-file");
  EXPECT_EQ(Message(section("both").ReadSecret("secret", "secret_file", 8).status()),
            "t.yaml:8: both.secret_file: set either secret or secret_file, not both");
  EXPECT_EQ(Message(section("neither").ReadSecret("secret", "secret_file", 8).status()),
            "t.yaml:10: neither: one of secret or secret_file is required");
  EXPECT_EQ(Message(section("short").ReadSecret("secret", "secret_file", 8).status()),
            "t.yaml:12: short.secret: the secret must be at least 8 characters long (it has 3)");
  EXPECT_EQ(Message(section("missing").ReadSecret("secret", "secret_file", 8).status()),
            "t.yaml:14: missing.secret_file: cannot read '/nonexistent/secret': No such file or "
            "directory");
  std::remove(path.c_str());
}

TEST(YamlMapTest, ReadablePath) {
  YamlMap root = MustRoot("a: ''\nb: /nonexistent/ca.pem\nc: /dev/null\n");
  std::string value = "x";
  EXPECT_TRUE(root.ReadReadablePath("a", &value).ok());
  EXPECT_EQ(value, "");
  EXPECT_EQ(Message(root.ReadReadablePath("b", &value)),
            "t.yaml:2: b: cannot read '/nonexistent/ca.pem': No such file or directory");
  EXPECT_TRUE(root.ReadReadablePath("c", &value).ok());
  EXPECT_EQ(value, "/dev/null");
}

TEST(ReadSmallFileTest, DirectoryIsAnError) {
  absl::StatusOr<std::string> contents = ReadSmallFile("/");
  ASSERT_FALSE(contents.ok());
  EXPECT_EQ(Message(contents.status()), "cannot read '/': Is a directory");
}

}  // namespace
}  // namespace rdv
