#include "common/proxy_protocol.h"

#include <gtest/gtest.h>

namespace rdv {
namespace {

std::string Hex(const std::string& bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

TEST(ProxyProtocolTest, Version1) {
  EXPECT_EQ(EncodeProxyHeader(ProxyProtocolVersion::kV1, "192.0.2.7:50000", "198.51.100.1:25"),
            "PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\n");
  EXPECT_EQ(EncodeProxyHeader(ProxyProtocolVersion::kV1, "[2001:db8::7]:443", "[2001:db8::1]:8443"),
            "PROXY TCP6 2001:db8::7 2001:db8::1 443 8443\r\n");
  // An IPv4 client of an IPv6 listener: both sides as IPv6 (frp #1410 sent TCP6 with IPv4).
  EXPECT_EQ(EncodeProxyHeader(ProxyProtocolVersion::kV1, "192.0.2.7:1", "[::1]:2"),
            "PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n");
  EXPECT_EQ(EncodeProxyHeader(ProxyProtocolVersion::kV1, "", "198.51.100.1:25"),
            "PROXY UNKNOWN\r\n");
}

TEST(ProxyProtocolTest, Version2) {
  std::string v4 =
      EncodeProxyHeader(ProxyProtocolVersion::kV2, "192.0.2.7:50000", "198.51.100.1:25");
  EXPECT_EQ(Hex(v4),
            "0d0a0d0a000d0a515549540a"  // signature
            "21"                        // v2, PROXY
            "11"                        // TCP over IPv4
            "000c"                      // 12 address bytes
            "c0000207"                  // 192.0.2.7
            "c6336401"                  // 198.51.100.1
            "c350"                      // 50000
            "0019");                    // 25
  std::string v6 = EncodeProxyHeader(ProxyProtocolVersion::kV2, "[::1]:1", "[::2]:2");
  ASSERT_EQ(v6.size(), 16u + 36u);
  EXPECT_EQ(Hex(v6.substr(12, 4)), "21210024");
  EXPECT_EQ(Hex(EncodeProxyHeader(ProxyProtocolVersion::kV2, "bogus", "[::1]:2")),
            "0d0a0d0a000d0a515549540a"
            "20"
            "00"
            "0000");
}

std::optional<ProxyHeader> Parsed(const std::string& bytes) {
  absl::StatusOr<std::optional<ProxyHeader>> header = ParseProxyHeader(bytes);
  EXPECT_TRUE(header.ok()) << header.status();
  return header.ok() ? *header : std::nullopt;
}

std::string ParseError(const std::string& bytes) {
  absl::StatusOr<std::optional<ProxyHeader>> header = ParseProxyHeader(bytes);
  return header.ok() ? "ok" : std::string(header.status().message());
}

TEST(ProxyProtocolParseTest, RoundTripsWhatWeEncode) {
  const std::pair<const char*, const char*> kCases[] = {
      {"192.0.2.7:50000", "198.51.100.1:25"},
      {"[2001:db8::7]:443", "[2001:db8::1]:8443"},
      {"[::ffff:192.0.2.7]:1", "[::1]:2"},
  };
  for (ProxyProtocolVersion version : {ProxyProtocolVersion::kV1, ProxyProtocolVersion::kV2}) {
    for (auto [source, destination] : kCases) {
      std::string bytes = EncodeProxyHeader(version, source, destination);
      std::optional<ProxyHeader> header = Parsed(bytes + "GET / HTTP/1.1\r\n");
      ASSERT_TRUE(header.has_value()) << source;
      EXPECT_FALSE(header->local);
      EXPECT_EQ(header->source, source);
      EXPECT_EQ(header->destination, destination);
      EXPECT_EQ(header->length, bytes.size());
      // Every proper prefix asks for more bytes.
      for (size_t cut = 0; cut < bytes.size(); ++cut) {
        absl::StatusOr<std::optional<ProxyHeader>> partial = ParseProxyHeader(bytes.substr(0, cut));
        ASSERT_TRUE(partial.ok()) << cut << ": " << partial.status();
        EXPECT_FALSE(partial->has_value()) << cut;
      }
    }
  }
}

TEST(ProxyProtocolParseTest, LocalAndUnknown) {
  for (ProxyProtocolVersion version : {ProxyProtocolVersion::kV1, ProxyProtocolVersion::kV2}) {
    std::string bytes = EncodeProxyHeader(version, "", "");
    std::optional<ProxyHeader> header = Parsed(bytes);
    ASSERT_TRUE(header.has_value());
    EXPECT_TRUE(header->local);
    EXPECT_EQ(header->length, bytes.size());
  }
  EXPECT_TRUE(Parsed("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n")->local);
}

TEST(ProxyProtocolParseTest, RefusesMalformedHeaders) {
  EXPECT_EQ(ParseError("GET / HTTP/1.1\r\n"), "no PROXY protocol header");
  EXPECT_EQ(ParseError("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
            "PROXY v1: expected 'TCP4|TCP6 <source> <destination> <sport> <dport>'");
  EXPECT_EQ(ParseError("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            "PROXY v1: protocol must be TCP4, TCP6 or UNKNOWN");
  EXPECT_EQ(ParseError("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), "PROXY v1: bad source address");
  EXPECT_EQ(ParseError("PROXY TCP4 ::1 5.6.7.8 1 2\r\n"), "PROXY v1: bad source address");
  EXPECT_EQ(ParseError("PROXY TCP6 ::1 5.6.7.8 1 2\r\n"), "PROXY v1: bad destination address");
  EXPECT_EQ(ParseError("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), "PROXY v1: bad source port");
  EXPECT_EQ(ParseError("PROXY TCP4 1.2.3.4 5.6.7.8 1 02\r\n"), "PROXY v1: bad destination port");
  EXPECT_EQ(ParseError("PROXY TCP4 " + std::string(120, '1')), "PROXY v1: line too long");

  std::string v2 = EncodeProxyHeader(ProxyProtocolVersion::kV2, "192.0.2.7:1", "192.0.2.8:2");
  std::string bad_version = v2;
  bad_version[12] = 0x11;
  EXPECT_EQ(ParseError(bad_version), "PROXY v2: bad version");
  std::string bad_command = v2;
  bad_command[12] = 0x22;
  EXPECT_EQ(ParseError(bad_command), "PROXY v2: bad command");
  std::string short_block = v2.substr(0, 14) + std::string("\x00\x04", 2) + "abcd";
  EXPECT_EQ(ParseError(short_block), "PROXY v2: short IPv4 block");
  std::string too_long = v2.substr(0, 14) + std::string("\xff\xff", 2);
  EXPECT_EQ(ParseError(too_long), "PROXY v2: header too long");
}

}  // namespace
}  // namespace rdv
