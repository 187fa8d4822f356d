#include "common/secure_channel.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <deque>
#include <filesystem>
#include <optional>
#include <string>

#include "absl/strings/escaping.h"
#include "common/tls.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace rdv {
namespace {

using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// ---- PairId / TunnelPsk known answers -------------------------------------------------------

// Expected values computed in the shell with:
//   printf 'rdv-pair-id-v1\0site-b' | openssl dgst -sha256 -hmac 'correct horse battery staple'
// (first 32 hex digits) and
//   printf 'rdv-tunnel-psk-v1\0pair\0site-b' | openssl dgst -sha256 -hmac '<secret>'
//   printf 'rdv-tunnel-psk-v1\0private\0db' | openssl dgst -sha256 -hmac '<secret>'
TEST(PairIdTest, KnownAnswer) {
  EXPECT_EQ(PairId("correct horse battery staple", "site-b"), "c5730127ca8d9a820d29e24dae33254f");
  EXPECT_EQ(PairId("another secret, 16+ bytes", "site-b"), "961d385946eff8fbc8286094809da4c9");
}

TEST(TunnelPskTest, KnownAnswer) {
  EXPECT_EQ(absl::BytesToHexString(TunnelPsk("correct horse battery staple", "pair", "site-b")),
            "90c3975f1c0b8e551da438efbff95cf76b4776db9d8c8c06ca7995982e1db337");
  EXPECT_EQ(absl::BytesToHexString(TunnelPsk("correct horse battery staple", "private", "db")),
            "d84eb402f54c0e31d9a323fe24e4d7ca56038f7006c87587c3a93dbb274288a5");
}

TEST(TunnelPskTest, KindAndNameAreSeparated) {
  // The 0x00 separators keep ("pair", "x") and ("pai", "rx") apart.
  EXPECT_NE(TunnelPsk("secret", "pair", "x"), TunnelPsk("secret", "pai", "rx"));
  EXPECT_EQ(TunnelPsk("secret", "pair", "x").size(), 32u);
}

// ---- Certificates for the tests ---------------------------------------------------------------

struct KeyAndCert {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  ~KeyAndCert() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
};

void AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  ASSERT_NE(ext, nullptr);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A P-256 certificate for `common_name`, signed by `issuer` (self-signed when null).
void MakeCertificate(KeyAndCert& out, const char* common_name, const KeyAndCert* issuer, bool is_ca,
                     long serial) {
  out.key = EVP_EC_gen("P-256");
  ASSERT_NE(out.key, nullptr);
  out.cert = X509_new();
  X509_set_version(out.cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(out.cert), serial);
  X509_gmtime_adj(X509_getm_notBefore(out.cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(out.cert), 24 * 3600);
  X509_set_pubkey(out.cert, out.key);
  X509_NAME* name = X509_get_subject_name(out.cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
  X509* issuer_cert = issuer ? issuer->cert : out.cert;
  X509_set_issuer_name(out.cert, X509_get_subject_name(issuer_cert));
  AddExtension(out.cert, issuer_cert, NID_basic_constraints,
               is_ca ? "critical,CA:TRUE" : "CA:FALSE");
  if (is_ca) AddExtension(out.cert, issuer_cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExtension(out.cert, issuer_cert, NID_subject_key_identifier, "hash");
  ASSERT_GT(X509_sign(out.cert, issuer ? issuer->key : out.key, EVP_sha256()), 0);
}

void WritePem(const std::string& path, X509* cert) {
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_X509(f, cert);
  std::fclose(f);
}

void WritePem(const std::string& path, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
}

// Files under a fresh directory: a CA, a leaf it signed, a second unrelated CA, and a
// self-signed certificate.
class CertificateFiles {
 public:
  CertificateFiles() {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("secure_channel_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  ~CertificateFiles() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void Generate() {
    KeyAndCert ca, leaf, other_ca, self_signed;
    ASSERT_NO_FATAL_FAILURE(MakeCertificate(ca, "rdv test CA", nullptr, true, 1));
    ASSERT_NO_FATAL_FAILURE(MakeCertificate(leaf, "db.serving-agent", &ca, false, 2));
    ASSERT_NO_FATAL_FAILURE(MakeCertificate(other_ca, "some other CA", nullptr, true, 3));
    ASSERT_NO_FATAL_FAILURE(MakeCertificate(self_signed, "self-signed", nullptr, false, 4));
    WritePem(Path("ca.pem"), ca.cert);
    WritePem(Path("leaf.pem"), leaf.cert);
    WritePem(Path("leaf-key.pem"), leaf.key);
    WritePem(Path("other-ca.pem"), other_ca.cert);
    WritePem(Path("self.pem"), self_signed.cert);
    WritePem(Path("self-key.pem"), self_signed.key);
    leaf_fingerprint_ = CertificateFingerprint(leaf.cert);
    self_fingerprint_ = CertificateFingerprint(self_signed.cert);
  }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  const std::string& leaf_fingerprint() const { return leaf_fingerprint_; }
  const std::string& self_fingerprint() const { return self_fingerprint_; }

 private:
  std::filesystem::path dir_;
  std::string leaf_fingerprint_;
  std::string self_fingerprint_;
};

// ---- Two channels back to back ----------------------------------------------------------------

// One end of the pipe. `direct` wiring hands ciphertext straight to the peer's OnCiphertext from
// inside SendCiphertext (the re-entrant case); otherwise it is queued and Shuttle() moves it.
class End : public SecureChannel::Handler {
 public:
  void SendCiphertext(std::string_view bytes) override {
    // Several records may come in one piece: track the largest record.
    records.append(bytes);
    while (records.size() >= 5) {
      size_t length = (static_cast<uint8_t>(records[3]) << 8) | static_cast<uint8_t>(records[4]);
      if (records.size() < 5 + length) break;
      largest_record = std::max(largest_record, 5 + length);
      records.erase(0, 5 + length);
    }
    if (direct && peer != nullptr) {
      peer->channel->OnCiphertext(bytes);
    } else {
      outbox.emplace_back(bytes);
    }
  }
  void OnSecured() override {
    ++secured_calls;
    if (!send_on_secured.empty()) channel->Send(send_on_secured);
  }
  void OnPlaintext(std::string_view plaintext) override {
    received.append(plaintext);
    if (echo) channel->Send(plaintext);
  }
  void OnChannelClosed(const absl::Status& status) override {
    ++closed_calls;
    closed = status;
  }

  std::unique_ptr<SecureChannel> channel;
  End* peer = nullptr;
  bool direct = false;
  bool echo = false;
  std::string send_on_secured;
  std::deque<std::string> outbox;
  std::string received;
  std::string records;  // ciphertext not yet split into whole records
  size_t largest_record = 0;
  int secured_calls = 0;
  int closed_calls = 0;
  std::optional<absl::Status> closed;
};

class SecureChannelTest : public ::testing::Test {
 protected:
  void Connect(const SecureChannelOptions& client_options,
               const SecureChannelOptions& server_options, bool direct) {
    client_.peer = &server_;
    server_.peer = &client_;
    client_.direct = server_.direct = direct;
    auto client = SecureChannel::Create(client_options, client_);
    ASSERT_TRUE(client.ok()) << client.status();
    auto server = SecureChannel::Create(server_options, server_);
    ASSERT_TRUE(server.ok()) << server.status();
    client_.channel = std::move(*client);
    server_.channel = std::move(*server);
    server_.channel->Start();
    client_.channel->Start();
    Shuttle();
  }

  // Moves queued ciphertext both ways until both outboxes stay empty.
  void Shuttle() {
    while (!client_.outbox.empty() || !server_.outbox.empty()) {
      while (!client_.outbox.empty()) {
        std::string bytes = std::move(client_.outbox.front());
        client_.outbox.pop_front();
        server_.channel->OnCiphertext(bytes);
      }
      while (!server_.outbox.empty()) {
        std::string bytes = std::move(server_.outbox.front());
        server_.outbox.pop_front();
        client_.channel->OnCiphertext(bytes);
      }
    }
  }

  static SecureChannelOptions Psk(bool is_client, std::string_view secret = "pairing secret!!") {
    SecureChannelOptions options;
    options.is_client = is_client;
    options.psk = TunnelPsk(secret, "pair", "site-b");
    return options;
  }

  void ExpectBothSecured() {
    EXPECT_TRUE(client_.channel->secured());
    EXPECT_TRUE(server_.channel->secured());
    EXPECT_TRUE(client_.channel->user_space_records());
    EXPECT_TRUE(server_.channel->user_space_records());
    EXPECT_EQ(client_.secured_calls, 1);
    EXPECT_EQ(server_.secured_calls, 1);
    EXPECT_FALSE(client_.closed.has_value()) << *client_.closed;
    EXPECT_FALSE(server_.closed.has_value()) << *server_.closed;
  }

  void ExpectBothFailed(absl::StatusCode code) {
    ASSERT_TRUE(client_.closed.has_value());
    ASSERT_TRUE(server_.closed.has_value());
    EXPECT_EQ(client_.closed->code(), code) << *client_.closed;
    EXPECT_EQ(server_.closed->code(), code) << *server_.closed;
    EXPECT_EQ(client_.closed_calls, 1);
    EXPECT_EQ(server_.closed_calls, 1);
    EXPECT_FALSE(client_.channel->secured());
    EXPECT_FALSE(server_.channel->secured());
    EXPECT_EQ(client_.secured_calls, 0);
  }

  static std::string Pattern(size_t size, int seed) {
    std::string data(size, '\0');
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>((i * 131 + seed) % 251);
    return data;
  }

  End client_;
  End server_;
};

TEST_F(SecureChannelTest, PskHandshakeAndDataBothWays) {
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), /*direct=*/false));
  ExpectBothSecured();

  client_.channel->Send("hello server");
  server_.channel->Send("hello client");
  Shuttle();
  EXPECT_EQ(server_.received, "hello server");
  EXPECT_EQ(client_.received, "hello client");

  // 1 MiB each way, in records of at most 16 KiB (plus the record overhead).
  client_.received.clear();
  server_.received.clear();
  client_.largest_record = server_.largest_record = 0;
  std::string up = Pattern(1 << 20, 1);
  std::string down = Pattern(1 << 20, 2);
  client_.channel->Send(up);
  server_.channel->Send(down);
  Shuttle();
  EXPECT_TRUE(server_.received == up);
  EXPECT_TRUE(client_.received == down);
  EXPECT_LE(client_.largest_record, 16 * 1024 + 256u);
  EXPECT_LE(server_.largest_record, 16 * 1024 + 256u);
  EXPECT_GT(client_.largest_record, 16 * 1024u);
}

TEST_F(SecureChannelTest, QueuedPiecesLeaveTogetherOnFlush) {
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), /*direct=*/false));
  ExpectBothSecured();
  client_.outbox.clear();
  client_.channel->Queue("frame header|");
  client_.channel->Queue("frame payload");
  EXPECT_EQ(client_.channel->queued(), 26u);
  EXPECT_TRUE(client_.outbox.empty()) << "queued plaintext must wait for Flush";
  client_.channel->Flush();
  EXPECT_EQ(client_.channel->queued(), 0u);
  ASSERT_EQ(client_.outbox.size(), 1u) << "one piece of ciphertext for the flush";
  Shuttle();
  EXPECT_EQ(server_.received, "frame header|frame payload");
}

TEST_F(SecureChannelTest, LargeQueuedPiecesStillWaitForFlushAndKeepTheirOrder) {
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), /*direct=*/false));
  ExpectBothSecured();
  client_.outbox.clear();
  // Small and large pieces mixed, as a link queues frame headers and payloads: large ones are
  // encrypted at once from the caller's bytes, yet nothing leaves before Flush.
  std::string expected;
  for (int i = 0; i < 20; ++i) {
    std::string header = "hdr" + std::to_string(i) + "|";
    std::string payload = Pattern(static_cast<size_t>(1000 + i * 9973), i);
    client_.channel->Queue(header);
    client_.channel->Queue(payload);
    expected += header + payload;
  }
  EXPECT_EQ(client_.channel->queued() >= expected.size(), true)
      << "queued() counts encrypted records not yet handed on";
  EXPECT_TRUE(client_.outbox.empty()) << "queued pieces must wait for Flush";
  client_.channel->Flush();
  EXPECT_EQ(client_.channel->queued(), 0u);
  ASSERT_EQ(client_.outbox.size(), 1u) << "one piece of ciphertext for the flush";
  EXPECT_LE(client_.largest_record, 16 * 1024 + 256u);

  // The ciphertext arrives cut at odd places: OpenSSL reads each piece in place and the
  // channel keeps only the cut record's start.
  std::string ciphertext = std::move(client_.outbox.front());
  client_.outbox.clear();
  for (size_t at = 0, step = 1; at < ciphertext.size(); at += step, step = step * 7 % 40009 + 1) {
    server_.channel->OnCiphertext(std::string_view(ciphertext).substr(at, step));
  }
  EXPECT_TRUE(server_.received == expected);
  EXPECT_FALSE(server_.closed.has_value());
}

TEST_F(SecureChannelTest, DirectWiringIsReentrancySafe) {
  // Each SendCiphertext calls the peer's OnCiphertext, which answers through its own
  // SendCiphertext into the first channel while that one is still inside its own call; the
  // server also echoes from inside OnPlaintext.
  server_.echo = true;
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), /*direct=*/true));
  ExpectBothSecured();
  std::string data = Pattern(1 << 20, 3);
  client_.channel->Send(data);
  EXPECT_TRUE(server_.received == data);
  EXPECT_TRUE(client_.received == data);
}

TEST_F(SecureChannelTest, SendBeforeSecuredIsBuffered) {
  SecureChannelOptions client_options = Psk(true);
  auto client = SecureChannel::Create(client_options, client_);
  ASSERT_TRUE(client.ok());
  auto server = SecureChannel::Create(Psk(false), server_);
  ASSERT_TRUE(server.ok());
  client_.channel = std::move(*client);
  server_.channel = std::move(*server);
  client_.channel->Send("early from client");
  server_.channel->Send("early from server");
  client_.channel->Start();
  server_.channel->Start();
  Shuttle();
  ExpectBothSecured();
  EXPECT_EQ(server_.received, "early from client");
  EXPECT_EQ(client_.received, "early from server");
}

TEST_F(SecureChannelTest, SendFromOnSecured) {
  client_.send_on_secured = "first words";
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), /*direct=*/true));
  ExpectBothSecured();
  EXPECT_EQ(server_.received, "first words");
}

TEST_F(SecureChannelTest, WrongPskFailsOnBothEnds) {
  ASSERT_NO_FATAL_FAILURE(
      Connect(Psk(true, "one pairing secret"), Psk(false, "another secret!!"), false));
  ExpectBothFailed(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(*client_.closed), HasSubstr("pre-shared keys differ"));
  EXPECT_THAT(Message(*server_.closed), HasSubstr("pre-shared keys differ"));
  // A failed channel ignores whatever comes afterwards.
  client_.channel->OnCiphertext("more bytes");
  client_.channel->Send("data");
  EXPECT_EQ(client_.closed_calls, 1);
}

TEST_F(SecureChannelTest, CloseNotifyReportsOk) {
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), false));
  ExpectBothSecured();
  client_.channel->Send("last words");
  client_.channel->Close();
  client_.channel->Send("ignored after Close");
  Shuttle();
  EXPECT_EQ(server_.received, "last words");
  ASSERT_TRUE(server_.closed.has_value());
  EXPECT_TRUE(server_.closed->ok()) << *server_.closed;
  EXPECT_FALSE(client_.closed.has_value());
  // The server's channel is done once it saw close_notify: it sends nothing more.
  server_.channel->Send("too late");
  Shuttle();
  EXPECT_EQ(client_.received, "");
  EXPECT_FALSE(client_.closed.has_value());
}

TEST_F(SecureChannelTest, ServerCloseIsSeenByClient) {
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), false));
  server_.channel->Send("bye");
  server_.channel->Close();
  client_.channel->Send("still talking");
  Shuttle();
  EXPECT_EQ(client_.received, "bye");
  EXPECT_EQ(server_.received, "still talking");  // a closing end still reads
  ASSERT_TRUE(client_.closed.has_value());
  EXPECT_TRUE(client_.closed->ok());
  EXPECT_FALSE(server_.closed.has_value());
  client_.channel->Close();  // after OnChannelClosed: a no-op
}

TEST_F(SecureChannelTest, GarbageDuringHandshakeFailsCleanly) {
  auto server = SecureChannel::Create(Psk(false), server_);
  ASSERT_TRUE(server.ok());
  server_.channel = std::move(*server);
  server_.channel->Start();
  server_.channel->OnCiphertext("GET / HTTP/1.1\r\nHost: example\r\n\r\n");
  ASSERT_TRUE(server_.closed.has_value());
  EXPECT_FALSE(server_.closed->ok());
  EXPECT_THAT(Message(*server_.closed), HasSubstr("TLS handshake failed"));
  EXPECT_EQ(server_.closed_calls, 1);
  server_.channel->OnCiphertext("more garbage");
  EXPECT_EQ(server_.closed_calls, 1);

  auto client = SecureChannel::Create(Psk(true), client_);
  ASSERT_TRUE(client.ok());
  client_.channel = std::move(*client);
  client_.channel->Start();
  client_.channel->OnCiphertext(std::string(300, '\x16'));
  ASSERT_TRUE(client_.closed.has_value());
  EXPECT_THAT(Message(*client_.closed), HasSubstr("TLS handshake failed"));
}

TEST_F(SecureChannelTest, GarbageAfterHandshakeFailsCleanly) {
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Psk(false), false));
  ExpectBothSecured();
  // A well-formed application-data record header with a body that does not authenticate.
  std::string record = {'\x17', '\x03', '\x03', '\x00', '\x20'};
  record += std::string(32, 'x');
  client_.channel->OnCiphertext(record);
  ASSERT_TRUE(client_.closed.has_value());
  EXPECT_EQ(client_.closed->code(), absl::StatusCode::kDataLoss) << *client_.closed;
  EXPECT_THAT(Message(*client_.closed), HasSubstr("TLS record error"));
  Shuttle();  // the client's alert reaches the server, which fails too
  ASSERT_TRUE(server_.closed.has_value());
  EXPECT_FALSE(server_.closed->ok());
}

class SecureChannelCertificateTest : public SecureChannelTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(files_.Generate()); }

  SecureChannelOptions Server(const std::string& cert = "leaf.pem",
                              const std::string& key = "leaf-key.pem") {
    SecureChannelOptions options;
    options.certificate_file = files_.Path(cert);
    options.key_file = files_.Path(key);
    return options;
  }
  static SecureChannelOptions PinnedClient(const std::string& fingerprint) {
    SecureChannelOptions options;
    options.is_client = true;
    options.peer_fingerprint = fingerprint;
    return options;
  }
  SecureChannelOptions CaClient(const std::string& ca = "ca.pem") {
    SecureChannelOptions options;
    options.is_client = true;
    options.peer_ca_file = files_.Path(ca);
    return options;
  }

  CertificateFiles files_;
};

TEST_F(SecureChannelCertificateTest, RightPinWorks) {
  ASSERT_NO_FATAL_FAILURE(Connect(PinnedClient(files_.leaf_fingerprint()), Server(), false));
  ExpectBothSecured();
  client_.channel->Send("ping");
  server_.channel->Send("pong");
  Shuttle();
  EXPECT_EQ(server_.received, "ping");
  EXPECT_EQ(client_.received, "pong");
}

TEST_F(SecureChannelCertificateTest, PinIsCaseAndColonInsensitive) {
  std::string pin;
  for (size_t i = 0; i < files_.leaf_fingerprint().size(); i += 2) {
    if (!pin.empty()) pin += ':';
    pin += files_.leaf_fingerprint().substr(i, 2);
  }
  for (char& c : pin) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  ASSERT_NO_FATAL_FAILURE(Connect(PinnedClient(pin), Server(), false));
  ExpectBothSecured();
}

TEST_F(SecureChannelCertificateTest, WrongPinFails) {
  ASSERT_NO_FATAL_FAILURE(Connect(PinnedClient(files_.self_fingerprint()), Server(), false));
  ExpectBothFailed(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(*client_.closed), HasSubstr("does not match the pinned"));
  EXPECT_THAT(Message(*client_.closed), HasSubstr(files_.leaf_fingerprint()));
  EXPECT_THAT(Message(*server_.closed), HasSubstr("did not accept our certificate"));
}

TEST_F(SecureChannelCertificateTest, CaFileWorks) {
  ASSERT_NO_FATAL_FAILURE(Connect(CaClient(), Server(), false));
  ExpectBothSecured();
  client_.channel->Send("via CA");
  Shuttle();
  EXPECT_EQ(server_.received, "via CA");
}

TEST_F(SecureChannelCertificateTest, OtherCaFails) {
  ASSERT_NO_FATAL_FAILURE(Connect(CaClient("other-ca.pem"), Server(), false));
  ExpectBothFailed(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(*client_.closed), HasSubstr("not accepted by CA file"));
}

TEST_F(SecureChannelCertificateTest, SelfSignedLeafIsNotACa) {
  ASSERT_NO_FATAL_FAILURE(Connect(CaClient(), Server("self.pem", "self-key.pem"), false));
  ExpectBothFailed(absl::StatusCode::kPermissionDenied);
}

TEST_F(SecureChannelCertificateTest, PskClientRefusesCertificateServer) {
  // A client holding a secret must never settle for a certificate it cannot check.
  ASSERT_NO_FATAL_FAILURE(Connect(Psk(true), Server(), false));
  ExpectBothFailed(absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(*client_.closed), HasSubstr("presented a certificate"));
  EXPECT_THAT(Message(*server_.closed), HasSubstr("did not accept our certificate"));
}

TEST_F(SecureChannelCertificateTest, CertificateClientAgainstPskServerFails) {
  ASSERT_NO_FATAL_FAILURE(Connect(PinnedClient(files_.leaf_fingerprint()), Psk(false), false));
  ASSERT_TRUE(client_.closed.has_value());
  ASSERT_TRUE(server_.closed.has_value());
  EXPECT_FALSE(client_.closed->ok());
  EXPECT_FALSE(server_.closed->ok());
  EXPECT_EQ(client_.secured_calls + server_.secured_calls, 0);
}

TEST_F(SecureChannelCertificateTest, CreateValidatesOptions) {
  End end;
  SecureChannelOptions options;
  options.psk = "short";
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("32 bytes"));

  options = SecureChannelOptions();
  options.is_client = true;
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("exactly one"));
  options.peer_fingerprint = files_.leaf_fingerprint();
  options.peer_ca_file = files_.Path("ca.pem");
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("exactly one"));
  options.peer_ca_file.clear();
  options.peer_fingerprint = "abc";
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("64 hex digits"));
  options.peer_fingerprint.clear();
  options.peer_ca_file = files_.Path("missing.pem");
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("missing.pem"));

  options = Server();
  options.key_file = files_.Path("self-key.pem");
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("mismatch"));
  options = Server("missing.pem");
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()), HasSubstr("missing.pem"));
  options = SecureChannelOptions();
  EXPECT_THAT(Message(SecureChannel::Create(options, end).status()),
              HasSubstr("certificate_file and key_file"));
}

}  // namespace
}  // namespace rdv
