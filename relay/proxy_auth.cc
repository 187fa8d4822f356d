#include "relay/proxy_auth.h"

#include <openssl/crypto.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "common/str_cat.h"
#include "relay/http_codec.h"

namespace rdv {
namespace {

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

bool SameBytes(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

bool ProxyUserMatches(const std::vector<ProxyUser>& users, std::string_view name,
                      std::string_view password) {
  bool match = false;
  for (const ProxyUser& user : users) {
    // Both compared for every user, so timing does not tell which part was wrong.
    bool name_ok = SameBytes(user.name, name);
    bool password_ok = SameBytes(user.password, password);
    match |= name_ok && password_ok;
  }
  return match;
}

bool ProxyAuthorizationAllows(const std::vector<ProxyUser>& users, std::string_view header) {
  if (users.empty()) return true;
  header = Trim(header);
  constexpr std::string_view kScheme = "basic ";
  if (header.size() <= kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (absl::ascii_tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return false;
  }
  std::string decoded;
  if (!absl::Base64Unescape(AbslView(Trim(header.substr(kScheme.size()))), &decoded)) {
    return false;
  }
  size_t colon = decoded.find(':');
  if (colon == std::string::npos) return false;
  return ProxyUserMatches(users, std::string_view(decoded).substr(0, colon),
                          std::string_view(decoded).substr(colon + 1));
}

std::string MakeProxyAuthRequiredResponse() {
  std::string response = MakeErrorResponse(407, "proxy credentials are required");
  size_t line_end = response.find("\r\n") + 2;
  response.insert(line_end, "Proxy-Authenticate: Basic realm=\"rdv-relay\", charset=\"UTF-8\"\r\n");
  return response;
}

}  // namespace rdv
