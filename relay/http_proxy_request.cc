#include "relay/http_proxy_request.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "relay/proxy_auth.h"
#include "relay/proxy_refusal.h"

namespace rdv {
namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return absl::ascii_tolower(static_cast<unsigned char>(x)) ==
                  absl::ascii_tolower(static_cast<unsigned char>(y));
         });
}

bool StartsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && EqualsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

std::optional<HttpRequestHead> Refuse(ProxyRefusal reason, std::string_view peer,
                                      std::string_view detail, std::string& refusal) {
  NoteProxyRefusal(ProxyProtocol::kHttpForward, reason, peer, detail);
  refusal = ProxyRefusalReply(ProxyProtocol::kHttpForward, reason, detail);
  return std::nullopt;
}

}  // namespace

std::optional<HttpRequestHead> AdmitProxiedRequest(const HttpRequestHead& head,
                                                   const std::vector<ProxyUser>& users,
                                                   std::string_view peer, std::string& refusal) {
  if (!ProxyAuthorizationAllows(users, head.Header("Proxy-Authorization"))) {
    return Refuse(ProxyRefusal::kAuth, peer, "missing or wrong Proxy-Authorization", refusal);
  }
  if (head.method == "CONNECT") {
    return Refuse(ProxyRefusal::kMalformed, peer,
                  "CONNECT is served only as the first request of a proxy connection", refusal);
  }
  HttpRequestHead out = head;
  bool absolute = head.target.find("://") != std::string::npos;
  if (absolute) {
    constexpr std::string_view kScheme = "http://";
    if (!StartsWithIgnoreCase(head.target, kScheme)) {
      return Refuse(ProxyRefusal::kMalformed, peer,
                    "only http:// URLs are proxied in absolute form; use CONNECT for https",
                    refusal);
    }
    std::string_view rest = std::string_view(head.target).substr(kScheme.size());
    size_t path = rest.find_first_of("/?");
    std::string_view origin = path == std::string_view::npos ? "" : rest.substr(path);
    // Built by append, not `"/" + std::string`: GCC 12 at -O3 reports a false -Wrestrict there.
    out.target.clear();
    if (origin.empty() || origin.front() == '?') out.target.push_back('/');
    out.target.append(origin);
  }
  std::erase_if(out.headers, [absolute](const HttpHeader& header) {
    return EqualsIgnoreCase(header.name, "Proxy-Authorization") ||
           EqualsIgnoreCase(header.name, "Proxy-Connection") ||
           (absolute && EqualsIgnoreCase(header.name, "Host"));
  });
  if (absolute) out.headers.insert(out.headers.begin(), HttpHeader{"Host", head.host});
  return out;
}

}  // namespace rdv
