#include "common/proxy_protocol.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <array>
#include <cstring>
#include <optional>
#include <vector>

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

namespace {

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr size_t kV1MaxLine = 107;

uint16_t ReadPort(std::string_view bytes, size_t at) {
  return static_cast<uint16_t>((static_cast<unsigned char>(bytes[at]) << 8) |
                               static_cast<unsigned char>(bytes[at + 1]));
}

std::string FormatEndpoint(bool v6, const void* address, uint16_t port) {
  char buffer[INET6_ADDRSTRLEN] = {0};
  inet_ntop(v6 ? AF_INET6 : AF_INET, address, buffer, sizeof(buffer));
  return v6 ? StrCat("[", buffer, "]:", port) : StrCat(buffer, ":", port);
}

// A decimal port without sign or leading zeros, as the spec writes it.
std::optional<uint16_t> ParsePort(std::string_view text) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return std::nullopt;
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) return std::nullopt;
  return static_cast<uint16_t>(value);
}

absl::StatusOr<std::optional<ProxyHeader>> ParseV1(std::string_view data) {
  size_t end = data.find("\r\n");
  if (end == std::string_view::npos) {
    if (data.size() >= kV1MaxLine) return absl::InvalidArgumentError("PROXY v1: line too long");
    return std::nullopt;
  }
  if (end + 2 > kV1MaxLine) return absl::InvalidArgumentError("PROXY v1: line too long");
  std::string_view line = data.substr(kV1Prefix.size(), end - kV1Prefix.size());
  ProxyHeader header;
  header.length = end + 2;
  if (line.starts_with("UNKNOWN")) {  // anything may follow UNKNOWN
    header.local = true;
    return header;
  }
  std::vector<std::string_view> fields;
  for (size_t start = 0;;) {
    size_t space = line.find(' ', start);
    fields.push_back(line.substr(start, space == std::string_view::npos ? space : space - start));
    if (space == std::string_view::npos) break;
    start = space + 1;
  }
  if (fields.size() != 5) {
    return absl::InvalidArgumentError(
        "PROXY v1: expected 'TCP4|TCP6 <source> <destination> <sport> <dport>'");
  }
  bool v6;
  if (fields[0] == "TCP4") {
    v6 = false;
  } else if (fields[0] == "TCP6") {
    v6 = true;
  } else {
    return absl::InvalidArgumentError("PROXY v1: protocol must be TCP4, TCP6 or UNKNOWN");
  }
  unsigned char source[16];
  unsigned char destination[16];
  int family = v6 ? AF_INET6 : AF_INET;
  if (inet_pton(family, std::string(fields[1]).c_str(), source) != 1) {
    return absl::InvalidArgumentError("PROXY v1: bad source address");
  }
  if (inet_pton(family, std::string(fields[2]).c_str(), destination) != 1) {
    return absl::InvalidArgumentError("PROXY v1: bad destination address");
  }
  std::optional<uint16_t> source_port = ParsePort(fields[3]);
  if (!source_port) return absl::InvalidArgumentError("PROXY v1: bad source port");
  std::optional<uint16_t> destination_port = ParsePort(fields[4]);
  if (!destination_port) return absl::InvalidArgumentError("PROXY v1: bad destination port");
  header.source = FormatEndpoint(v6, source, *source_port);
  header.destination = FormatEndpoint(v6, destination, *destination_port);
  return header;
}

absl::StatusOr<std::optional<ProxyHeader>> ParseV2(std::string_view data) {
  constexpr size_t kFixed = 16;
  if (data.size() < kFixed) return std::nullopt;
  unsigned char version_command = static_cast<unsigned char>(data[12]);
  if ((version_command >> 4) != 2) return absl::InvalidArgumentError("PROXY v2: bad version");
  unsigned char command = version_command & 0x0f;
  if (command > 1) return absl::InvalidArgumentError("PROXY v2: bad command");
  size_t length = ReadPort(data, 14);
  if (kFixed + length > kMaxProxyHeaderBytes) {
    return absl::InvalidArgumentError("PROXY v2: header too long");
  }
  if (data.size() < kFixed + length) return std::nullopt;
  ProxyHeader header;
  header.length = kFixed + length;
  unsigned char family = static_cast<unsigned char>(data[13]);
  if (command == 0) {  // LOCAL: whatever follows is ignored
    header.local = true;
    return header;
  }
  std::string_view block = data.substr(kFixed, length);
  switch (family) {
    case 0x11:  // TCP over IPv4
      if (block.size() < 12) return absl::InvalidArgumentError("PROXY v2: short IPv4 block");
      header.source = FormatEndpoint(false, block.data(), ReadPort(block, 8));
      header.destination = FormatEndpoint(false, block.data() + 4, ReadPort(block, 10));
      return header;
    case 0x21:  // TCP over IPv6
      if (block.size() < 36) return absl::InvalidArgumentError("PROXY v2: short IPv6 block");
      header.source = FormatEndpoint(true, block.data(), ReadPort(block, 32));
      header.destination = FormatEndpoint(true, block.data() + 16, ReadPort(block, 34));
      return header;
    default:  // unspecified, UDP or unix: nothing we can use as a client address
      if ((family >> 4) > 3 || (family & 0x0f) > 2) {
        return absl::InvalidArgumentError("PROXY v2: bad address family");
      }
      header.local = true;
      return header;
  }
}

}  // namespace

absl::StatusOr<std::optional<ProxyHeader>> ParseProxyHeader(std::string_view data) {
  std::string_view v2_signature(reinterpret_cast<const char*>(kV2Signature.data()),
                                kV2Signature.size());
  size_t v1_check = std::min(data.size(), kV1Prefix.size());
  size_t v2_check = std::min(data.size(), v2_signature.size());
  if (data.substr(0, v1_check) == kV1Prefix.substr(0, v1_check)) {
    if (data.size() < kV1Prefix.size()) return std::nullopt;
    return ParseV1(data);
  }
  if (data.substr(0, v2_check) == v2_signature.substr(0, v2_check)) return ParseV2(data);
  return absl::InvalidArgumentError("no PROXY protocol header");
}

}  // namespace rdv
