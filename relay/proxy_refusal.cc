#include "relay/proxy_refusal.h"

#include "common/metrics.h"
#include "common/socks5.h"
#include "common/str_cat.h"
#include "relay/http_codec.h"
#include "relay/proxy_auth.h"
#include "spdlog/spdlog.h"

namespace rdv {
namespace {

std::string_view ProtocolName(ProxyProtocol protocol) {
  switch (protocol) {
    case ProxyProtocol::kSocks5:
      return "socks5";
    case ProxyProtocol::kHttpConnect:
      return "connect";
    case ProxyProtocol::kHttpForward:
      return "http";
  }
  return "unknown";
}

int HttpStatusFor(ProxyRefusal refusal) {
  switch (refusal) {
    case ProxyRefusal::kMalformed:
    case ProxyRefusal::kUnsupportedCommand:
    case ProxyRefusal::kAddressType:
      return 400;
    case ProxyRefusal::kAuth:
      return 407;
    case ProxyRefusal::kNotAllowed:
      return 403;
    case ProxyRefusal::kUnknownName:
      return 404;
    case ProxyRefusal::kNoAgent:
      return 503;
    case ProxyRefusal::kTargetRefused:
      return 502;
    case ProxyRefusal::kTimeout:
      return 408;
  }
  return 500;
}

}  // namespace

std::string_view ProxyRefusalName(ProxyRefusal refusal) {
  switch (refusal) {
    case ProxyRefusal::kMalformed:
      return "malformed";
    case ProxyRefusal::kAuth:
      return "auth";
    case ProxyRefusal::kUnsupportedCommand:
      return "unsupported_command";
    case ProxyRefusal::kAddressType:
      return "unsupported_address_type";
    case ProxyRefusal::kNotAllowed:
      return "not_allowed";
    case ProxyRefusal::kUnknownName:
      return "unknown_name";
    case ProxyRefusal::kNoAgent:
      return "no_agent";
    case ProxyRefusal::kTargetRefused:
      return "target_refused";
    case ProxyRefusal::kTimeout:
      return "timeout";
  }
  return "unknown";
}

void NoteProxyRefusal(ProxyProtocol protocol, ProxyRefusal refusal, std::string_view peer,
                      std::string_view detail) {
  CounterOf("rdv_proxy_refused_total", "Proxy entrypoint requests refused, by reason",
            StrCat("reason=\"", ProxyRefusalName(refusal), "\""))
      .Inc();
  spdlog::info("proxy {} {}: refused ({}): {}", ProtocolName(protocol), peer,
               ProxyRefusalName(refusal), detail);
}

void NoteProxyRequest(ProxyProtocol protocol) {
  CounterOf("rdv_proxy_requests_total", "Proxy entrypoint clients, by the protocol they spoke",
            StrCat("protocol=\"", ProtocolName(protocol), "\""))
      .Inc();
}

std::string ProxySuccessReply(ProxyProtocol protocol) {
  if (protocol == ProxyProtocol::kSocks5) return socks5::EncodeReply(socks5::Reply::kSucceeded);
  return "HTTP/1.1 200 Connection established\r\n\r\n";
}

std::string ProxyRefusalReply(ProxyProtocol protocol, ProxyRefusal refusal,
                              std::string_view detail) {
  if (protocol != ProxyProtocol::kSocks5) {
    if (refusal == ProxyRefusal::kAuth) return MakeProxyAuthRequiredResponse();
    return MakeErrorResponse(HttpStatusFor(refusal), detail);
  }
  switch (refusal) {
    case ProxyRefusal::kMalformed:
      return socks5::EncodeReply(socks5::Reply::kGeneralFailure);
    case ProxyRefusal::kAuth:
    case ProxyRefusal::kTimeout:
      return "";  // answered inside the sub-negotiation, or nothing to answer
    case ProxyRefusal::kUnsupportedCommand:
      return socks5::EncodeReply(socks5::Reply::kCommandNotSupported);
    case ProxyRefusal::kAddressType:
      return socks5::EncodeReply(socks5::Reply::kAddressTypeNotSupported);
    case ProxyRefusal::kNotAllowed:
      return socks5::EncodeReply(socks5::Reply::kNotAllowed);
    case ProxyRefusal::kUnknownName:
      return socks5::EncodeReply(socks5::Reply::kHostUnreachable);
    case ProxyRefusal::kNoAgent:
      return socks5::EncodeReply(socks5::Reply::kNetworkUnreachable);
    case ProxyRefusal::kTargetRefused:
      return socks5::EncodeReply(socks5::Reply::kConnectionRefused);
  }
  return socks5::EncodeReply(socks5::Reply::kGeneralFailure);
}

}  // namespace rdv
