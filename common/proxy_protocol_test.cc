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

}  // namespace
}  // namespace rdv
