// Streams an HTML document through, mapping the links of a tunnelled service into its
// `/TUNNEL:<name>/` prefix (RewriteUrlIntoTunnel): the values of href, src, action, formaction,
// poster and each URL of srcset, in any element.
//
// 1. a small tokenizer follows text, tags, attributes, comments and the raw text of
//    script/style/textarea/title (whose content is never rewritten), one byte at a time;
// 2. every byte goes out at once, except the value of an attribute of interest, which is held
//    until it ends (at most kMaxHeldValue bytes: a longer value goes out unchanged);
// 3. at end_stream whatever is held goes out unchanged.
// The output therefore does not depend on how the input is split, and buffering is bounded.
// It is a tokenizer for the common shape of HTML, not a full HTML5 parser: character
// references inside URLs are left as they are (only the start of a URL is ever replaced).
#ifndef RDV_RELAY_HTML_LINK_REWRITER_H_
#define RDV_RELAY_HTML_LINK_REWRITER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include "relay/stream_stage.h"
#include "relay/tunnel_path.h"

namespace rdv {

class HtmlLinkRewriter : public StreamStage {
 public:
  static constexpr size_t kMaxHeldValue = 8192;

  explicit HtmlLinkRewriter(TunnelContext tunnel) : tunnel_(std::move(tunnel)) {}

  void OnData(std::string_view data, bool end_stream, std::string& out) override;

  // Bytes currently held back (for tests of the bound).
  size_t held() const { return value_.size(); }

 private:
  enum class State {
    kText,
    kTagOpen,         // after '<'
    kTagName,         // start tag name
    kEndTag,          // "</...", or a bogus "<?...": skipped to '>'
    kMarkupOpen,      // after "<!"
    kMarkupDash,      // after "<!-"
    kBogusComment,    // "<!DOCTYPE ...>" and the like: to '>'
    kComment,         // after "<!--": to "-->"
    kBeforeAttrName,  // inside a start tag, between attributes
    kAttrName,
    kAfterAttrName,
    kBeforeAttrValue,
    kAttrValueQuoted,
    kAttrValueUnquoted,
    kRawText,  // content of script/style/textarea/title: to "</name"
  };

  void Step(char c, std::string& out);
  void EndStartTag();
  void StartValue();
  void FinishValue(std::string& out);
  std::string RewriteValue(std::string_view value) const;

  const TunnelContext tunnel_;
  State state_ = State::kText;
  std::string tag_name_;   // lowercased, capped
  std::string attr_name_;  // lowercased, capped
  char quote_ = 0;
  bool holding_ = false;  // the current attribute value is being held in value_
  std::string value_;
  int comment_dashes_ = 0;    // consecutive '-' seen in a comment
  size_t raw_end_match_ = 0;  // bytes of "</" + tag_name_ matched in raw text
};

}  // namespace rdv

#endif  // RDV_RELAY_HTML_LINK_REWRITER_H_
