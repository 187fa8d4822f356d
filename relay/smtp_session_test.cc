#include "relay/smtp_session.h"

#include "gtest/gtest.h"

namespace rdv {
namespace {

TEST(SmtpHandoffStateTest, RoundTrips) {
  SmtpHandoffState state;
  state.helo_verb = "EHLO";
  state.helo_name = "client.example";
  state.mail_line = "MAIL FROM:<a@b.example> SIZE=10";
  state.rcpt_line = "RCPT TO:<x@orang.com>";
  state.domain = "orang.com";
  state.input = std::string("DATA\r\n12:34\0:\r\n", 15);
  state.commands = 7;
  state.hops = 2;
  std::optional<SmtpHandoffState> decoded = SmtpHandoffState::Decode(state.Encode());
  ASSERT_TRUE(decoded.has_value());
  EXPECT_EQ(decoded->helo_verb, state.helo_verb);
  EXPECT_EQ(decoded->helo_name, state.helo_name);
  EXPECT_EQ(decoded->mail_line, state.mail_line);
  EXPECT_EQ(decoded->rcpt_line, state.rcpt_line);
  EXPECT_EQ(decoded->domain, state.domain);
  EXPECT_EQ(decoded->input, state.input);
  EXPECT_EQ(decoded->commands, 7u);
  EXPECT_EQ(decoded->hops, 2u);
}

TEST(SmtpHandoffStateTest, RejectsTruncatedOrTrailingBytes) {
  SmtpHandoffState state;
  state.domain = "orang.com";
  std::string encoded = state.Encode();
  EXPECT_FALSE(SmtpHandoffState::Decode(encoded.substr(0, encoded.size() - 1)).has_value());
  EXPECT_FALSE(SmtpHandoffState::Decode(encoded + "x").has_value());
  EXPECT_FALSE(SmtpHandoffState::Decode("").has_value());
  EXPECT_FALSE(SmtpHandoffState::Decode("999:x").has_value());
}

}  // namespace
}  // namespace rdv
