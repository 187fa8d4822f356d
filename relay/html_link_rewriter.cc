#include "relay/html_link_rewriter.h"

#include <cctype>
#include <optional>

namespace rdv {
namespace {

constexpr size_t kMaxName = 16;  // longer tag/attribute names are of no interest

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
bool IsAlpha(char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; }
char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

void AppendCapped(std::string& name, char c) {
  if (name.size() <= kMaxName) name += Lower(c);
}

bool IsUrlAttribute(std::string_view name) {
  return name == "href" || name == "src" || name == "action" || name == "formaction" ||
         name == "poster" || name == "srcset";
}

bool IsRawTextElement(std::string_view name) {
  return name == "script" || name == "style" || name == "textarea" || name == "title";
}

}  // namespace

void HtmlLinkRewriter::OnData(std::string_view data, bool end_stream, std::string& out) {
  out.reserve(out.size() + data.size());
  for (char c : data) Step(c, out);
  if (end_stream && holding_) {
    out += value_;  // the document ended inside a value: unchanged
    value_.clear();
    holding_ = false;
  }
}

void HtmlLinkRewriter::StartValue() {
  holding_ = IsUrlAttribute(attr_name_);
  value_.clear();
}

void HtmlLinkRewriter::FinishValue(std::string& out) {
  if (holding_) {
    out += RewriteValue(value_);
    value_.clear();
    holding_ = false;
  }
}

std::string HtmlLinkRewriter::RewriteValue(std::string_view value) const {
  if (attr_name_ != "srcset") {
    std::optional<std::string> url = RewriteUrlIntoTunnel(value, tunnel_);
    return url ? *std::move(url) : std::string(value);
  }
  // srcset: "url [descriptor], url [descriptor], ..."; a URL ends at whitespace (a comma inside
  // a URL is part of it only when not followed by whitespace, which this split respects).
  std::string out;
  size_t i = 0;
  while (i < value.size()) {
    size_t start = i;
    while (i < value.size() && (IsSpace(value[i]) || value[i] == ',')) ++i;
    out.append(value.substr(start, i - start));
    size_t url_start = i;
    while (i < value.size() && !IsSpace(value[i])) ++i;
    std::string_view url = value.substr(url_start, i - url_start);
    size_t trailing_commas = 0;
    while (trailing_commas < url.size() && url[url.size() - 1 - trailing_commas] == ',') {
      ++trailing_commas;
    }
    std::string_view bare = url.substr(0, url.size() - trailing_commas);
    std::optional<std::string> rewritten = RewriteUrlIntoTunnel(bare, tunnel_);
    out += rewritten ? *rewritten : std::string(bare);
    out.append(url.substr(bare.size()));
    if (trailing_commas > 0) continue;  // the next candidate follows
    start = i;
    while (i < value.size() && value[i] != ',') ++i;  // descriptor
    out.append(value.substr(start, i - start));
  }
  return out;
}

void HtmlLinkRewriter::EndStartTag() {
  if (IsRawTextElement(tag_name_)) {
    state_ = State::kRawText;
    raw_end_match_ = 0;
  } else {
    state_ = State::kText;
  }
}

void HtmlLinkRewriter::Step(char c, std::string& out) {
  switch (state_) {
    case State::kText:
      if (c == '<') state_ = State::kTagOpen;
      break;
    case State::kTagOpen:
      if (IsAlpha(c)) {
        tag_name_.clear();
        AppendCapped(tag_name_, c);
        state_ = State::kTagName;
      } else if (c == '/' || c == '?') {
        state_ = State::kEndTag;
      } else if (c == '!') {
        state_ = State::kMarkupOpen;
      } else if (c != '<') {
        state_ = State::kText;
      }
      break;
    case State::kTagName:
      if (IsSpace(c) || c == '/') {
        state_ = State::kBeforeAttrName;
      } else if (c == '>') {
        EndStartTag();
      } else {
        AppendCapped(tag_name_, c);
      }
      break;
    case State::kEndTag:
    case State::kBogusComment:
      if (c == '>') state_ = State::kText;
      break;
    case State::kMarkupOpen:
      state_ = c == '-' ? State::kMarkupDash : c == '>' ? State::kText : State::kBogusComment;
      break;
    case State::kMarkupDash:
      if (c == '-') {
        state_ = State::kComment;
        comment_dashes_ = 0;
      } else {
        state_ = c == '>' ? State::kText : State::kBogusComment;
      }
      break;
    case State::kComment:
      if (c == '>' && comment_dashes_ >= 2) {
        state_ = State::kText;
      } else {
        comment_dashes_ = c == '-' ? comment_dashes_ + 1 : 0;
      }
      break;
    case State::kBeforeAttrName:
      if (c == '>') {
        EndStartTag();
      } else if (!IsSpace(c) && c != '/') {
        attr_name_.clear();
        AppendCapped(attr_name_, c);
        state_ = State::kAttrName;
      }
      break;
    case State::kAttrName:
      if (c == '=') {
        state_ = State::kBeforeAttrValue;
      } else if (IsSpace(c)) {
        state_ = State::kAfterAttrName;
      } else if (c == '/') {
        state_ = State::kBeforeAttrName;
      } else if (c == '>') {
        EndStartTag();
      } else {
        AppendCapped(attr_name_, c);
      }
      break;
    case State::kAfterAttrName:
      if (c == '=') {
        state_ = State::kBeforeAttrValue;
      } else if (c == '>') {
        EndStartTag();
      } else if (c == '/') {
        state_ = State::kBeforeAttrName;
      } else if (!IsSpace(c)) {
        attr_name_.clear();
        AppendCapped(attr_name_, c);
        state_ = State::kAttrName;
      }
      break;
    case State::kBeforeAttrValue:
      if (c == '"' || c == '\'') {
        quote_ = c;
        out += c;
        StartValue();
        state_ = State::kAttrValueQuoted;
        return;
      }
      if (c == '>') {
        EndStartTag();
      } else if (!IsSpace(c)) {
        StartValue();
        state_ = State::kAttrValueUnquoted;
        Step(c, out);
        return;
      }
      break;
    case State::kAttrValueQuoted:
      if (c == quote_) {
        FinishValue(out);
        state_ = State::kBeforeAttrName;
        break;
      }
      if (holding_) {
        value_ += c;
        if (value_.size() > kMaxHeldValue) {  // too long to be a link we map: give up on it
          out += value_;
          value_.clear();
          holding_ = false;
        }
        return;
      }
      break;
    case State::kAttrValueUnquoted:
      if (IsSpace(c) || c == '>') {
        FinishValue(out);
        if (c == '>') {
          EndStartTag();
        } else {
          state_ = State::kBeforeAttrName;
        }
        break;
      }
      if (holding_) {
        value_ += c;
        if (value_.size() > kMaxHeldValue) {
          out += value_;
          value_.clear();
          holding_ = false;
        }
        return;
      }
      break;
    case State::kRawText: {
      // Looks for "</" + tag name, case-insensitively.
      const size_t end_length = 2 + tag_name_.size();
      auto expected = [&](size_t k) { return k == 0 ? '<' : k == 1 ? '/' : tag_name_[k - 2]; };
      if (Lower(c) == expected(raw_end_match_)) {
        if (++raw_end_match_ == end_length) state_ = State::kEndTag;
      } else {
        raw_end_match_ = c == '<' ? 1 : 0;
      }
      break;
    }
  }
  out += c;
}

}  // namespace rdv
