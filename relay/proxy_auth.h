// Who may use the proxy entrypoint: the `proxy.users` list, checked for SOCKS5 username/password
// (RFC 1929) and for HTTP `Proxy-Authorization: Basic` (RFC 7617).
#ifndef RDV_RELAY_PROXY_AUTH_H_
#define RDV_RELAY_PROXY_AUTH_H_

#include <string>
#include <string_view>
#include <vector>

#include "relay/relay_config.h"

namespace rdv {

// Whether `name`/`password` is one of `users` (compared in constant time per user).
bool ProxyUserMatches(const std::vector<ProxyUser>& users, std::string_view name,
                      std::string_view password);

// Whether a request with this Proxy-Authorization value ("" when absent) may use the proxy:
// always when `users` is empty, otherwise only with "Basic base64(name:password)" of a user.
bool ProxyAuthorizationAllows(const std::vector<ProxyUser>& users, std::string_view header);

// The complete 407 response asking for Basic credentials (Connection: close).
std::string MakeProxyAuthRequiredResponse();

}  // namespace rdv

#endif  // RDV_RELAY_PROXY_AUTH_H_
