#include "common/auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>

#include "absl/strings/escaping.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

// absl::string_view (Debian's is not std::string_view) prints badly in gtest failures.
std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string Hex(const std::string& bytes) { return absl::BytesToHexString(bytes); }

// ---- MAC ----------------------------------------------------------------------------------

// Expected values computed with:
//   printf 'rdv-auth-v1%s%s' <nonce> <binding> | openssl dgst -sha256 -hmac <secret>
// (and Python's hmac module for the binary and empty-key cases).
TEST(AuthMacTest, KnownAnswerAscii) {
  std::string mac = ComputeAuthMac("supersecret", "0123456789abcdef0123456789abcdef", "cb-bytes");
  EXPECT_EQ(Hex(mac), "456df29c07fe11f2276f9be68e5803d8d72fbfc15dbc45bb374f3eab14eee942");
}

TEST(AuthMacTest, KnownAnswerBinary) {
  std::string nonce;
  for (int i = 0; i < 32; ++i) nonce.push_back(static_cast<char>(i));
  std::string binding = {static_cast<char>(0xff), '\0', 0x7f};
  EXPECT_EQ(Hex(ComputeAuthMac("k3y-with-binary", nonce, binding)),
            "f7e4994532ca46f2c615d76651532717c8bfb37df98bd5cd519ba323fbf963ac");
}

TEST(AuthMacTest, KnownAnswerEmptyKey) {
  EXPECT_EQ(Hex(ComputeAuthMac("", "", "")),
            "ca3fb5982daef322b758ab78fd2312c93b85c2564cfb00493281df0041656547");
  EXPECT_EQ(Hex(ComputeAuthMac(std::string_view(), std::string_view(), std::string_view())),
            "ca3fb5982daef322b758ab78fd2312c93b85c2564cfb00493281df0041656547");
}

TEST(AuthMacTest, Verify) {
  std::string nonce(32, 'n');
  std::string mac = ComputeAuthMac("secret-one", nonce, "binding");
  ASSERT_EQ(mac.size(), kAuthMacSize);
  EXPECT_TRUE(VerifyAuthMac("secret-one", nonce, "binding", mac));
  EXPECT_FALSE(VerifyAuthMac("secret-two", nonce, "binding", mac));
  EXPECT_FALSE(VerifyAuthMac("secret-one", std::string(32, 'm'), "binding", mac));
  EXPECT_FALSE(VerifyAuthMac("secret-one", nonce, "other-binding", mac));
  std::string flipped = mac;
  flipped[31] ^= 1;
  EXPECT_FALSE(VerifyAuthMac("secret-one", nonce, "binding", flipped));
  EXPECT_FALSE(VerifyAuthMac("secret-one", nonce, "binding", mac.substr(0, 31)));
  EXPECT_FALSE(VerifyAuthMac("secret-one", nonce, "binding", mac + "x"));
  EXPECT_FALSE(VerifyAuthMac("secret-one", nonce, "binding", ""));
}

// ---- Host names ---------------------------------------------------------------------------

TEST(HostNameTest, Valid) {
  EXPECT_TRUE(IsValidHostName("localhost"));
  EXPECT_TRUE(IsValidHostName("www.orang.com"));
  EXPECT_TRUE(IsValidHostName("WWW.Orang.COM"));
  EXPECT_TRUE(IsValidHostName("a-b.c1.io"));
  EXPECT_TRUE(IsValidHostName("1a.example.com"));
  EXPECT_TRUE(IsValidHostName(std::string(63, 'a') + ".com"));
}

TEST(HostNameTest, Invalid) {
  EXPECT_FALSE(IsValidHostName(""));
  EXPECT_FALSE(IsValidHostName("."));
  EXPECT_FALSE(IsValidHostName("orang.com."));
  EXPECT_FALSE(IsValidHostName(".orang.com"));
  EXPECT_FALSE(IsValidHostName("a..b"));
  EXPECT_FALSE(IsValidHostName("-a.com"));
  EXPECT_FALSE(IsValidHostName("a-.com"));
  EXPECT_FALSE(IsValidHostName("a_b.com"));
  EXPECT_FALSE(IsValidHostName("*.orang.com"));
  EXPECT_FALSE(IsValidHostName("a b.com"));
  EXPECT_FALSE(IsValidHostName("1.2.3.4"));
  EXPECT_FALSE(IsValidHostName("1234"));
  EXPECT_FALSE(IsValidHostName(std::string(64, 'a') + ".com"));
  std::string long_name;
  for (int i = 0; i < 64; ++i) long_name += "abc.";
  long_name += "com";
  EXPECT_FALSE(IsValidHostName(long_name));  // 259 characters
}

TEST(HostNameTest, Patterns) {
  EXPECT_TRUE(IsValidHostPattern("*.orang.com"));
  EXPECT_TRUE(IsValidHostPattern("www.orang.com"));
  EXPECT_FALSE(IsValidHostPattern("*"));
  EXPECT_FALSE(IsValidHostPattern("*."));
  EXPECT_FALSE(IsValidHostPattern("*orang.com"));
  EXPECT_FALSE(IsValidHostPattern("a.*.orang.com"));
  EXPECT_FALSE(IsValidHostPattern("*.*.orang.com"));
}

TEST(ServiceNameTest, Valid) {
  EXPECT_TRUE(IsValidServiceName("db"));
  EXPECT_TRUE(IsValidServiceName("Db_1.primary-x"));
  EXPECT_FALSE(IsValidServiceName(""));
  EXPECT_FALSE(IsValidServiceName("2020"));
  EXPECT_FALSE(IsValidServiceName("1db"));
  EXPECT_FALSE(IsValidServiceName("-db"));
  EXPECT_FALSE(IsValidServiceName("d b"));
  EXPECT_FALSE(IsValidServiceName("db:1"));
  EXPECT_FALSE(IsValidServiceName("*"));
  EXPECT_FALSE(IsValidServiceName(std::string(64, 'a')));
  EXPECT_TRUE(IsValidServiceName(std::string(63, 'a')));
}

TEST(NormalizeHostTest, Cases) {
  EXPECT_EQ(NormalizeHost("WWW.Orang.Com"), "www.orang.com");
  EXPECT_EQ(NormalizeHost("www.orang.com:8080"), "www.orang.com");
  EXPECT_EQ(NormalizeHost("www.orang.com."), "www.orang.com");
  EXPECT_EQ(NormalizeHost("www.orang.com.:80"), "www.orang.com");
  EXPECT_EQ(NormalizeHost("www.orang.com:"), "www.orang.com");
  EXPECT_EQ(NormalizeHost("[::1]:8080"), "::1");
  EXPECT_EQ(NormalizeHost("[FE80::1]"), "fe80::1");
  EXPECT_EQ(NormalizeHost("127.0.0.1:80"), "127.0.0.1");
  EXPECT_EQ(NormalizeHost(""), "");
  EXPECT_EQ(NormalizeHost("[::1"), "");
  EXPECT_EQ(NormalizeHost("[::1]x"), "");
  EXPECT_EQ(NormalizeHost("[]:80"), "");
  EXPECT_EQ(NormalizeHost("::1"), "");
  EXPECT_EQ(NormalizeHost("host:http"), "");
  EXPECT_EQ(NormalizeHost("host:80:90"), "");
}

TEST(WildcardTest, Matches) {
  EXPECT_TRUE(WildcardMatches("*.orang.com", "a.orang.com"));
  EXPECT_TRUE(WildcardMatches("*.orang.com", "A.ORANG.com"));
  EXPECT_TRUE(WildcardMatches("*.Orang.com", "a.orang.com"));
  EXPECT_TRUE(WildcardMatches("*.orang.com", "a.b.orang.com"));
  EXPECT_FALSE(WildcardMatches("*.orang.com", "orang.com"));
  EXPECT_FALSE(WildcardMatches("*.orang.com", "evilorang.com"));
  EXPECT_FALSE(WildcardMatches("*.orang.com", ".orang.com"));
  EXPECT_FALSE(WildcardMatches("*.orang.com", "orang.com.evil.net"));
  EXPECT_FALSE(WildcardMatches("*.orang.com", "a.orang.co"));
  EXPECT_FALSE(WildcardMatches("*.orang.com", ""));
  EXPECT_TRUE(WildcardMatches("www.orang.com", "WWW.orang.com"));
  EXPECT_FALSE(WildcardMatches("www.orang.com", "a.www.orang.com"));
  EXPECT_FALSE(WildcardMatches("www.orang.com", "orang.com"));
}

// ---- Grants --------------------------------------------------------------------------------

Grant MustParse(std::string_view text) {
  absl::StatusOr<Grant> grant = ParseGrant(text);
  EXPECT_TRUE(grant.ok()) << text << ": " << grant.status();
  return grant.ok() ? *grant : Grant();
}

TEST(GrantTest, ParsesKinds) {
  EXPECT_EQ(MustParse("http:*.orang.com").kind(), GrantKind::kHttp);
  EXPECT_EQ(MustParse("http:*.orang.com").pattern(), "*.orang.com");
  EXPECT_EQ(MustParse("http:WWW.Orang.com").pattern(), "www.orang.com");
  EXPECT_EQ(MustParse("tcp:2020-2030").kind(), GrantKind::kTcp);
  EXPECT_EQ(MustParse("tls:*.orang.com").kind(), GrantKind::kTls);
  EXPECT_EQ(MustParse("smtp:mail.orang.com").kind(), GrantKind::kSmtp);
  EXPECT_EQ(MustParse("udp:5000-5010").kind(), GrantKind::kUdp);
  EXPECT_EQ(MustParse("tcp:db").ToString(), "tcp:db");
  EXPECT_EQ(MustParse("http:*.Orang.com").ToString(), "http:*.orang.com");
}

TEST(GrantTest, TunnelGrants) {
  EXPECT_EQ(MustParse("pair:*").kind(), GrantKind::kPair);
  EXPECT_EQ(MustParse("private:db").kind(), GrantKind::kPrivate);
  EXPECT_EQ(MustParse("connect:db").kind(), GrantKind::kConnect);
  EXPECT_EQ(MustParse("pair:site-*").ToString(), "pair:site-*");

  Grant any = MustParse("pair:*");
  EXPECT_TRUE(any.AllowsTunnelName(GrantKind::kPair, "site-b"));
  EXPECT_FALSE(any.AllowsTunnelName(GrantKind::kPrivate, "site-b"));
  EXPECT_FALSE(any.AllowsTunnelName(GrantKind::kPair, "not a name"));
  EXPECT_FALSE(any.AllowsTunnelName(GrantKind::kPair, ""));

  Grant prefix = MustParse("pair:site-*");
  EXPECT_TRUE(prefix.AllowsTunnelName(GrantKind::kPair, "site-b"));
  EXPECT_TRUE(prefix.AllowsTunnelName(GrantKind::kPair, "site-"));
  EXPECT_FALSE(prefix.AllowsTunnelName(GrantKind::kPair, "site"));
  EXPECT_FALSE(prefix.AllowsTunnelName(GrantKind::kPair, "office-a"));

  Grant exact = MustParse("connect:db");
  EXPECT_TRUE(exact.AllowsTunnelName(GrantKind::kConnect, "db"));
  EXPECT_FALSE(exact.AllowsTunnelName(GrantKind::kConnect, "DB"));
  EXPECT_FALSE(exact.AllowsTunnelName(GrantKind::kConnect, "db2"));
  // Registering and connecting are separate rights.
  EXPECT_FALSE(exact.AllowsTunnelName(GrantKind::kPrivate, "db"));
  EXPECT_FALSE(MustParse("private:db").AllowsTunnelName(GrantKind::kConnect, "db"));
  // Tunnel grants never allow a public registration of the same name.
  EXPECT_FALSE(MustParse("private:db").AllowsTcp("db", 0));
  EXPECT_FALSE(MustParse("tcp:db").AllowsTunnelName(GrantKind::kPrivate, "db"));
}

TEST(GrantTest, PortRanges) {
  Grant range = MustParse("tcp:2020-2030");
  EXPECT_TRUE(range.IsPortRange());
  EXPECT_EQ(range.port_low(), 2020);
  EXPECT_EQ(range.port_high(), 2030);
  Grant single = MustParse("tcp:2020");
  EXPECT_EQ(single.port_low(), 2020);
  EXPECT_EQ(single.port_high(), 2020);
  EXPECT_FALSE(MustParse("tcp:db").IsPortRange());
  EXPECT_TRUE(MustParse("tcp:1-65535").IsPortRange());
}

TEST(GrantTest, RejectsBadGrants) {
  for (std::string_view bad : {"",
                               "http",
                               "*.orang.com",
                               "ftp:x",
                               "HTTP:www.orang.com",
                               "http:",
                               "http:*",
                               "http:orang.com.",
                               "http:a.*.orang.com",
                               "http:foo_bar.com",
                               "tcp:",
                               "tcp:0",
                               "tcp:65536",
                               "tcp:2030-2020",
                               "tcp:0-10",
                               "tcp:2020-",
                               "tcp:-2020",
                               "tcp:1-2-3",
                               "tcp:+80",
                               "tcp:1db",
                               "tcp:d b",
                               "tcp:db*",
                               "udp:",
                               "pair:",
                               "pair:**",
                               "pair:1site",
                               "pair:*site",
                               "pair:si*te",
                               "private:d b",
                               "private:",
                               "connect:-db",
                               "connect:",
                               "Pair:site"}) {
    absl::StatusOr<Grant> grant = ParseGrant(bad);
    EXPECT_FALSE(grant.ok()) << "'" << bad << "' parsed";
    if (!grant.ok()) {
      EXPECT_EQ(grant.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(std::string(grant.status().message()), HasSubstr("invalid grant"));
    }
  }
}

TEST(GrantTest, HttpExact) {
  Grant grant = MustParse("http:www.orang.com");
  EXPECT_TRUE(grant.AllowsHttpName("www.orang.com"));
  EXPECT_TRUE(grant.AllowsHttpName("WWW.ORANG.COM"));
  EXPECT_FALSE(grant.AllowsHttpName("orang.com"));
  EXPECT_FALSE(grant.AllowsHttpName("a.www.orang.com"));
  EXPECT_FALSE(grant.AllowsHttpName("*.www.orang.com"));
  EXPECT_FALSE(grant.AllowsTcp("www.orang.com", 0));
}

TEST(GrantTest, HttpWildcard) {
  Grant grant = MustParse("http:*.orang.com");
  EXPECT_TRUE(grant.AllowsHttpName("www.orang.com"));
  EXPECT_TRUE(grant.AllowsHttpName("a.b.orang.com"));
  EXPECT_TRUE(grant.AllowsHttpName("*.orang.com"));
  EXPECT_TRUE(grant.AllowsHttpName("*.b.orang.com"));
  EXPECT_TRUE(grant.AllowsHttpName("*.ORANG.com"));
  EXPECT_FALSE(grant.AllowsHttpName("orang.com"));
  EXPECT_FALSE(grant.AllowsHttpName("evilorang.com"));
  EXPECT_FALSE(grant.AllowsHttpName("*.evilorang.com"));
  EXPECT_FALSE(grant.AllowsHttpName("*.com"));
  EXPECT_FALSE(grant.AllowsHttpName("orang.com.evil.net"));
  EXPECT_FALSE(grant.AllowsHttpName("a.*.orang.com"));
  EXPECT_FALSE(grant.AllowsHttpName(""));
}

TEST(GrantTest, OtherKindsAllowNoHttp) {
  EXPECT_FALSE(MustParse("tls:*.orang.com").AllowsHttpName("www.orang.com"));
  EXPECT_FALSE(MustParse("tcp:*").AllowsHttpName("www.orang.com"));
}

TEST(GrantTest, TcpPortRange) {
  Grant grant = MustParse("tcp:2020-2030");
  EXPECT_TRUE(grant.AllowsTcp("anything", 2020));
  EXPECT_TRUE(grant.AllowsTcp("anything", 2030));
  EXPECT_TRUE(grant.AllowsTcp("anything", 2025));
  EXPECT_FALSE(grant.AllowsTcp("anything", 2019));
  EXPECT_FALSE(grant.AllowsTcp("anything", 2031));
  EXPECT_TRUE(grant.AllowsTcp("anything", 0));  // the relay may allocate from the range
  EXPECT_FALSE(grant.AllowsHttpName("www.orang.com"));
}

TEST(GrantTest, TcpSinglePort) {
  Grant grant = MustParse("tcp:2020");
  EXPECT_TRUE(grant.AllowsTcp("db", 2020));
  EXPECT_FALSE(grant.AllowsTcp("db", 2021));
  EXPECT_TRUE(grant.AllowsTcp("db", 0));
}

TEST(GrantTest, TcpName) {
  Grant grant = MustParse("tcp:db");
  EXPECT_TRUE(grant.AllowsTcp("db", 0));
  EXPECT_TRUE(grant.AllowsTcp("db", 5432));
  EXPECT_FALSE(grant.AllowsTcp("db2", 0));
  EXPECT_FALSE(grant.AllowsTcp("DB", 0));  // service names are case-sensitive
  Grant any = MustParse("tcp:*");
  EXPECT_TRUE(any.AllowsTcp("db", 0));
  EXPECT_TRUE(any.AllowsTcp("cache", 6379));
}

TEST(GrantTest, UdpAllowsNoTcp) {
  EXPECT_FALSE(MustParse("udp:1-65535").AllowsTcp("db", 53));
  EXPECT_FALSE(MustParse("udp:*").AllowsTcp("db", 0));
}

// ---- Networks ------------------------------------------------------------------------------

sockaddr_in V4(const char* ip) {
  sockaddr_in address = {};
  address.sin_family = AF_INET;
  EXPECT_EQ(inet_pton(AF_INET, ip, &address.sin_addr), 1) << ip;
  return address;
}

sockaddr_in6 V6(const char* ip) {
  sockaddr_in6 address = {};
  address.sin6_family = AF_INET6;
  EXPECT_EQ(inet_pton(AF_INET6, ip, &address.sin6_addr), 1) << ip;
  return address;
}

NetworkList MustParseNetworks(const std::vector<std::string>& cidrs) {
  absl::StatusOr<NetworkList> list = NetworkList::Parse(cidrs);
  EXPECT_TRUE(list.ok()) << list.status();
  return list.ok() ? *list : NetworkList();
}

TEST(NetworkListTest, V4) {
  NetworkList list = MustParseNetworks({"127.0.0.0/8", "10.1.2.0/23", "192.168.1.7"});
  EXPECT_TRUE(list.Contains("127.0.0.1"));
  EXPECT_TRUE(list.Contains("127.255.255.255"));
  EXPECT_FALSE(list.Contains("128.0.0.1"));
  EXPECT_TRUE(list.Contains("10.1.2.5"));
  EXPECT_TRUE(list.Contains("10.1.3.255"));
  EXPECT_FALSE(list.Contains("10.1.4.0"));
  EXPECT_TRUE(list.Contains("192.168.1.7"));
  EXPECT_FALSE(list.Contains("192.168.1.8"));
  EXPECT_FALSE(list.Contains("::1"));
  EXPECT_FALSE(list.Contains("not-an-ip"));
  sockaddr_in inside = V4("127.1.2.3");
  sockaddr_in outside = V4("8.8.8.8");
  EXPECT_TRUE(list.Contains(reinterpret_cast<const sockaddr*>(&inside)));
  EXPECT_FALSE(list.Contains(reinterpret_cast<const sockaddr*>(&outside)));
}

TEST(NetworkListTest, V6) {
  NetworkList list = MustParseNetworks({"::1/128", "2001:db8::/32", "fe80::1"});
  EXPECT_TRUE(list.Contains("::1"));
  EXPECT_FALSE(list.Contains("::2"));
  EXPECT_TRUE(list.Contains("2001:db8:ffff::1"));
  EXPECT_FALSE(list.Contains("2001:db9::1"));
  EXPECT_TRUE(list.Contains("fe80::1"));
  EXPECT_FALSE(list.Contains("127.0.0.1"));
  sockaddr_in6 inside = V6("2001:db8::42");
  sockaddr_in6 outside = V6("2001:db7::42");
  EXPECT_TRUE(list.Contains(reinterpret_cast<const sockaddr*>(&inside)));
  EXPECT_FALSE(list.Contains(reinterpret_cast<const sockaddr*>(&outside)));
}

TEST(NetworkListTest, MappedV6MatchesV4) {
  NetworkList list = MustParseNetworks({"127.0.0.0/8"});
  EXPECT_TRUE(list.Contains("::ffff:127.0.0.1"));
  EXPECT_FALSE(list.Contains("::ffff:128.0.0.1"));
  sockaddr_in6 mapped = V6("::ffff:127.0.0.1");
  EXPECT_TRUE(list.Contains(reinterpret_cast<const sockaddr*>(&mapped)));
  // Not mapped: ::127.0.0.1 is the deprecated compatible form, a different address.
  EXPECT_FALSE(list.Contains("::127.0.0.1"));
}

TEST(NetworkListTest, MappedNetworkMatchesBothForms) {
  NetworkList list = MustParseNetworks({"::ffff:10.0.0.0/104"});
  EXPECT_EQ(list.ToStrings(), std::vector<std::string>{"10.0.0.0/8"});
  EXPECT_TRUE(list.Contains("10.2.3.4"));
  EXPECT_TRUE(list.Contains("::ffff:10.2.3.4"));
  EXPECT_FALSE(list.Contains("11.0.0.1"));
}

TEST(NetworkListTest, ZeroPrefixMatchesFamily) {
  NetworkList v4_any = MustParseNetworks({"0.0.0.0/0"});
  EXPECT_TRUE(v4_any.Contains("1.2.3.4"));
  EXPECT_TRUE(v4_any.Contains("::ffff:1.2.3.4"));
  EXPECT_FALSE(v4_any.Contains("::1"));
  NetworkList v6_any = MustParseNetworks({"::/0"});
  EXPECT_TRUE(v6_any.Contains("2001:db8::1"));
  EXPECT_FALSE(v6_any.Contains("1.2.3.4"));
}

TEST(NetworkListTest, EmptyContainsNothing) {
  NetworkList list;
  EXPECT_TRUE(list.empty());
  EXPECT_FALSE(list.Contains("127.0.0.1"));
  sockaddr_in6 address = V6("::1");
  EXPECT_FALSE(list.Contains(reinterpret_cast<const sockaddr*>(&address)));
  EXPECT_FALSE(list.Contains(static_cast<const sockaddr*>(nullptr)));
}

TEST(NetworkListTest, OtherFamiliesNotContained) {
  NetworkList list = MustParseNetworks({"0.0.0.0/0", "::/0"});
  sockaddr unix_address = {};
  unix_address.sa_family = AF_UNIX;
  EXPECT_FALSE(list.Contains(&unix_address));
}

TEST(NetworkListTest, RejectsBadNetworks) {
  for (std::string_view bad :
       {"", "/8", "127.0.0.0/", "127.0.0.0/33", "::/129", "127.0.0.1/8", "10.0.0.0/-1",
        "10.0.0.0/ 8", "10.0.0/8", "localhost", "::1/64x", "[::1]/128", "10.0.0.0/08x"}) {
    NetworkList list;
    absl::Status status = list.Add(bad);
    EXPECT_FALSE(status.ok()) << "'" << bad << "' accepted";
    EXPECT_THAT(std::string(status.message()), HasSubstr("invalid network"));
  }
}

TEST(NetworkListTest, HostBitsMessage) {
  NetworkList list;
  absl::Status status = list.Add("10.1.0.0/8");
  EXPECT_EQ(Message(status),
            "invalid network '10.1.0.0/8': address has bits set beyond the /8 "
            "prefix");
}

}  // namespace
}  // namespace rdv
