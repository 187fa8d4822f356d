// libFuzzer target: the /TUNNEL: response side must never crash, hang or buffer without bound on
// any input, split at any points; the HTML link rewriter's output must not depend on the split.
// The first input byte chooses the chunk size and the client's HTTP version.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "relay/html_link_rewriter.h"
#include "relay/tunnel_response_stage.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t chunk = data[0] % 31 + 1;
  const bool http10 = (data[0] & 0x80) != 0;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  const rdv::TunnelContext tunnel = rdv::MakeTunnelContext("www.orang.com", "/a/b");

  rdv::HtmlLinkRewriter whole(tunnel);
  std::string expected;
  whole.OnData(input, true, expected);
  rdv::HtmlLinkRewriter pieces(tunnel);
  std::string got;
  for (size_t offset = 0; offset < input.size(); offset += chunk) {
    pieces.OnData(input.substr(offset, chunk), false, got);
    if (pieces.held() > rdv::HtmlLinkRewriter::kMaxHeldValue) std::abort();
  }
  pieces.OnData({}, true, got);
  if (got != expected) std::abort();

  rdv::TunnelResponseStage stage;
  for (const char* method : {"GET", "HEAD", "GET", "CONNECT", "GET"}) {
    rdv::TunnelResponseStage::Request request;
    request.method = method;
    request.tunnel = tunnel;
    request.rewrite_html = true;
    request.client_http10 = http10;
    stage.ExpectResponseTo(std::move(request));
  }
  std::string out;
  for (size_t offset = 0; offset < input.size(); offset += chunk) {
    stage.OnData(input.substr(offset, chunk), false, out);
  }
  stage.OnData({}, true, out);
  return 0;
}
