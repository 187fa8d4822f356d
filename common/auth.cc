#include "common/auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/str_cat.h"

namespace rdv {

// ---- Link proof ----------------------------------------------------------------------------

std::string ComputeAuthMac(std::string_view secret, std::string_view nonce,
                           std::string_view channel_binding) {
  std::string message;
  message.reserve(kAuthMacLabel.size() + nonce.size() + channel_binding.size());
  message.append(kAuthMacLabel);
  message.append(nonce);
  message.append(channel_binding);

  // HMAC() treats a null key as "no key given" and fails; an empty key must still be a key.
  static const unsigned char kEmptyKey[1] = {0};
  const void* key = secret.empty() ? static_cast<const void*>(kEmptyKey) : secret.data();

  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_length = 0;
  const unsigned char* result = HMAC(EVP_sha256(), key, static_cast<int>(secret.size()),
                                     reinterpret_cast<const unsigned char*>(message.data()),
                                     message.size(), mac, &mac_length);
  // Only allocation failure inside OpenSSL can get here; a MAC that cannot be computed must
  // never verify, and an empty string never equals a 32-byte MAC.
  if (result == nullptr || mac_length != kAuthMacSize) return std::string();
  return std::string(reinterpret_cast<const char*>(mac), mac_length);
}

bool VerifyAuthMac(std::string_view secret, std::string_view nonce,
                   std::string_view channel_binding, std::string_view mac) {
  if (mac.size() != kAuthMacSize) return false;
  std::string expected = ComputeAuthMac(secret, nonce, channel_binding);
  if (expected.size() != kAuthMacSize) return false;
  return CRYPTO_memcmp(expected.data(), mac.data(), kAuthMacSize) == 0;
}

// ---- Host names ----------------------------------------------------------------------------

namespace {

std::string ToLower(std::string_view text) {
  std::string lower(text);
  for (char& c : lower) c = absl::ascii_tolower(static_cast<unsigned char>(c));
  return lower;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(a[i])) !=
        absl::ascii_tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

bool IsAsciiAlnum(char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)); }

bool IsValidLabel(std::string_view label) {
  if (label.empty() || label.size() > 63) return false;
  if (label.front() == '-' || label.back() == '-') return false;
  for (char c : label) {
    if (!IsAsciiAlnum(c) && c != '-') return false;
  }
  return true;
}

bool IsAllDigits(std::string_view text) {
  if (text.empty()) return false;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// Strictly decimal (no sign, no spaces), 1..5 digits, within [0, 65535].
bool ParsePort(std::string_view text, uint16_t* port) {
  if (!IsAllDigits(text) || text.size() > 5) return false;
  uint32_t value = 0;
  for (char c : text) value = value * 10 + static_cast<uint32_t>(c - '0');
  if (value > 65535) return false;
  *port = static_cast<uint16_t>(value);
  return true;
}

constexpr std::string_view kWildcardPrefix = "*.";

}  // namespace

bool IsValidHostName(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  std::string_view last_label;
  size_t start = 0;
  while (true) {
    size_t dot = name.find('.', start);
    std::string_view label =
        name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (!IsValidLabel(label)) return false;
    last_label = label;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return !IsAllDigits(last_label);
}

bool IsValidHostPattern(std::string_view pattern) {
  if (pattern.starts_with(kWildcardPrefix)) {
    return IsValidHostName(pattern.substr(kWildcardPrefix.size()));
  }
  return IsValidHostName(pattern);
}

bool IsValidServiceName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  if (!absl::ascii_isalpha(static_cast<unsigned char>(name.front()))) return false;
  for (char c : name) {
    if (!IsAsciiAlnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

std::string NormalizeHost(std::string_view host_header) {
  std::string_view host;
  std::string_view port;
  bool has_port = false;
  if (host_header.starts_with("[")) {
    size_t close = host_header.find(']');
    if (close == std::string_view::npos) return std::string();
    host = host_header.substr(1, close - 1);
    std::string_view rest = host_header.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return std::string();
      has_port = true;
      port = rest.substr(1);
    }
    if (host.empty()) return std::string();
  } else {
    size_t colon = host_header.find(':');
    if (colon != std::string_view::npos) {
      // A second colon means an unbracketed IPv6 literal, which Host must not carry.
      if (host_header.find(':', colon + 1) != std::string_view::npos) return std::string();
      has_port = true;
      port = host_header.substr(colon + 1);
    }
    host = host_header.substr(0, colon);
    if (host.ends_with(".")) host.remove_suffix(1);
  }
  // RFC 7230 allows an empty port after the colon.
  if (has_port && !port.empty() && !IsAllDigits(port)) return std::string();
  return ToLower(host);
}

bool WildcardMatches(std::string_view pattern, std::string_view host) {
  if (pattern.starts_with(kWildcardPrefix)) {
    // Keep the dot: "*.orang.com" needs ".orang.com" as a suffix, so "evilorang.com" fails.
    std::string_view suffix = pattern.substr(1);
    return host.size() > suffix.size() &&
           EqualsIgnoreCase(host.substr(host.size() - suffix.size()), suffix);
  }
  return EqualsIgnoreCase(pattern, host);
}

// ---- Grants --------------------------------------------------------------------------------

std::string_view GrantKindName(GrantKind kind) {
  switch (kind) {
    case GrantKind::kHttp:
      return "http";
    case GrantKind::kTcp:
      return "tcp";
    case GrantKind::kTls:
      return "tls";
    case GrantKind::kSmtp:
      return "smtp";
    case GrantKind::kUdp:
      return "udp";
    case GrantKind::kPair:
      return "pair";
    case GrantKind::kPrivate:
      return "private";
    case GrantKind::kConnect:
      return "connect";
  }
  return "unknown";
}

absl::StatusOr<Grant> ParseGrant(std::string_view text) {
  size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid grant '", AbslView(text), "': expected kind:pattern, e.g. http:*.example.com"));
  }
  std::string_view kind_text = text.substr(0, colon);
  std::string_view pattern = text.substr(colon + 1);
  Grant grant;
  if (kind_text == "http") {
    grant.kind_ = GrantKind::kHttp;
  } else if (kind_text == "tcp") {
    grant.kind_ = GrantKind::kTcp;
  } else if (kind_text == "tls") {
    grant.kind_ = GrantKind::kTls;
  } else if (kind_text == "smtp") {
    grant.kind_ = GrantKind::kSmtp;
  } else if (kind_text == "udp") {
    grant.kind_ = GrantKind::kUdp;
  } else if (kind_text == "pair") {
    grant.kind_ = GrantKind::kPair;
  } else if (kind_text == "private") {
    grant.kind_ = GrantKind::kPrivate;
  } else if (kind_text == "connect") {
    grant.kind_ = GrantKind::kConnect;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid grant '", AbslView(text), "': unknown kind '", AbslView(kind_text),
                     "' (http, tcp, tls, smtp, udp, pair, private, connect)"));
  }

  switch (grant.kind_) {
    case GrantKind::kHttp:
    case GrantKind::kTls:
    case GrantKind::kSmtp: {
      std::string lower = ToLower(pattern);
      if (!IsValidHostPattern(lower)) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid grant '", AbslView(text),
                         "': expected a host name or *.suffix, e.g. www.example.com or "
                         "*.example.com"));
      }
      grant.pattern_ = std::move(lower);
      return grant;
    }
    case GrantKind::kTcp:
    case GrantKind::kUdp: {
      grant.pattern_ = std::string(pattern);
      if (pattern == "*" || IsValidServiceName(pattern)) return grant;
      uint16_t low = 0;
      uint16_t high = 0;
      size_t dash = pattern.find('-');
      bool parsed;
      if (dash == std::string_view::npos) {
        parsed = ParsePort(pattern, &low);
        high = low;
      } else {
        parsed =
            ParsePort(pattern.substr(0, dash), &low) && ParsePort(pattern.substr(dash + 1), &high);
      }
      if (!parsed) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid grant '", AbslView(text),
                         "': expected a port (2020), a port range (2020-2030), a service name "
                         "or *"));
      }
      if (low == 0 || low > high) {
        return absl::InvalidArgumentError(
            absl::StrCat("invalid grant '", AbslView(text),
                         "': port range must be within 1-65535 and low <= high"));
      }
      grant.port_low_ = low;
      grant.port_high_ = high;
      return grant;
    }
    case GrantKind::kPair:
    case GrantKind::kPrivate:
    case GrantKind::kConnect: {
      // "*", a service name, or a service-name prefix followed by "*" ("site-*").
      std::string_view name = pattern;
      if (name.ends_with('*')) name.remove_suffix(1);
      if (pattern != "*" && !IsValidServiceName(name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "invalid grant '", AbslView(text),
            "': expected a name (a letter, then letters, digits, '.', '_', '-'), a name "
            "prefix followed by * (site-*), or *"));
      }
      grant.pattern_ = std::string(pattern);
      return grant;
    }
  }
  return absl::InternalError("unreachable grant kind");
}

bool Grant::AllowsHostName(GrantKind kind, std::string_view name) const {
  if (kind_ != kind) return false;
  std::string lower = ToLower(name);
  if (!IsValidHostPattern(lower)) return false;
  if (!pattern_.starts_with(kWildcardPrefix)) return lower == pattern_;
  // "*.orang.com" covers every name with a non-empty prefix before ".orang.com", which includes
  // the wildcards "*.orang.com" and "*.x.orang.com" (their every match is also covered).
  return WildcardMatches(pattern_, lower);
}

bool Grant::AllowsPort(GrantKind kind, std::string_view service_name, uint16_t port) const {
  if (kind_ != kind) return false;
  if (IsPortRange()) {
    return port == 0 || (port >= port_low_ && port <= port_high_);
  }
  return pattern_ == "*" || pattern_ == service_name;
}

bool Grant::AllowsTunnelName(GrantKind kind, std::string_view name) const {
  if (kind_ != kind || !IsValidServiceName(name)) return false;
  if (pattern_.ends_with('*')) {
    return name.starts_with(std::string_view(pattern_).substr(0, pattern_.size() - 1));
  }
  return name == pattern_;
}

std::string Grant::ToString() const {
  return absl::StrCat(AbslView(GrantKindName(kind_)), ":", pattern_);
}

// ---- Source networks -----------------------------------------------------------------------

namespace {

constexpr uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool IsV4Mapped(const uint8_t* v6) { return std::memcmp(v6, kMappedPrefix, 12) == 0; }

bool PrefixEquals(const uint8_t* a, const uint8_t* b, int prefix_length) {
  int full_bytes = prefix_length / 8;
  if (std::memcmp(a, b, full_bytes) != 0) return false;
  int rest = prefix_length % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full_bytes] & mask) == (b[full_bytes] & mask);
}

bool HasHostBits(const uint8_t* address, int size_bytes, int prefix_length) {
  for (int bit = prefix_length; bit < size_bytes * 8; ++bit) {
    if (address[bit / 8] & (0x80 >> (bit % 8))) return true;
  }
  return false;
}

}  // namespace

absl::Status NetworkList::Add(std::string_view cidr) {
  std::string_view address_text = cidr;
  std::string_view length_text;
  size_t slash = cidr.find('/');
  if (slash != std::string_view::npos) {
    address_text = cidr.substr(0, slash);
    length_text = cidr.substr(slash + 1);
  }
  std::string address_string(address_text);
  Network network;
  int max_length = 0;
  if (inet_pton(AF_INET, address_string.c_str(), network.address.data()) == 1) {
    network.v4 = true;
    max_length = 32;
  } else if (inet_pton(AF_INET6, address_string.c_str(), network.address.data()) == 1) {
    max_length = 128;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid network '", AbslView(cidr),
                     "': expected an address or CIDR, e.g. 10.0.0.0/8 or ::1/128"));
  }
  network.prefix_length = max_length;
  if (slash != std::string_view::npos) {
    int length = 0;
    if (!IsAllDigits(length_text) || length_text.size() > 3 ||
        !absl::SimpleAtoi(AbslView(length_text), &length) || length > max_length) {
      return absl::InvalidArgumentError(absl::StrCat("invalid network '", AbslView(cidr),
                                                     "': prefix length must be 0-", max_length));
    }
    network.prefix_length = length;
  }
  if (HasHostBits(network.address.data(), max_length / 8, network.prefix_length)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid network '", AbslView(cidr),
                                                   "': address has bits set beyond the /",
                                                   network.prefix_length, " prefix"));
  }
  // Store ::ffff:a.b.c.d/n (n >= 96) as the IPv4 block it denotes so both spellings of a v4
  // client match it.
  if (!network.v4 && network.prefix_length >= 96 && IsV4Mapped(network.address.data())) {
    std::memmove(network.address.data(), network.address.data() + 12, 4);
    std::memset(network.address.data() + 4, 0, 12);
    network.v4 = true;
    network.prefix_length -= 96;
  }
  networks_.push_back(network);
  return absl::OkStatus();
}

absl::StatusOr<NetworkList> NetworkList::Parse(const std::vector<std::string>& cidrs) {
  NetworkList list;
  for (const std::string& cidr : cidrs) {
    if (absl::Status status = list.Add(cidr); !status.ok()) return status;
  }
  return list;
}

bool NetworkList::ContainsAddress(bool v4, const uint8_t* bytes) const {
  // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; match it as IPv4.
  if (!v4 && IsV4Mapped(bytes)) {
    v4 = true;
    bytes += 12;
  }
  for (const Network& network : networks_) {
    if (network.v4 == v4 && PrefixEquals(network.address.data(), bytes, network.prefix_length)) {
      return true;
    }
  }
  return false;
}

bool NetworkList::Contains(const sockaddr* address) const {
  if (address == nullptr) return false;
  if (address->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address);
    return ContainsAddress(true, reinterpret_cast<const uint8_t*>(&in->sin_addr));
  }
  if (address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    return ContainsAddress(false, reinterpret_cast<const uint8_t*>(&in6->sin6_addr));
  }
  return false;
}

bool NetworkList::Contains(std::string_view ip) const {
  std::string text(ip);
  uint8_t bytes[16];
  if (inet_pton(AF_INET, text.c_str(), bytes) == 1) return ContainsAddress(true, bytes);
  if (inet_pton(AF_INET6, text.c_str(), bytes) == 1) return ContainsAddress(false, bytes);
  return false;
}

std::vector<std::string> NetworkList::ToStrings() const {
  std::vector<std::string> result;
  for (const Network& network : networks_) {
    char buffer[INET6_ADDRSTRLEN];
    inet_ntop(network.v4 ? AF_INET : AF_INET6, network.address.data(), buffer, sizeof(buffer));
    result.push_back(absl::StrCat(buffer, "/", network.prefix_length));
  }
  return result;
}

}  // namespace rdv
