// `/TUNNEL:<name>/` paths on the HTTP entrypoint (DESIGN §2): a service reached through a path
// prefix on any relay host name instead of through its own Host.
//
//   request   GET /TUNNEL:www.orang.com/a/b?q  Host: relay.example.net
//   -> agent  GET /a/b?q                       Host: www.orang.com
//             X-Forwarded-Host: relay.example.net, X-Forwarded-Prefix: /TUNNEL:www.orang.com
//   response  Location, Content-Location, Refresh, Set-Cookie Path/Domain and (optionally) the
//             links of text/html bodies are mapped back under the prefix, so that a browser
//             keeps working inside it.
//
// Everything here is a pure function of its arguments; the session and the response stage
// (tunnel_response_stage.h) decide when to call them.
#ifndef RDV_RELAY_TUNNEL_PATH_H_
#define RDV_RELAY_TUNNEL_PATH_H_

#include <optional>
#include <string>
#include <string_view>

namespace rdv {

// A request target of the form "/TUNNEL:<name>[/rest]".
struct TunnelTarget {
  // Lowercased host name. Empty when the name is missing or is not a host name: no service
  // can match it (the relay answers 404).
  std::string name;
  // The service's own target: "/rest" with the query kept ("/" for "/TUNNEL:name/"). Empty when
  // the target was "/TUNNEL:name" or "/TUNNEL:name?query" without the slash: the relay answers
  // with a redirect to `redirect`, so that relative links resolve inside the prefix.
  std::string target;
  std::string redirect;  // "/TUNNEL:name/" + query, when `target` is empty
};

// Parses an origin-form request target. nullopt when it does not start with "/TUNNEL:" (ASCII
// case-sensitive, as the prefix is a path).
std::optional<TunnelTarget> ParseTunnelTarget(std::string_view target);

// What the response side needs to map the service's URLs back into the prefix.
struct TunnelContext {
  std::string name;         // the service host as named in the path ("www.orang.com")
  std::string prefix;       // "/TUNNEL:www.orang.com"
  std::string origin_path;  // the service-side path of the request ("/a/b", no query)
};
TunnelContext MakeTunnelContext(std::string_view name, std::string_view service_target);

// A URL the service produced (Location, Content-Location, Refresh url, an HTML link) as the
// browser must see it: an absolute URL (http, https or scheme-relative "//") whose host is the
// service's name (any port) or a root-relative path "/x" becomes "/TUNNEL:name/x"; a URL
// already inside the prefix, relative paths, fragments and other hosts stay as they are.
// nullopt when unchanged.
std::optional<std::string> RewriteUrlIntoTunnel(std::string_view url, const TunnelContext& tunnel);

// Location and Content-Location values (the same rule; returns the value to send).
std::string RewriteLocation(std::string_view value, const TunnelContext& tunnel);

// Refresh: "5; url=/x" (also "URL = '/x'", "5;/x" is left alone) -> "5; url=/TUNNEL:name/x".
std::string RewriteRefresh(std::string_view value, const TunnelContext& tunnel);

// A Set-Cookie value: `Path=/x` -> `Path=/TUNNEL:name/x`; without Path, the default path the
// browser would have used at the service (RFC 6265 5.1.4, from origin_path) under the prefix is
// added; a Domain attribute that the service's host domain-matches is dropped (the browser is
// talking to the relay's host, which would reject it).
std::string RewriteSetCookie(std::string_view value, const TunnelContext& tunnel);

// Request side: a Referer the browser built inside the prefix,
// "<scheme>://<client_host>/TUNNEL:name/x" -> "<scheme>://name/x". Anything else is returned
// unchanged.
std::string RewriteRefererOutOfTunnel(std::string_view value, std::string_view client_host,
                                      std::string_view name);

// Request side: Origin "<scheme>://<client_host>" -> "<scheme>://name"; anything else unchanged.
std::string RewriteOriginOutOfTunnel(std::string_view value, std::string_view client_host,
                                     std::string_view name);

}  // namespace rdv

#endif  // RDV_RELAY_TUNNEL_PATH_H_
