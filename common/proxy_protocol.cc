#include "common/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <array>
#include <cstring>
#include <optional>

#include "common/str_cat.h"
#include "common/yaml_config.h"

namespace rdv {
namespace {

constexpr std::array<unsigned char, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

struct Endpoint {
  bool v6 = false;
  std::array<unsigned char, 16> address{};  // v4 in the first 4 bytes
  uint16_t port = 0;
};

std::optional<Endpoint> Parse(std::string_view text) {
  absl::StatusOr<HostPort> host_port = ParseHostPort(text);
  if (!host_port.ok()) return std::nullopt;
  Endpoint endpoint;
  endpoint.port = host_port->port;
  if (inet_pton(AF_INET, host_port->host.c_str(), endpoint.address.data()) == 1) {
    return endpoint;
  }
  if (inet_pton(AF_INET6, host_port->host.c_str(), endpoint.address.data()) == 1) {
    endpoint.v6 = true;
    return endpoint;
  }
  return std::nullopt;
}

Endpoint AsV6(Endpoint endpoint) {
  if (endpoint.v6) return endpoint;
  std::array<unsigned char, 16> mapped{};
  mapped[10] = mapped[11] = 0xff;
  std::memcpy(mapped.data() + 12, endpoint.address.data(), 4);
  endpoint.address = mapped;
  endpoint.v6 = true;
  return endpoint;
}

std::string Text(const Endpoint& endpoint) {
  char buffer[INET6_ADDRSTRLEN] = {0};
  inet_ntop(endpoint.v6 ? AF_INET6 : AF_INET, endpoint.address.data(), buffer, sizeof(buffer));
  return buffer;
}

void AppendPort(std::string& out, uint16_t port) {
  out.push_back(static_cast<char>(port >> 8));
  out.push_back(static_cast<char>(port & 0xff));
}

}  // namespace

std::string EncodeProxyHeader(ProxyProtocolVersion version, std::string_view source,
                              std::string_view destination) {
  std::optional<Endpoint> src = Parse(source);
  std::optional<Endpoint> dst = Parse(destination);
  if (src && dst && src->v6 != dst->v6) {
    src = AsV6(*src);
    dst = AsV6(*dst);
  }
  if (version == ProxyProtocolVersion::kV1) {
    if (!src || !dst) return "PROXY UNKNOWN\r\n";
    return StrCat("PROXY ", src->v6 ? "TCP6 " : "TCP4 ", Text(*src), " ", Text(*dst), " ",
                  src->port, " ", dst->port, "\r\n");
  }
  std::string out(reinterpret_cast<const char*>(kV2Signature.data()), kV2Signature.size());
  if (!src || !dst) {
    out.push_back(0x20);  // version 2, LOCAL
    out.push_back(0x00);  // AF_UNSPEC
    AppendPort(out, 0);   // no address block
    return out;
  }
  size_t address_length = src->v6 ? 16 : 4;
  out.push_back(0x21);                   // version 2, PROXY
  out.push_back(src->v6 ? 0x21 : 0x11);  // TCP over IPv6 / IPv4
  AppendPort(out, static_cast<uint16_t>(address_length * 2 + 4));
  out.append(reinterpret_cast<const char*>(src->address.data()), address_length);
  out.append(reinterpret_cast<const char*>(dst->address.data()), address_length);
  AppendPort(out, src->port);
  AppendPort(out, dst->port);
  return out;
}

}  // namespace rdv
