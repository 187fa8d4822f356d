#include "relay/tunnel_path.h"

#include <algorithm>
#include <cctype>
#include <vector>

namespace rdv {
namespace {

constexpr std::string_view kTunnelPrefix = "/TUNNEL:";

char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return Lower(x) == Lower(y); });
}

bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && EqualsIgnoreCase(s.substr(0, prefix.size()), prefix);
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

bool IsHostChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

// "user@host:port" -> "host" ("[v6]:port" -> "[v6]").
std::string_view HostOfAuthority(std::string_view authority) {
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  if (!authority.empty() && authority.front() == '[') {
    return authority.substr(0, authority.find(']') + 1);
  }
  return authority.substr(0, authority.find(':'));
}

// Is `path` (starting with '/') already inside the prefix?
bool InsidePrefix(std::string_view path, std::string_view prefix) {
  if (path.substr(0, prefix.size()) != prefix) return false;
  return path.size() == prefix.size() || path[prefix.size()] == '/' || path[prefix.size()] == '?' ||
         path[prefix.size()] == '#';
}

std::string IntoPrefix(std::string_view path, const TunnelContext& tunnel) {
  std::string out = tunnel.prefix;
  if (path.empty() || path.front() != '/') out += '/';
  out.append(path);
  return out;
}

// RFC 6265 5.1.4 default-path of a request path.
std::string_view DefaultCookiePath(std::string_view path) {
  if (path.empty() || path.front() != '/') return "/";
  size_t last = path.rfind('/');
  if (last == 0) return "/";
  return path.substr(0, last);
}

// Splits "scheme://authority/rest" or "//authority/rest"; false if `url` is neither.
bool SplitAbsolute(std::string_view url, std::string_view* scheme, std::string_view* authority,
                   std::string_view* rest) {
  size_t after_scheme = 0;
  if (url.substr(0, 2) == "//") {
    *scheme = {};
    after_scheme = 2;
  } else {
    size_t colon = url.find("://");
    if (colon == std::string_view::npos || colon == 0) return false;
    for (char c : url.substr(0, colon)) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
        return false;
      }
    }
    *scheme = url.substr(0, colon);
    after_scheme = colon + 3;
  }
  std::string_view tail = url.substr(after_scheme);
  size_t end = tail.find_first_of("/?#");
  *authority = tail.substr(0, end);
  *rest = end == std::string_view::npos ? std::string_view() : tail.substr(end);
  return true;
}

}  // namespace

std::optional<TunnelTarget> ParseTunnelTarget(std::string_view target) {
  if (target.substr(0, kTunnelPrefix.size()) != kTunnelPrefix) return std::nullopt;
  std::string_view after = target.substr(kTunnelPrefix.size());
  size_t end = after.find_first_of("/?#");
  std::string_view name = after.substr(0, end);
  std::string_view rest = end == std::string_view::npos ? std::string_view() : after.substr(end);
  TunnelTarget result;
  if (!name.empty() && std::all_of(name.begin(), name.end(), IsHostChar)) {
    result.name.reserve(name.size());
    for (char c : name) result.name += Lower(c);
  }
  if (!rest.empty() && rest.front() == '/') {
    result.target = std::string(rest);
  } else {
    result.redirect = std::string(kTunnelPrefix);
    result.redirect.append(name);
    result.redirect += '/';
    result.redirect.append(rest);
  }
  return result;
}

TunnelContext MakeTunnelContext(std::string_view name, std::string_view service_target) {
  TunnelContext tunnel;
  tunnel.name = std::string(name);
  tunnel.prefix = std::string(kTunnelPrefix);
  tunnel.prefix.append(name);
  tunnel.origin_path = std::string(service_target.substr(0, service_target.find_first_of("?#")));
  return tunnel;
}

std::optional<std::string> RewriteUrlIntoTunnel(std::string_view url, const TunnelContext& tunnel) {
  // Browsers ignore surrounding whitespace in URLs; keep it where it was.
  size_t lead = 0;
  while (lead < url.size() && IsSpace(url[lead])) ++lead;
  std::string_view trimmed = url.substr(lead);
  size_t trail = trimmed.size();
  while (trail > 0 && IsSpace(trimmed[trail - 1])) --trail;
  std::string_view tail = trimmed.substr(trail);
  trimmed = trimmed.substr(0, trail);

  std::string_view path;
  std::string_view scheme, authority;
  if (SplitAbsolute(trimmed, &scheme, &authority, &path)) {
    if (!scheme.empty() && !EqualsIgnoreCase(scheme, "http") &&
        !EqualsIgnoreCase(scheme, "https")) {
      return std::nullopt;
    }
    if (!EqualsIgnoreCase(HostOfAuthority(authority), tunnel.name)) return std::nullopt;
    if (path.empty() || path.front() != '/') {
      // "http://host?q" -> "/TUNNEL:host/?q"
    } else if (InsidePrefix(path, tunnel.prefix)) {
      std::string out(url.substr(0, lead));
      out.append(path);
      out.append(tail);
      return out;
    }
  } else if (!trimmed.empty() && trimmed.front() == '/' &&
             (trimmed.size() == 1 || (trimmed[1] != '/' && trimmed[1] != '\\'))) {
    path = trimmed;
    if (InsidePrefix(path, tunnel.prefix)) return std::nullopt;
  } else {
    return std::nullopt;
  }
  std::string out(url.substr(0, lead));
  out += IntoPrefix(path, tunnel);
  out.append(tail);
  return out;
}

std::string RewriteLocation(std::string_view value, const TunnelContext& tunnel) {
  std::optional<std::string> rewritten = RewriteUrlIntoTunnel(value, tunnel);
  return rewritten ? *std::move(rewritten) : std::string(value);
}

std::string RewriteRefresh(std::string_view value, const TunnelContext& tunnel) {
  // delay [ (";" | ",") [ "url" "=" ] ["'" | '"'] url ["'" | '"'] ]  (HTML "shared declarative
  // refresh steps", which browsers also apply to the header)
  size_t i = 0;
  while (i < value.size() && IsSpace(value[i])) ++i;
  while (i < value.size() &&
         (std::isdigit(static_cast<unsigned char>(value[i])) || value[i] == '.'))
    ++i;
  while (i < value.size() && IsSpace(value[i])) ++i;
  if (i >= value.size() || (value[i] != ';' && value[i] != ',')) return std::string(value);
  ++i;
  while (i < value.size() && IsSpace(value[i])) ++i;
  if (StartsWithIgnoreCase(value.substr(i), "url")) {
    size_t j = i + 3;
    while (j < value.size() && IsSpace(value[j])) ++j;
    if (j < value.size() && value[j] == '=') {
      i = j + 1;
      while (i < value.size() && IsSpace(value[i])) ++i;
    }
  }
  size_t end = value.size();
  if (i < value.size() && (value[i] == '\'' || value[i] == '"')) {
    size_t close = value.find(value[i], i + 1);
    ++i;
    if (close != std::string_view::npos) end = close;
  }
  std::optional<std::string> url = RewriteUrlIntoTunnel(value.substr(i, end - i), tunnel);
  if (!url) return std::string(value);
  std::string out(value.substr(0, i));
  out += *url;
  out.append(value.substr(end));
  return out;
}

std::string RewriteSetCookie(std::string_view value, const TunnelContext& tunnel) {
  std::vector<std::string_view> parts;
  for (size_t start = 0;;) {
    size_t semi = value.find(';', start);
    parts.push_back(value.substr(start, semi == std::string_view::npos ? semi : semi - start));
    if (semi == std::string_view::npos) break;
    start = semi + 1;
  }
  std::string out(parts[0]);
  bool has_path = false;
  for (size_t k = 1; k < parts.size(); ++k) {
    std::string_view attribute = Trim(parts[k]);
    size_t eq = attribute.find('=');
    std::string_view name = Trim(attribute.substr(0, eq));
    std::string_view attr_value =
        eq == std::string_view::npos ? std::string_view() : Trim(attribute.substr(eq + 1));
    if (EqualsIgnoreCase(name, "path")) {
      has_path = true;
      out += "; Path=";
      if (!attr_value.empty() && attr_value.front() == '/') {
        out += InsidePrefix(attr_value, tunnel.prefix) ? std::string(attr_value)
                                                       : IntoPrefix(attr_value, tunnel);
      } else {  // the browser would use the default path
        out += IntoPrefix(DefaultCookiePath(tunnel.origin_path), tunnel);
      }
      continue;
    }
    if (EqualsIgnoreCase(name, "domain")) {
      std::string_view domain = attr_value;
      if (!domain.empty() && domain.front() == '.') domain.remove_prefix(1);
      const std::string& host = tunnel.name;
      bool matches =
          EqualsIgnoreCase(host, domain) ||
          (host.size() > domain.size() && !domain.empty() &&
           EqualsIgnoreCase(std::string_view(host).substr(host.size() - domain.size()), domain) &&
           host[host.size() - domain.size() - 1] == '.');
      if (matches) continue;
    }
    out += ';';
    out.append(parts[k]);
  }
  if (!has_path) {
    out += "; Path=";
    out += IntoPrefix(DefaultCookiePath(tunnel.origin_path), tunnel);
  }
  return out;
}

std::string RewriteRefererOutOfTunnel(std::string_view value, std::string_view client_host,
                                      std::string_view name) {
  std::string_view scheme, authority, path;
  if (!SplitAbsolute(value, &scheme, &authority, &path) || scheme.empty() ||
      !EqualsIgnoreCase(authority, client_host) ||
      path.substr(0, kTunnelPrefix.size()) != kTunnelPrefix) {
    return std::string(value);
  }
  std::string_view after = path.substr(kTunnelPrefix.size());
  size_t end = after.find_first_of("/?#");
  if (!EqualsIgnoreCase(after.substr(0, end), name)) return std::string(value);
  std::string_view rest = end == std::string_view::npos ? std::string_view() : after.substr(end);
  std::string out(scheme);
  out += "://";
  out.append(name);
  if (rest.empty() || rest.front() != '/') out += '/';
  out.append(rest);
  return out;
}

std::string RewriteOriginOutOfTunnel(std::string_view value, std::string_view client_host,
                                     std::string_view name) {
  std::string_view scheme, authority, path;
  if (!SplitAbsolute(value, &scheme, &authority, &path) || scheme.empty() || !path.empty() ||
      !EqualsIgnoreCase(authority, client_host)) {
    return std::string(value);
  }
  std::string out(scheme);
  out += "://";
  out.append(name);
  return out;
}

}  // namespace rdv
