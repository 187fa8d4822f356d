#include "common/socks5.h"

#include <arpa/inet.h>

#include <algorithm>

#include "absl/status/status.h"

namespace rdv::socks5 {
namespace {

uint8_t Byte(std::string_view input, size_t i) { return static_cast<uint8_t>(input[i]); }

}  // namespace

absl::StatusOr<size_t> ParseGreeting(std::string_view input, Greeting& out) {
  if (input.empty()) return 0;
  if (Byte(input, 0) != kVersion) {
    return absl::InvalidArgumentError("not a SOCKS5 greeting (version byte is not 5)");
  }
  if (input.size() < 2) return 0;
  size_t count = Byte(input, 1);
  if (count == 0) return absl::InvalidArgumentError("SOCKS5 greeting offers no methods");
  if (input.size() < 2 + count) return 0;
  out.methods.assign(input.begin() + 2, input.begin() + 2 + static_cast<ptrdiff_t>(count));
  return 2 + count;
}

absl::StatusOr<size_t> ParseCredentials(std::string_view input, Credentials& out) {
  if (input.empty()) return 0;
  if (Byte(input, 0) != kAuthVersion) {
    return absl::InvalidArgumentError("not an RFC 1929 request (version byte is not 1)");
  }
  if (input.size() < 2) return 0;
  size_t user_length = Byte(input, 1);
  if (input.size() < 3 + user_length) return 0;
  size_t password_length = Byte(input, 2 + user_length);
  size_t total = 3 + user_length + password_length;
  if (input.size() < total) return 0;
  out.username.assign(input.substr(2, user_length));
  out.password.assign(input.substr(3 + user_length, password_length));
  return total;
}

absl::StatusOr<size_t> ParseRequest(std::string_view input, Request& out) {
  if (input.empty()) return 0;
  if (Byte(input, 0) != kVersion) {
    return absl::InvalidArgumentError("not a SOCKS5 request (version byte is not 5)");
  }
  if (input.size() >= 3 && Byte(input, 2) != 0) {
    return absl::InvalidArgumentError("SOCKS5 request reserved byte is not 0");
  }
  if (input.size() < 4) return 0;
  size_t address_length = 0;
  size_t address_offset = 4;
  uint8_t type = Byte(input, 3);
  switch (type) {
    case static_cast<uint8_t>(AddressType::kIpv4):
      address_length = 4;
      break;
    case static_cast<uint8_t>(AddressType::kIpv6):
      address_length = 16;
      break;
    case static_cast<uint8_t>(AddressType::kDomain):
      if (input.size() < 5) return 0;
      address_length = Byte(input, 4);
      address_offset = 5;
      if (address_length == 0) {
        return absl::InvalidArgumentError("SOCKS5 request has an empty domain name");
      }
      break;
    default:
      return absl::UnimplementedError("SOCKS5 request has an unknown address type");
  }
  size_t total = address_offset + address_length + 2;
  if (input.size() < total) return 0;
  out.command = Byte(input, 1);
  out.address_type = static_cast<AddressType>(type);
  std::string_view address = input.substr(address_offset, address_length);
  if (out.address_type == AddressType::kDomain) {
    out.host.assign(address);
  } else {
    char text[INET6_ADDRSTRLEN] = {};
    int family = out.address_type == AddressType::kIpv4 ? AF_INET : AF_INET6;
    inet_ntop(family, address.data(), text, sizeof(text));
    out.host = text;
  }
  out.port = static_cast<uint16_t>(Byte(input, total - 2) << 8 | Byte(input, total - 1));
  return total;
}

uint8_t ChooseMethod(const Greeting& greeting, bool require_credentials) {
  uint8_t wanted = require_credentials ? kMethodUserPass : kMethodNoAuth;
  bool offered =
      std::find(greeting.methods.begin(), greeting.methods.end(), wanted) != greeting.methods.end();
  return offered ? wanted : kMethodNoneAcceptable;
}

std::string EncodeMethodSelection(uint8_t method) {
  return std::string{static_cast<char>(kVersion), static_cast<char>(method)};
}

std::string EncodeAuthStatus(bool success) {
  return std::string{static_cast<char>(kAuthVersion), static_cast<char>(success ? 0 : 1)};
}

std::string EncodeReply(Reply reply) {
  std::string out = {static_cast<char>(kVersion), static_cast<char>(reply), 0,
                     static_cast<char>(AddressType::kIpv4)};
  out.append(6, '\0');  // BND.ADDR 0.0.0.0, BND.PORT 0
  return out;
}

std::string EncodeGreeting(const std::vector<uint8_t>& methods) {
  std::string out = {static_cast<char>(kVersion), static_cast<char>(methods.size())};
  for (uint8_t method : methods) out.push_back(static_cast<char>(method));
  return out;
}

std::string EncodeCredentials(std::string_view username, std::string_view password) {
  std::string out = {static_cast<char>(kAuthVersion), static_cast<char>(username.size())};
  out.append(username);
  out.push_back(static_cast<char>(password.size()));
  out.append(password);
  return out;
}

absl::StatusOr<std::string> EncodeRequest(uint8_t command, AddressType type, std::string_view host,
                                          uint16_t port) {
  std::string out = {static_cast<char>(kVersion), static_cast<char>(command), 0,
                     static_cast<char>(type)};
  std::string text(host);
  if (type == AddressType::kDomain) {
    if (host.empty() || host.size() > 255) {
      return absl::InvalidArgumentError("a SOCKS5 domain name is 1..255 bytes");
    }
    out.push_back(static_cast<char>(host.size()));
    out.append(host);
  } else {
    unsigned char binary[16];
    int family = type == AddressType::kIpv4 ? AF_INET : AF_INET6;
    if (inet_pton(family, text.c_str(), binary) != 1) {
      return absl::InvalidArgumentError("not an address literal of the given type");
    }
    out.append(reinterpret_cast<const char*>(binary), type == AddressType::kIpv4 ? 4 : 16);
  }
  out.push_back(static_cast<char>(port >> 8));
  out.push_back(static_cast<char>(port & 0xFF));
  return out;
}

}  // namespace rdv::socks5
