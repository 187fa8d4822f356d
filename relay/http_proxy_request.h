// A request that arrived on the proxy entrypoint in HTTP proxy form (RFC 9112 3.2.2 absolute-form,
// "GET http://www.orang.com/path HTTP/1.1"), turned into the origin-form request the agent's
// target expects:
//   1. Proxy-Authorization must name a `proxy.users` entry when users are configured -> 407;
//   2. only http:// URLs (https goes through CONNECT) and no CONNECT after the first request
//      of a connection                                                             -> 400;
//   3. the target becomes origin-form ("/path?query"), Host becomes the URL's authority, and the
//      hop-by-hop Proxy-Authorization and Proxy-Connection headers are removed, so the
//      credentials never reach the agent.
// Origin-form requests pass unchanged except for step 3's header removal (routed by Host).
#ifndef RDV_RELAY_HTTP_PROXY_REQUEST_H_
#define RDV_RELAY_HTTP_PROXY_REQUEST_H_

#include <optional>
#include <string>
#include <vector>

#include "relay/http_codec.h"
#include "relay/relay_config.h"

namespace rdv {

// The head to route and forward, or nullopt with `refusal` set to a complete response to send
// before closing (the refusal is counted and logged; `peer` is for the log).
std::optional<HttpRequestHead> AdmitProxiedRequest(const HttpRequestHead& head,
                                                   const std::vector<ProxyUser>& users,
                                                   std::string_view peer, std::string& refusal);

}  // namespace rdv

#endif  // RDV_RELAY_HTTP_PROXY_REQUEST_H_
