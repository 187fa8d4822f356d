#include "relay/client_hello.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace rdv {
namespace {

using Outcome = ClientHelloParser::Outcome;
using ErrorKind = ClientHelloParser::ErrorKind;

struct HelloOptions {
  const char* server_name = "www.orang.com";  // nullptr: no SNI
  size_t alpn_bytes = 0;                      // pad the ALPN list to about this size
  size_t max_fragment = 0;                    // 0: OpenSSL's default (16 KiB records)
  int max_version = TLS1_3_VERSION;
};

// The bytes a real OpenSSL client sends first, captured through a memory BIO.
std::string RealClientHello(const HelloOptions& options = {}) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL_CTX_set_max_proto_version(ctx, options.max_version);
  SSL* ssl = SSL_new(ctx);
  if (options.server_name != nullptr) SSL_set_tlsext_host_name(ssl, options.server_name);
  if (options.alpn_bytes > 0) {
    std::string alpn;
    for (int i = 0; alpn.size() < options.alpn_bytes; ++i) {
      std::string name = "protocol-" + std::to_string(i) + std::string(200, 'x');
      alpn.push_back(static_cast<char>(name.size()));
      alpn.append(name);
    }
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(alpn.data()),
                        static_cast<unsigned>(alpn.size()));
  }
  if (options.max_fragment > 0) SSL_set_max_send_fragment(ssl, options.max_fragment);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  SSL_set_connect_state(ssl);
  EXPECT_EQ(SSL_do_handshake(ssl), -1);  // wants the server's answer
  char* data = nullptr;
  long size = BIO_get_mem_data(out, &data);
  std::string hello(data, static_cast<size_t>(size));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return hello;
}

// The handshake bytes of `records` (record headers dropped).
std::string HandshakeOf(const std::string& records) {
  std::string out;
  for (size_t at = 0; at + 5 <= records.size();) {
    size_t length =
        (static_cast<uint8_t>(records[at + 3]) << 8) | static_cast<uint8_t>(records[at + 4]);
    out.append(records, at + 5, length);
    at += 5 + length;
  }
  return out;
}

size_t RecordCount(const std::string& records) {
  size_t count = 0;
  for (size_t at = 0; at + 5 <= records.size(); ++count) {
    at +=
        5 + ((static_cast<uint8_t>(records[at + 3]) << 8) | static_cast<uint8_t>(records[at + 4]));
  }
  return count;
}

// `handshake` cut into handshake records of `fragment` bytes.
std::string Records(const std::string& handshake, size_t fragment, uint8_t type = 22) {
  std::string out;
  for (size_t at = 0; at < handshake.size(); at += fragment) {
    size_t length = std::min(fragment, handshake.size() - at);
    out.push_back(static_cast<char>(type));
    out.push_back(3);
    out.push_back(1);
    out.push_back(static_cast<char>(length >> 8));
    out.push_back(static_cast<char>(length & 0xff));
    out.append(handshake, at, length);
  }
  return out;
}

ClientHelloParser FeedAll(std::string_view bytes, size_t chunk = 0) {
  ClientHelloParser parser;
  if (chunk == 0) chunk = bytes.size() > 0 ? bytes.size() : 1;
  for (size_t at = 0; at < bytes.size(); at += chunk) parser.Feed(bytes.substr(at, chunk));
  return parser;
}

TEST(ClientHelloTest, RealTls13HelloInOneRead) {
  std::string hello = RealClientHello();
  ClientHelloParser parser;
  ASSERT_EQ(parser.Feed(hello), Outcome::kServerName) << parser.error();
  EXPECT_EQ(parser.server_name(), "www.orang.com");
  EXPECT_EQ(parser.bytes(), hello);
}

TEST(ClientHelloTest, RealTls12Hello) {
  HelloOptions options;
  options.max_version = TLS1_2_VERSION;
  options.server_name = "mail.example.org";
  ClientHelloParser parser = FeedAll(RealClientHello(options));
  ASSERT_EQ(parser.outcome(), Outcome::kServerName) << parser.error();
  EXPECT_EQ(parser.server_name(), "mail.example.org");
}

TEST(ClientHelloTest, ByteByByteNeedsMoreUntilTheLastByte) {
  std::string hello = RealClientHello();
  ClientHelloParser parser;
  for (size_t i = 0; i + 1 < hello.size(); ++i) {
    ASSERT_EQ(parser.Feed(hello.substr(i, 1)), Outcome::kNeedMore) << "at byte " << i;
  }
  ASSERT_EQ(parser.Feed(hello.substr(hello.size() - 1)), Outcome::kServerName);
  EXPECT_EQ(parser.server_name(), "www.orang.com");
  EXPECT_EQ(parser.bytes(), hello);
}

TEST(ClientHelloTest, LargeHelloInSeveralRecordsFromOpenSsl) {
  HelloOptions options;
  options.alpn_bytes = 3000;
  options.max_fragment = 512;
  std::string hello = RealClientHello(options);
  ASSERT_GT(RecordCount(hello), 5u);
  for (size_t chunk : {hello.size(), size_t{1}, size_t{7}, size_t{511}, size_t{517}}) {
    ClientHelloParser parser = FeedAll(hello, chunk);
    ASSERT_EQ(parser.outcome(), Outcome::kServerName)
        << "chunk " << chunk << ": " << parser.error();
    EXPECT_EQ(parser.server_name(), "www.orang.com");
  }
}

TEST(ClientHelloTest, AnyRecordSplitAndTcpSplit) {
  std::string handshake = HandshakeOf(RealClientHello());
  for (size_t fragment : {1, 2, 3, 4, 5, 40, 100, 1000}) {
    std::string records = Records(handshake, fragment);
    if (RecordCount(records) > ClientHelloParser::kMaxRecords) {
      EXPECT_EQ(FeedAll(records).error_kind(), ErrorKind::kTooLarge) << fragment;
      continue;
    }
    for (size_t chunk : {size_t{0}, size_t{1}, size_t{3}, size_t{64}}) {
      ClientHelloParser parser = FeedAll(records, chunk);
      ASSERT_EQ(parser.outcome(), Outcome::kServerName)
          << "fragment " << fragment << " chunk " << chunk << ": " << parser.error();
      EXPECT_EQ(parser.server_name(), "www.orang.com");
    }
  }
}

TEST(ClientHelloTest, NoServerName) {
  HelloOptions options;
  options.server_name = nullptr;
  ClientHelloParser parser = FeedAll(RealClientHello(options));
  EXPECT_EQ(parser.outcome(), Outcome::kNoServerName) << parser.error();
}

TEST(ClientHelloTest, NameIsLowercased) {
  HelloOptions options;
  options.server_name = "WWW.Orang.COM";
  ClientHelloParser parser = FeedAll(RealClientHello(options));
  ASSERT_EQ(parser.outcome(), Outcome::kServerName);
  EXPECT_EQ(parser.server_name(), "www.orang.com");
}

TEST(ClientHelloTest, InvalidHostNamesAreRefused) {
  for (const char* name : {"bad_name.com", "a..b", "-a.com", "1.2.3.4", "x.com.", "a b"}) {
    HelloOptions options;
    options.server_name = name;
    ClientHelloParser parser = FeedAll(RealClientHello(options));
    EXPECT_EQ(parser.outcome(), Outcome::kError) << name;
    EXPECT_EQ(parser.error_kind(), ErrorKind::kBadServerName) << name;
  }
}

TEST(ClientHelloTest, BytesAfterTheHelloAreKept) {
  std::string hello = RealClientHello();
  std::string more = hello + "\x17\x03\x03\x00\x01X";
  ClientHelloParser parser;
  ASSERT_EQ(parser.Feed(more), Outcome::kServerName);
  parser.Feed("tail");
  EXPECT_EQ(parser.TakeBytes(), more + "tail");
}

TEST(ClientHelloTest, PlainHttpIsNotTlsAtTheFirstByte) {
  ClientHelloParser parser;
  EXPECT_EQ(parser.Feed("G"), Outcome::kError);
  EXPECT_EQ(parser.error_kind(), ErrorKind::kNotTls);
}

TEST(ClientHelloTest, Sslv2HelloIsRefused) {
  // SSLv2-compatible ClientHello header: 2-byte length with the high bit set, type 1.
  ClientHelloParser parser;
  EXPECT_EQ(parser.Feed(std::string("\x80\x2e\x01\x03\x01", 5)), Outcome::kError);
  EXPECT_EQ(parser.error_kind(), ErrorKind::kNotTls);
  EXPECT_NE(parser.error().find("SSLv2"), std::string::npos);
}

TEST(ClientHelloTest, BadRecordHeaders) {
  struct Case {
    std::string bytes;
    ErrorKind kind;
  };
  std::vector<Case> cases = {
      {std::string("\x16\x02\x01\x00\x10", 5), ErrorKind::kNotTls},          // version 2.1
      {std::string("\x16\x03\x01\x00\x00", 5), ErrorKind::kMalformed},       // empty record
      {std::string("\x16\x03\x01\x40\x01", 5), ErrorKind::kMalformed},       // 2^14 + 1
      {std::string("\x15\x03\x01\x00\x02\x02\x28", 7), ErrorKind::kNotTls},  // an alert
      {std::string("\x16\x03\x01\x00\x04\x02\x00\x00\x00", 9),
       ErrorKind::kMalformed},  // ServerHello
      {std::string("\x16\x03\x01\x00\x04\x01\x00\x40\x00", 9),
       ErrorKind::kTooLarge},  // 16 KiB body
  };
  for (const Case& c : cases) {
    ClientHelloParser parser = FeedAll(c.bytes, 1);
    EXPECT_EQ(parser.outcome(), Outcome::kError) << testing::PrintToString(c.bytes);
    EXPECT_EQ(parser.error_kind(), c.kind) << parser.error();
  }
}

TEST(ClientHelloTest, NonHandshakeRecordInTheMiddle) {
  std::string handshake = HandshakeOf(RealClientHello());
  std::string records =
      Records(handshake.substr(0, 100), 100) + Records(handshake.substr(100), 1000, /*type=*/20);
  ClientHelloParser parser = FeedAll(records);
  EXPECT_EQ(parser.outcome(), Outcome::kError);
  EXPECT_EQ(parser.error_kind(), ErrorKind::kMalformed);
}

TEST(ClientHelloTest, TooManyBytesWithoutAnEnd) {
  // A ClientHello that claims 16 KiB - 4 and never ends, in records of 100 bytes.
  std::string handshake = std::string("\x01\x00\x3f\xfc", 4) + std::string(20000, 'a');
  std::string records = Records(handshake, 100);
  ClientHelloParser parser;
  for (size_t at = 0; at < records.size() && parser.outcome() == Outcome::kNeedMore; at += 333) {
    parser.Feed(std::string_view(records).substr(at, 333));
  }
  EXPECT_EQ(parser.outcome(), Outcome::kError);
  EXPECT_EQ(parser.error_kind(), ErrorKind::kTooLarge);
  EXPECT_LE(parser.bytes().size(), ClientHelloParser::kMaxBufferedBytes + 333);

  // The same in one big record stream of 16 KiB records: the limit on buffered bytes holds.
  std::string big = Records(std::string("\x01\x00\x3f\xfc", 4) + std::string(40000, 'a'), 16384);
  ClientHelloParser one;
  for (size_t at = 0; at < big.size() && one.outcome() == Outcome::kNeedMore; at += 1000) {
    one.Feed(std::string_view(big).substr(at, 1000));
  }
  EXPECT_EQ(one.outcome(), Outcome::kError);
  EXPECT_LE(one.bytes().size(), ClientHelloParser::kMaxBufferedBytes + 1000);
}

TEST(ClientHelloTest, EveryLengthFieldOffByOne) {
  // Bumping or lowering any single byte of the handshake body either leaves a decision the
  // parser can make (possibly a different name) or is refused; it never reads out of bounds
  // (run under ASan) and never waits forever once the message is complete.
  std::string handshake = HandshakeOf(RealClientHello());
  for (size_t i = 4; i < handshake.size(); ++i) {
    for (int delta : {-1, 1}) {
      std::string mutated = handshake;
      mutated[i] = static_cast<char>(static_cast<uint8_t>(mutated[i]) + delta);
      ClientHelloParser parser = FeedAll(Records(mutated, 16384));
      EXPECT_NE(parser.outcome(), Outcome::kNeedMore) << "byte " << i;
    }
  }
}

TEST(ClientHelloTest, TruncatedExtensions) {
  std::string handshake = HandshakeOf(RealClientHello());
  // Shorten the message by one byte and fix the handshake length: the extensions vector no
  // longer fits.
  std::string cut = handshake.substr(0, handshake.size() - 1);
  size_t body = cut.size() - 4;
  cut[1] = static_cast<char>(body >> 16);
  cut[2] = static_cast<char>(body >> 8);
  cut[3] = static_cast<char>(body);
  ClientHelloParser parser = FeedAll(Records(cut, 16384));
  EXPECT_EQ(parser.outcome(), Outcome::kError);
  EXPECT_EQ(parser.error_kind(), ErrorKind::kMalformed);
}

TEST(ClientHelloTest, SplitsAgreeOnRandomMutations) {
  // Whatever the input, the decision does not depend on how it was cut.
  std::string hello = RealClientHello();
  std::mt19937 rng(42);
  for (int round = 0; round < 2000; ++round) {
    std::string mutated = hello;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) mutated[rng() % mutated.size()] = static_cast<char>(rng());
    ClientHelloParser whole = FeedAll(mutated);
    ClientHelloParser pieces = FeedAll(mutated, 1 + rng() % 50);
    ASSERT_EQ(whole.outcome(), pieces.outcome()) << "round " << round;
    EXPECT_EQ(whole.server_name(), pieces.server_name());
    EXPECT_EQ(whole.error_kind(), pieces.error_kind());
  }
}

}  // namespace
}  // namespace rdv
