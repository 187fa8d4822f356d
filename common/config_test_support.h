// Helpers shared by the configuration tests (yaml_config_test.cc, relay_config_test.cc,
// agent_config_test.cc).
//
// Each test file binds them to its own parser, file name and full example in one-line wrappers:
//   std::string ErrorOf(std::string_view text) { return ParseErrorOf(Parse(text), text); }
#ifndef RDV_COMMON_CONFIG_TEST_SUPPORT_H_
#define RDV_COMMON_CONFIG_TEST_SUPPORT_H_

#include <fstream>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace rdv::config_test {

// The whole message of `status`, for comparing error texts exactly (absl::string_view, which on
// Debian is not std::string_view, prints badly in gtest failures).
inline std::string Message(const absl::Status& status) { return std::string(status.message()); }

// `text` with the first occurrence of `from` replaced by `to`. A `from` that is not in `text`
// fails the test (the edit would silently test the unedited text).
inline std::string ReplaceFirst(std::string_view text, std::string_view from, std::string_view to) {
  std::string result(text);
  size_t at = result.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) result.replace(at, from.size(), to);
  return result;
}

// The message of a parse of `text` that must fail with InvalidArgument; "" (and a test failure)
// when it parsed.
template <typename Config>
std::string ParseErrorOf(const absl::StatusOr<Config>& config, std::string_view text) {
  EXPECT_FALSE(config.ok()) << text;
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  return Message(config.status());
}

// Writes `contents` to a file in the test temporary directory and returns its path. The name is
// `prefix` followed by `name`, so that test binaries running side by side do not share files.
inline std::string WriteTempFile(std::string_view prefix, std::string_view name,
                                 std::string_view contents) {
  std::string path = ::testing::TempDir() + "/" + std::string(prefix) + std::string(name);
  std::ofstream out(path, std::ios::binary);
  out << contents;
  return path;
}

}  // namespace rdv::config_test

#endif  // RDV_COMMON_CONFIG_TEST_SUPPORT_H_
