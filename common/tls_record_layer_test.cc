// TlsRecordLayer against OpenSSL's own record layer: after a real handshake (link contexts,
// memory BIOs) one or both ends take over, and every record must be what the other end expects.
#include "common/tls_record_layer.h"

#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "common/tls.h"

namespace rdv {
namespace {

enum Watching { kWatched, kNotWatched };

// A client and a server SSL joined by memory BIOs, handshake done (after Watch() on both ends
// when kWatched).
class Connection {
 public:
  // `client_suites`: the TLS 1.3 suites the client offers (all of the link context's by default).
  explicit Connection(Watching watching, const char* client_suites = nullptr) {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("tls_record_layer_test_" + std::to_string(::getpid()));
    auto identity = CreateLinkServerContext("", "", dir_.string(), "record-layer-test");
    EXPECT_TRUE(identity.ok()) << identity.status();
    server_ctx_ = std::move(identity->ctx);
    auto client_ctx = CreateLinkClientContext("");
    EXPECT_TRUE(client_ctx.ok()) << client_ctx.status();
    client_ctx_ = std::move(*client_ctx);
    TlsRecordLayer::CaptureSecrets(server_ctx_.get());
    TlsRecordLayer::CaptureSecrets(client_ctx_.get());
    to_client_ = BIO_new(BIO_s_mem());
    to_server_ = BIO_new(BIO_s_mem());
    client_ = NewEnd(client_ctx_.get(), false, to_client_, to_server_);
    server_ = NewEnd(server_ctx_.get(), true, to_server_, to_client_);
    if (client_suites != nullptr) SSL_set_ciphersuites(client_, client_suites);
    if (watching == kWatched) {
      TlsRecordLayer::Watch(client_);
      TlsRecordLayer::Watch(server_);
    }
    Handshake();
  }
  ~Connection() {
    SSL_free(client_);
    SSL_free(server_);
    BIO_free(to_client_);
    BIO_free(to_server_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  void Handshake() {
    for (int round = 0; round < 10; ++round) {
      int c = SSL_do_handshake(client_);
      int s = SSL_do_handshake(server_);
      if (c == 1 && s == 1) return;
    }
    FAIL() << "handshake did not finish: " << OpenSslErrors();
  }

  // Bytes an end wrote through OpenSSL (pending in the other end's read BIO), taken out.
  static std::string Take(BIO* bio) {
    std::string out(BIO_ctrl_pending(bio), '\0');
    if (!out.empty()) BIO_read(bio, out.data(), static_cast<int>(out.size()));
    return out;
  }
  static void Put(BIO* bio, std::string_view bytes) {
    BIO_write(bio, bytes.data(), static_cast<int>(bytes.size()));
  }
  // Everything OpenSSL's end decrypts of what is pending for it.
  static std::string ReadAll(SSL* ssl) {
    std::string out;
    char buffer[4096];
    int n;
    while ((n = SSL_read(ssl, buffer, sizeof(buffer))) > 0) out.append(buffer, n);
    return out;
  }

  SSL* client_ = nullptr;
  SSL* server_ = nullptr;
  BIO* to_client_;  // what the server wrote, for the client to read
  BIO* to_server_;

 private:
  // The SSL takes a reference to each BIO; the connection keeps its own.
  static SSL* NewEnd(SSL_CTX* ctx, bool server, BIO* in, BIO* out) {
    SSL* ssl = SSL_new(ctx);
    BIO_up_ref(in);
    BIO_up_ref(out);
    SSL_set_bio(ssl, in, out);
    if (server) {
      SSL_set_accept_state(ssl);
    } else {
      SSL_set_connect_state(ssl);
    }
    return ssl;
  }

  std::filesystem::path dir_;
  SslCtxPtr server_ctx_;
  SslCtxPtr client_ctx_;
};

std::string Pattern(size_t size) {
  std::string out(size, '\0');
  for (size_t i = 0; i < size; ++i) out[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
  return out;
}

// Opens everything in `ciphertext`, in pieces of `step` bytes as a socket might deliver it.
struct OpenedAll {
  std::string plaintext;
  RecordBuffer reply;
  bool peer_closed = false;
  absl::Status status;
};
OpenedAll OpenInPieces(TlsRecordLayer& layer, std::string_view ciphertext, size_t step) {
  OpenedAll all;
  std::string pending;
  std::string buffer(TlsRecordLayer::kMaxOpenedPerRecord * 4, '\0');
  for (size_t at = 0; at < ciphertext.size() && all.status.ok() && !all.peer_closed; at += step) {
    pending.append(ciphertext.substr(at, step));
    for (;;) {
      TlsRecordLayer::Opened opened = layer.Open(pending, buffer.data(), buffer.size(), all.reply);
      all.plaintext.append(buffer.data(), opened.produced);
      pending.erase(0, opened.consumed);
      all.status = opened.status;
      all.peer_closed = opened.peer_closed;
      if (opened.consumed == 0 || !opened.status.ok() || opened.peer_closed) break;
    }
  }
  return all;
}

TEST(TlsRecordLayerTest, TakeOverNeedsTheSecretsWatchedBeforeTheHandshake) {
  Connection c(kNotWatched);
  auto layer = TlsRecordLayer::TakeOver(c.client_);
  EXPECT_FALSE(layer.ok());
  EXPECT_NE(layer.status().message().find("Watch"), std::string::npos) << layer.status();
}

TEST(TlsRecordLayerTest, SealedRecordsAreReadByOpenSsl) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  ASSERT_TRUE(client.ok()) << client.status();
  std::string head = "frame header";
  std::string body = Pattern(100'000);
  RecordBuffer wire;
  // The pieces join across record boundaries; only the first `length` bytes are sealed.
  ASSERT_TRUE((*client)->Seal(head, body, head.size() + body.size() - 5, wire));
  EXPECT_EQ(wire.size(), head.size() + body.size() - 5 + 7 * TlsRecordLayer::kOverhead);
  Connection::Put(c.to_server_, wire);
  EXPECT_EQ(Connection::ReadAll(c.server_), head + body.substr(0, body.size() - 5));
}

TEST(TlsRecordLayerTest, OpensWhatOpenSslWroteInAnyPieces) {
  std::string message = Pattern(70'000);
  for (size_t step : {size_t{1}, size_t{7}, size_t{16'389}, size_t{1} << 20}) {
    SCOPED_TRACE(step);
    Connection c(kWatched);
    auto layer = TlsRecordLayer::TakeOver(c.client_);
    ASSERT_TRUE(layer.ok()) << layer.status();
    ASSERT_EQ(SSL_write(c.server_, message.data(), static_cast<int>(message.size())),
              static_cast<int>(message.size()));
    OpenedAll all = OpenInPieces(**layer, Connection::Take(c.to_client_), step);
    EXPECT_TRUE(all.status.ok()) << all.status;
    EXPECT_EQ(all.plaintext, message);
  }
}

TEST(TlsRecordLayerTest, EverySuiteALinkMayNegotiateWorksBothWays) {
  for (const char* suite :
       {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}) {
    SCOPED_TRACE(suite);
    Connection c(kWatched, suite);
    ASSERT_STREQ(SSL_CIPHER_get_name(SSL_get_current_cipher(c.client_)), suite);
    auto client = TlsRecordLayer::TakeOver(c.client_);
    ASSERT_TRUE(client.ok()) << client.status();
    std::string message = Pattern(20'000);
    RecordBuffer wire;
    ASSERT_TRUE((*client)->Seal(message, wire));
    Connection::Put(c.to_server_, wire);
    EXPECT_EQ(Connection::ReadAll(c.server_), message);
    SSL_write(c.server_, message.data(), static_cast<int>(message.size()));
    OpenedAll all = OpenInPieces(**client, Connection::Take(c.to_client_), 5000);
    EXPECT_TRUE(all.status.ok()) << all.status;
    EXPECT_EQ(all.plaintext, message);
  }
}

TEST(TlsRecordLayerTest, BothEndsTakeOverAndCloseNotifyEndsTheStream) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  auto server = TlsRecordLayer::TakeOver(c.server_);
  ASSERT_TRUE(client.ok() && server.ok());
  std::string message = Pattern(40'000);
  RecordBuffer wire;
  ASSERT_TRUE((*server)->Seal(message, wire));
  ASSERT_TRUE((*server)->SealCloseNotify(wire));
  std::string bytes(std::string_view(wire).data(), wire.size());
  bytes += "bytes after close_notify are not read";
  OpenedAll all = OpenInPieces(**client, bytes, bytes.size());
  EXPECT_TRUE(all.status.ok()) << all.status;
  EXPECT_TRUE(all.peer_closed);
  EXPECT_EQ(all.plaintext, message);
}

TEST(TlsRecordLayerTest, CloseNotifyReachesOpenSsl) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  ASSERT_TRUE(client.ok());
  RecordBuffer wire;
  ASSERT_TRUE((*client)->SealCloseNotify(wire));
  Connection::Put(c.to_server_, wire);
  char byte;
  EXPECT_EQ(SSL_read(c.server_, &byte, 1), 0);
  EXPECT_EQ(SSL_get_error(c.server_, 0), SSL_ERROR_ZERO_RETURN);
}

TEST(TlsRecordLayerTest, FollowsTheKeyUpdateOpenSslRequests) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  ASSERT_TRUE(client.ok());
  ASSERT_EQ(SSL_key_update(c.server_, SSL_KEY_UPDATE_REQUESTED), 1);
  std::string after = "sent under the server's next key";
  SSL_write(c.server_, after.data(), static_cast<int>(after.size()));
  OpenedAll all = OpenInPieces(**client, Connection::Take(c.to_client_), 1000);
  ASSERT_TRUE(all.status.ok()) << all.status;
  EXPECT_EQ(all.plaintext, after);
  EXPECT_EQ((*client)->key_updates_received(), 1u);
  // Asked to: our KeyUpdate goes back, and what follows is sealed under our next key.
  EXPECT_EQ((*client)->key_updates_sent(), 1u);
  ASSERT_FALSE(all.reply.empty());
  RecordBuffer& wire = all.reply;
  ASSERT_TRUE((*client)->Seal("and the client's too", wire));
  Connection::Put(c.to_server_, wire);
  EXPECT_EQ(Connection::ReadAll(c.server_), "and the client's too");
}

TEST(TlsRecordLayerTest, MovesToANewKeyAfterRecordsPerKey) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  ASSERT_TRUE(client.ok());
  (*client)->set_records_per_key(2);
  std::string message = Pattern(5 * TlsRecordLayer::kMaxPlaintext);
  RecordBuffer wire;
  ASSERT_TRUE((*client)->Seal(message, wire));
  EXPECT_EQ((*client)->key_updates_sent(), 2u);
  Connection::Put(c.to_server_, wire);
  EXPECT_EQ(Connection::ReadAll(c.server_), message);
}

TEST(TlsRecordLayerTest, RefusesAForgedRecordAndKeepsWhatCameBefore) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  auto server = TlsRecordLayer::TakeOver(c.server_);
  ASSERT_TRUE(client.ok() && server.ok());
  RecordBuffer wire;
  ASSERT_TRUE((*server)->Seal("genuine", wire));
  size_t second = wire.size();
  ASSERT_TRUE((*server)->Seal("tampered", wire));
  std::string bytes(std::string_view(wire).data(), wire.size());
  bytes[second + TlsRecordLayer::kHeaderSize + 2] ^= 0x40;
  OpenedAll all = OpenInPieces(**client, bytes, bytes.size());
  EXPECT_EQ(all.plaintext, "genuine");
  EXPECT_EQ(all.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(all.status.message().find("authentication failed"), std::string::npos) << all.status;
}

TEST(TlsRecordLayerTest, RefusesARecordThatIsNotApplicationData) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  ASSERT_TRUE(client.ok());
  std::string plain_alert("\x15\x03\x03\x00\x02\x02\x28", 7);  // an unprotected alert
  OpenedAll all = OpenInPieces(**client, plain_alert, plain_alert.size());
  EXPECT_EQ(all.status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(all.status.message().find("record type 21"), std::string::npos) << all.status;
}

TEST(TlsRecordLayerTest, WaitsForOutputSpaceRatherThanOverrunning) {
  Connection c(kWatched);
  auto client = TlsRecordLayer::TakeOver(c.client_);
  auto server = TlsRecordLayer::TakeOver(c.server_);
  ASSERT_TRUE(client.ok() && server.ok());
  RecordBuffer wire;
  ASSERT_TRUE((*server)->Seal(Pattern(1000), wire));
  char small[100];
  RecordBuffer reply;
  TlsRecordLayer::Opened opened = (*client)->Open(wire, small, sizeof(small), reply);
  EXPECT_TRUE(opened.status.ok());
  EXPECT_EQ(opened.consumed, 0u);
  EXPECT_EQ(opened.produced, 0u);
}

// Two ends made from fixed secrets: `a` writes what `b` reads.
struct Ends {
  std::unique_ptr<TlsRecordLayer> a;
  std::unique_ptr<TlsRecordLayer> b;
};
Ends MakeEnds() {
  std::string one(32, '\x11');
  std::string two(32, '\x22');
  auto a = TlsRecordLayer::FromSecrets(NID_aes_128_gcm, one, two);
  auto b = TlsRecordLayer::FromSecrets(NID_aes_128_gcm, two, one);
  EXPECT_TRUE(a.ok() && b.ok());
  return {std::move(*a), std::move(*b)};
}

TEST(TlsRecordLayerTest, InnerPlaintextRulesOfRfc8446) {
  struct Case {
    std::string inner;
    std::string plaintext;  // what the reader hands on
    std::string error;      // "" when accepted
  };
  const Case cases[] = {
      {std::string("data\x17\0\0\0", 8), "data", ""},  // padding after the type
      {std::string("\x04\0\0\x02"
                   "ab\x16",
                   7),
       "", ""},  // NewSessionTicket: ignored
      {std::string("\0\0\0", 3), "", "no content type"},
      {std::string("x\x15", 2), "", "malformed alert"},
      {std::string("\x01\x28\x15", 3), "", "peer sent TLS alert 40"},
      {std::string("hello\x14", 6), "", "unexpected content type 20"},
      {std::string("\x18\0\0\x01\x02\x16", 6), "", "malformed KeyUpdate"},
      {std::string("\x18\0\0\x05\x00\x16", 6), "", "split across records"},
      {std::string("\x01\0\0\0\x16", 5), "", "post-handshake message type 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.error);
    Ends ends = MakeEnds();
    RecordBuffer wire;
    ASSERT_TRUE(ends.a->SealInnerPlaintext(c.inner, wire));
    OpenedAll all = OpenInPieces(*ends.b, wire, wire.size());
    EXPECT_EQ(all.plaintext, c.plaintext);
    if (c.error.empty()) {
      EXPECT_TRUE(all.status.ok()) << all.status;
    } else {
      EXPECT_NE(all.status.message().find(c.error), std::string::npos) << all.status;
    }
  }
}

TEST(TlsRecordLayerTest, BuiltFromSecretsTheEndsFollowEachOthersKeyUpdates) {
  Ends ends = MakeEnds();
  ends.a->set_records_per_key(1);
  RecordBuffer wire;
  ASSERT_TRUE(ends.a->Seal(Pattern(3 * TlsRecordLayer::kMaxPlaintext), wire));
  OpenedAll all = OpenInPieces(*ends.b, wire, 1000);
  EXPECT_TRUE(all.status.ok()) << all.status;
  EXPECT_EQ(all.plaintext, Pattern(3 * TlsRecordLayer::kMaxPlaintext));
  EXPECT_EQ(ends.b->key_updates_received(), 2u);
  EXPECT_FALSE(TlsRecordLayer::FromSecrets(NID_aes_128_gcm, "short", "short").ok());
  EXPECT_FALSE(
      TlsRecordLayer::FromSecrets(NID_des_ede3_cbc, std::string(32, 'x'), std::string(32, 'x'))
          .ok());
}

TEST(RecordBufferTest, GrowsKeepingItsBytesAndSwaps) {
  RecordBuffer buffer;
  EXPECT_TRUE(buffer.empty());
  buffer.append("abc", 3);
  std::string big = Pattern(100'000);
  std::memcpy(buffer.Extend(big.size()), big.data(), big.size());
  EXPECT_EQ(std::string_view(buffer), "abc" + big);
  EXPECT_GE(buffer.capacity(), buffer.size());
  buffer.Truncate(2);
  EXPECT_EQ(std::string_view(buffer), "ab");
  RecordBuffer other;
  other.swap(buffer);
  EXPECT_TRUE(buffer.empty());
  EXPECT_EQ(buffer.capacity(), 0u);
  EXPECT_EQ(std::string_view(other), "ab");
  other.clear();
  EXPECT_TRUE(other.empty());
  EXPECT_GE(other.capacity(), big.size());
}

// What a reader holding the start of a record still needs: the header first, then the body the
// header announces.
TEST(TlsRecordLayerTest, BytesToCompleteRecordCountsHeaderThenBody) {
  const std::string record = std::string("\x17\x03\x03\x01\x02", 5) + std::string(0x102, 'x');
  EXPECT_EQ(TlsRecordLayer::BytesToCompleteRecord(""), 5u);
  EXPECT_EQ(TlsRecordLayer::BytesToCompleteRecord(record.substr(0, 3)), 2u);
  EXPECT_EQ(TlsRecordLayer::BytesToCompleteRecord(record.substr(0, 5)), 0x102u);
  EXPECT_EQ(TlsRecordLayer::BytesToCompleteRecord(record.substr(0, 100)), 0x102u - 95);
  EXPECT_EQ(TlsRecordLayer::BytesToCompleteRecord(record), 0u);
  EXPECT_EQ(TlsRecordLayer::BytesToCompleteRecord(record + "\x17"), 0u);
}

}  // namespace
}  // namespace rdv
