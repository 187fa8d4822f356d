#include "common/socks5.h"

#include <string>

#include "gtest/gtest.h"

namespace rdv::socks5 {
namespace {

std::string Bytes(std::initializer_list<int> values) {
  std::string out;
  for (int value : values) out.push_back(static_cast<char>(value));
  return out;
}

// Every proper prefix needs more bytes; the whole message parses to its full length.
template <typename Message, typename Parse>
Message ParseAtEverySplit(const std::string& wire, Parse parse) {
  for (size_t cut = 0; cut < wire.size(); ++cut) {
    Message partial;
    absl::StatusOr<size_t> consumed = parse(std::string_view(wire).substr(0, cut), partial);
    EXPECT_TRUE(consumed.ok()) << "cut " << cut << ": " << consumed.status();
    if (consumed.ok()) {
      EXPECT_EQ(*consumed, 0u) << "cut " << cut;
    }
  }
  Message message;
  std::string with_trailer = wire + "trailing bytes";
  absl::StatusOr<size_t> consumed = parse(with_trailer, message);
  EXPECT_TRUE(consumed.ok()) << consumed.status();
  if (consumed.ok()) {
    EXPECT_EQ(*consumed, wire.size());
  }
  return message;
}

TEST(Socks5Greeting, ParsesAtEverySplit) {
  Greeting greeting = ParseAtEverySplit<Greeting>(Bytes({5, 2, 0, 2}), ParseGreeting);
  EXPECT_EQ(greeting.methods, (std::vector<uint8_t>{0, 2}));
}

TEST(Socks5Greeting, RejectsMalformed) {
  Greeting greeting;
  EXPECT_EQ(ParseGreeting(Bytes({4, 1, 0}), greeting).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseGreeting(Bytes({5, 0}), greeting).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseGreeting("GET / HTTP/1.1\r\n", greeting).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Socks5Greeting, ChoosesMethod) {
  Greeting both{{0, 2}};
  Greeting none_only{{0}};
  Greeting gssapi_only{{1}};
  EXPECT_EQ(ChooseMethod(both, false), kMethodNoAuth);
  EXPECT_EQ(ChooseMethod(both, true), kMethodUserPass);
  EXPECT_EQ(ChooseMethod(none_only, true), kMethodNoneAcceptable);
  EXPECT_EQ(ChooseMethod(gssapi_only, false), kMethodNoneAcceptable);
  EXPECT_EQ(EncodeMethodSelection(kMethodNoneAcceptable), Bytes({5, 0xFF}));
}

TEST(Socks5Credentials, ParsesAtEverySplit) {
  Credentials credentials =
      ParseAtEverySplit<Credentials>(EncodeCredentials("alice", "s3cret"), ParseCredentials);
  EXPECT_EQ(credentials.username, "alice");
  EXPECT_EQ(credentials.password, "s3cret");
  Credentials empty = ParseAtEverySplit<Credentials>(Bytes({1, 0, 0}), ParseCredentials);
  EXPECT_EQ(empty.username, "");
  EXPECT_EQ(empty.password, "");
}

TEST(Socks5Credentials, RejectsWrongVersionAndEncodesStatus) {
  Credentials credentials;
  EXPECT_EQ(ParseCredentials(Bytes({5, 1, 'a', 1, 'b'}), credentials).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeAuthStatus(true), Bytes({1, 0}));
  EXPECT_EQ(EncodeAuthStatus(false), Bytes({1, 1}));
}

TEST(Socks5Request, DomainAtEverySplit) {
  absl::StatusOr<std::string> wire =
      EncodeRequest(kCommandConnect, AddressType::kDomain, "www.orang.com", 443);
  ASSERT_TRUE(wire.ok());
  EXPECT_EQ(wire->substr(0, 5), Bytes({5, 1, 0, 3, 13}));
  Request request = ParseAtEverySplit<Request>(*wire, ParseRequest);
  EXPECT_EQ(request.command, kCommandConnect);
  EXPECT_EQ(request.address_type, AddressType::kDomain);
  EXPECT_EQ(request.host, "www.orang.com");
  EXPECT_EQ(request.port, 443);
}

TEST(Socks5Request, Ipv4AtEverySplit) {
  Request request =
      ParseAtEverySplit<Request>(Bytes({5, 1, 0, 1, 10, 0, 0, 5, 0x1F, 0x90}), ParseRequest);
  EXPECT_EQ(request.address_type, AddressType::kIpv4);
  EXPECT_EQ(request.host, "10.0.0.5");
  EXPECT_EQ(request.port, 8080);
}

TEST(Socks5Request, Ipv6AtEverySplit) {
  absl::StatusOr<std::string> wire =
      EncodeRequest(kCommandConnect, AddressType::kIpv6, "2001:db8::1", 22);
  ASSERT_TRUE(wire.ok());
  EXPECT_EQ(wire->size(), 4u + 16u + 2u);
  Request request = ParseAtEverySplit<Request>(*wire, ParseRequest);
  EXPECT_EQ(request.address_type, AddressType::kIpv6);
  EXPECT_EQ(request.host, "2001:db8::1");
  EXPECT_EQ(request.port, 22);
}

TEST(Socks5Request, UnsupportedCommandParsesForReply07) {
  absl::StatusOr<std::string> wire =
      EncodeRequest(kCommandUdpAssociate, AddressType::kDomain, "x.example", 53);
  ASSERT_TRUE(wire.ok());
  Request request = ParseAtEverySplit<Request>(*wire, ParseRequest);
  EXPECT_EQ(request.command, kCommandUdpAssociate);
  EXPECT_EQ(EncodeReply(Reply::kCommandNotSupported), Bytes({5, 7, 0, 1, 0, 0, 0, 0, 0, 0}));
}

TEST(Socks5Request, UnknownAddressTypeIsUnimplementedForReply08) {
  Request request;
  absl::StatusOr<size_t> consumed = ParseRequest(Bytes({5, 1, 0, 9, 1, 2, 3}), request);
  EXPECT_EQ(consumed.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(EncodeReply(Reply::kAddressTypeNotSupported), Bytes({5, 8, 0, 1, 0, 0, 0, 0, 0, 0}));
}

TEST(Socks5Request, RejectsMalformed) {
  Request request;
  EXPECT_EQ(ParseRequest(Bytes({4, 1, 0, 1}), request).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRequest(Bytes({5, 1, 7}), request).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseRequest(Bytes({5, 1, 0, 3, 0, 0, 80}), request).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Socks5Request, EncodeRejectsBadHosts) {
  EXPECT_FALSE(EncodeRequest(kCommandConnect, AddressType::kIpv4, "www", 1).ok());
  EXPECT_FALSE(EncodeRequest(kCommandConnect, AddressType::kIpv6, "10.0.0.1", 1).ok());
  EXPECT_FALSE(EncodeRequest(kCommandConnect, AddressType::kDomain, "", 1).ok());
  EXPECT_FALSE(EncodeRequest(kCommandConnect, AddressType::kDomain, std::string(256, 'a'), 1).ok());
}

TEST(Socks5Reply, SuccessShape) {
  EXPECT_EQ(EncodeReply(Reply::kSucceeded), Bytes({5, 0, 0, 1, 0, 0, 0, 0, 0, 0}));
}

}  // namespace
}  // namespace rdv::socks5
