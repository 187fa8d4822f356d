#include "common/smtp_command.h"

#include <string>

#include "gtest/gtest.h"

namespace rdv::smtp {
namespace {

TEST(SmtpSplitLineTest, SplitsCrlfAndBareLf) {
  LineSplit split = SplitLine("EHLO a\r\nMAIL");
  ASSERT_EQ(split.outcome, LineSplit::Outcome::kLine);
  EXPECT_EQ(split.line, "EHLO a");
  EXPECT_EQ(split.consumed, 8u);
  split = SplitLine("NOOP\nQUIT\n");
  ASSERT_EQ(split.outcome, LineSplit::Outcome::kLine);
  EXPECT_EQ(split.line, "NOOP");
  EXPECT_EQ(split.consumed, 5u);
  EXPECT_EQ(SplitLine("NOOP").outcome, LineSplit::Outcome::kNeedMore);
  EXPECT_EQ(SplitLine("").outcome, LineSplit::Outcome::kNeedMore);
}

TEST(SmtpSplitLineTest, BoundsTheLineAt512WithCrlf) {
  std::string ok(510, 'a');
  LineSplit split = SplitLine(ok + "\r\n");
  ASSERT_EQ(split.outcome, LineSplit::Outcome::kLine);
  EXPECT_EQ(split.line.size(), 510u);
  EXPECT_EQ(SplitLine(std::string(511, 'a') + "\r\n").outcome, LineSplit::Outcome::kTooLong);
  EXPECT_EQ(SplitLine(std::string(511, 'a')).outcome, LineSplit::Outcome::kNeedMore);
  EXPECT_EQ(SplitLine(std::string(512, 'a')).outcome, LineSplit::Outcome::kTooLong);
  EXPECT_EQ(SplitLine(std::string(2000, 'a')).outcome, LineSplit::Outcome::kTooLong);
  EXPECT_EQ(SplitLine("abc\n", 3).outcome, LineSplit::Outcome::kTooLong);
  EXPECT_EQ(SplitLine("ab\n", 3).outcome, LineSplit::Outcome::kLine);
}

TEST(SmtpParseCommandTest, VerbsAreCaseInsensitiveAndNeedASpace) {
  Command command = ParseCommand("ehlo client.example");
  EXPECT_EQ(command.verb, Verb::kEhlo);
  EXPECT_EQ(command.argument, "client.example");
  EXPECT_EQ(ParseCommand("StartTLS").verb, Verb::kStartTls);
  EXPECT_EQ(ParseCommand("QUIT").argument, "");
  EXPECT_EQ(ParseCommand("MAILFROM:<a@b.c>").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("").verb, Verb::kUnknown);
  EXPECT_EQ(ParseCommand("GET / HTTP/1.1").verb, Verb::kUnknown);
  command = ParseCommand("RCPT   TO:<a@b.c>  ");
  EXPECT_EQ(command.verb, Verb::kRcpt);
  EXPECT_EQ(command.argument, "TO:<a@b.c>");
}

TEST(SmtpParseMailFromTest, AddressAndParameters) {
  absl::StatusOr<MailFrom> mail = ParseMailFrom("FROM:<alice@example.net> SIZE=1234 BODY=8BITMIME");
  ASSERT_TRUE(mail.ok()) << mail.status();
  EXPECT_EQ(mail->address, "alice@example.net");
  EXPECT_EQ(mail->size, 1234u);
  EXPECT_TRUE(mail->body_8bitmime);
  mail = ParseMailFrom("from: <>");
  ASSERT_TRUE(mail.ok()) << mail.status();
  EXPECT_EQ(mail->address, "");
  EXPECT_FALSE(mail->size.has_value());
  mail = ParseMailFrom("FROM:<@relay.example:bob@example.net> BODY=7bit");
  ASSERT_TRUE(mail.ok()) << mail.status();
  EXPECT_EQ(mail->address, "bob@example.net");
  mail = ParseMailFrom("FROM:<\"a > b\"@example.net>");
  ASSERT_TRUE(mail.ok()) << mail.status();
  EXPECT_EQ(mail->address, "\"a > b\"@example.net");
}

TEST(SmtpParseMailFromTest, Errors) {
  EXPECT_EQ(ParseMailFrom("FROM:alice@example.net").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMailFrom("TO:<a@b.c>").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMailFrom("FROM:<a@b.c").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMailFrom("FROM:<a@b.c>x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMailFrom("FROM:<a@b.c> SIZE=abc").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMailFrom("FROM:<a@b.c> SIZE=-1").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMailFrom("FROM:<a@b.c> SMTPUTF8").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ParseMailFrom("FROM:<a@b.c> BODY=BINARYMIME").status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ParseMailFrom("FROM:<a\x01@b.c>").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SmtpParseRcptToTest, DomainIsLowercasedAndTrailingDotRemoved) {
  absl::StatusOr<RcptTo> rcpt = ParseRcptTo("TO:<Bob@Orang.COM.>");
  ASSERT_TRUE(rcpt.ok()) << rcpt.status();
  EXPECT_EQ(rcpt->address, "Bob@Orang.COM.");
  EXPECT_EQ(rcpt->domain, "orang.com");
  rcpt = ParseRcptTo("TO:<\"x@y\"@example.org>");
  ASSERT_TRUE(rcpt.ok()) << rcpt.status();
  EXPECT_EQ(rcpt->domain, "example.org");
  rcpt = ParseRcptTo("TO:<postmaster>");
  ASSERT_TRUE(rcpt.ok()) << rcpt.status();
  EXPECT_EQ(rcpt->domain, "");
  rcpt = ParseRcptTo("TO:<a@[127.0.0.1]>");
  ASSERT_TRUE(rcpt.ok()) << rcpt.status();
  EXPECT_EQ(rcpt->domain, "");
  EXPECT_EQ(ParseRcptTo("TO:<>").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRcptTo("TO:<a@b.c> NOTIFY=NEVER").status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(SmtpRoutableDomainTest, Cases) {
  EXPECT_EQ(RoutableDomain("a@example.org"), "example.org");
  EXPECT_EQ(RoutableDomain("a@b@example.org"), "example.org");
  EXPECT_EQ(RoutableDomain("@example.org"), std::nullopt);
  EXPECT_EQ(RoutableDomain("a@"), std::nullopt);
  EXPECT_EQ(RoutableDomain("a@-bad.org"), std::nullopt);
  EXPECT_EQ(RoutableDomain("\"a@b\""), std::nullopt);
}

TEST(SmtpParseReplyLineTest, Cases) {
  EXPECT_EQ(ParseReplyLine("250-PIPELINING")->code, 250);
  EXPECT_FALSE(ParseReplyLine("250-PIPELINING")->last);
  EXPECT_TRUE(ParseReplyLine("250 ok")->last);
  EXPECT_TRUE(ParseReplyLine("354")->last);
  EXPECT_FALSE(ParseReplyLine("25 ok").has_value());
  EXPECT_FALSE(ParseReplyLine("250xok").has_value());
  EXPECT_FALSE(ParseReplyLine("abc ok").has_value());
}

TEST(SmtpDataEndScannerTest, FindsTheTerminatorAcrossPieces) {
  DataEndScanner scanner;
  EXPECT_EQ(scanner.Scan("Subject: x\r\n\r\nbody\r\n..stuffed\r\n"), std::nullopt);
  EXPECT_EQ(scanner.Scan("."), std::nullopt);
  EXPECT_EQ(scanner.Scan("\r"), std::nullopt);
  EXPECT_EQ(scanner.Scan("\nQUIT\r\n"), 1u);
  scanner.Reset();
  EXPECT_EQ(scanner.Scan(".\r\n"), 3u);  // empty message
  scanner.Reset();
  EXPECT_EQ(scanner.Scan("a\n.\nRSET\n"), 4u);
  scanner.Reset();
  EXPECT_EQ(scanner.Scan("a.\r\n.x\r\n. \r\n"), std::nullopt);
}

}  // namespace
}  // namespace rdv::smtp
