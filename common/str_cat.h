// String concatenation that accepts std::string_view.
//
// Debian's Abseil is built with its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0), so
// absl::StrCat rejects std::string_view arguments. These formatting helpers (over fmt, which
// spdlog already brings) take anything fmt can print.
#ifndef RDV_COMMON_STR_CAT_H_
#define RDV_COMMON_STR_CAT_H_

#include <iterator>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"
#include "fmt/format.h"

// Lets fmt and spdlog print absl::string_view (what absl::Status::message() returns).
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(absl::string_view text, FormatContext& ctx) const {
    return fmt::formatter<std::string_view>::format(std::string_view(text.data(), text.size()),
                                                    ctx);
  }
};

namespace rdv {

template <typename... Args>
void StrAppend(std::string& out, const Args&... args) {
  (fmt::format_to(std::back_inserter(out), "{}", args), ...);
}

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  StrAppend(out, args...);
  return out;
}

inline absl::string_view AbslView(std::string_view text) { return {text.data(), text.size()}; }

}  // namespace rdv

#endif  // RDV_COMMON_STR_CAT_H_
