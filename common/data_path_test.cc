#include "common/data_path.h"

#include <gtest/gtest.h>

#include <cctype>
#include <string>

namespace rdv {
namespace {

std::string Token() {
  std::string token;
  for (size_t i = 0; i < kDataPathTokenSize; ++i) token.push_back(static_cast<char>(i * 7 + 1));
  return token;
}

TEST(DataPathTest, RequestRoundTrips) {
  std::string line = DataPathRequest(Token());
  EXPECT_EQ(line.substr(0, 11), "RDV-DATA/1 ");
  EXPECT_EQ(line.size(), 11 + 64 + 2u);
  absl::StatusOr<size_t> end = DataPathLineEnd(line + "extra");
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(*end, line.size());
  absl::StatusOr<std::string> token = ParseDataPathRequest(line);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, Token());
}

TEST(DataPathTest, LineEndWaitsThenRefusesLongLines) {
  EXPECT_EQ(*DataPathLineEnd("RDV-DATA/1 ab"), 0u);
  EXPECT_EQ(*DataPathLineEnd(""), 0u);
  EXPECT_FALSE(DataPathLineEnd(std::string(kMaxDataPathLine, 'x')).ok());
  EXPECT_FALSE(DataPathLineEnd(std::string(kMaxDataPathLine, 'x') + "\r\n").ok());
}

TEST(DataPathTest, RequestErrorsSayWhat) {
  EXPECT_NE(ParseDataPathRequest("GET / HTTP/1.1\r\n").status().message().find("not a data path"),
            std::string::npos);
  EXPECT_NE(ParseDataPathRequest("RDV-DATA/1 abcd\r\n").status().message().find("4 hex digits"),
            std::string::npos);
  std::string upper = DataPathRequest(Token());
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  upper.replace(0, 11, "RDV-DATA/1 ");
  EXPECT_NE(ParseDataPathRequest(upper).status().message().find("not lowercase hex"),
            std::string::npos);
  EXPECT_FALSE(ParseDataPathRequest(std::string("RDV-DATA/1 ") + std::string(64, 'g')).ok());
}

TEST(DataPathTest, Replies) {
  EXPECT_TRUE(ParseDataPathReply("OK\r\n").ok());
  absl::Status refused = ParseDataPathReply("ERR unknown or expired token\r\n");
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("unknown or expired token"), std::string::npos);
  EXPECT_EQ(ParseDataPathReply("HELLO\r\n").code(), absl::StatusCode::kInvalidArgument);
}

TEST(DataPathTest, ErrorLineIsOneBoundedLine) {
  std::string line = DataPathError(std::string(500, 'a') + "\r\nsecond");
  EXPECT_LE(line.size(), kMaxDataPathLine);
  EXPECT_EQ(line.find("\r\n"), line.size() - 2);
  EXPECT_EQ(*DataPathLineEnd(line), line.size());
  EXPECT_EQ(DataPathError("no partner"), "ERR no partner\r\n");
}

}  // namespace
}  // namespace rdv
