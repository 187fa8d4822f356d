#include "common/record_aead.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace rdv {
namespace {

using Implementation = RecordAead::Implementation;

std::string RandomBytes(size_t n) {
  std::string bytes(n, '\0');
  if (n > 0) RAND_bytes(reinterpret_cast<unsigned char*>(bytes.data()), static_cast<int>(n));
  return bytes;
}

const unsigned char* Bytes(const std::string& s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

std::unique_ptr<RecordAead> Make(int nid, bool seal, Implementation implementation,
                                 const std::string& key) {
  absl::StatusOr<std::unique_ptr<RecordAead>> aead = RecordAead::Create(nid, seal, implementation);
  if (!aead.ok()) return nullptr;
  EXPECT_EQ((*aead)->key_size(), key.size());
  EXPECT_TRUE((*aead)->SetKey(Bytes(key)).ok());
  return std::move(*aead);
}

struct Sealed {
  std::string ciphertext;
  std::string tag;
};

Sealed SealWith(RecordAead& aead, const std::string& nonce, const std::string& aad,
                std::initializer_list<std::string_view> pieces) {
  size_t total = 0;
  for (std::string_view piece : pieces) total += piece.size();
  Sealed sealed{std::string(total, '\0'), std::string(RecordAead::kTagSize, '\0')};
  EXPECT_TRUE(aead.Seal(Bytes(nonce), Bytes(aad), aad.size(), pieces,
                        reinterpret_cast<unsigned char*>(sealed.ciphertext.data()),
                        reinterpret_cast<unsigned char*>(sealed.tag.data())));
  return sealed;
}

// Whether `aead` authenticates `sealed`, and what it decrypts it to.
std::pair<bool, std::string> OpenWith(RecordAead& aead, const std::string& nonce,
                                      const std::string& aad, const Sealed& sealed) {
  std::string plaintext(sealed.ciphertext.size(), '\0');
  bool ok = aead.Open(Bytes(nonce), Bytes(aad), aad.size(), Bytes(sealed.ciphertext),
                      sealed.ciphertext.size(), Bytes(sealed.tag),
                      reinterpret_cast<unsigned char*>(plaintext.data()));
  return {ok, plaintext};
}

class RecordAeadIpsecMbTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!RecordAead::Create(GetParam(), true, Implementation::kIpsecMb).ok()) {
      GTEST_SKIP() << "intel-ipsec-mb not built in or no VAES/AVX-512 on this CPU";
    }
  }
  size_t key_size() const { return GetParam() == NID_aes_256_gcm ? 32 : 16; }
};

// The same key, nonce, additional data and plaintext give the same ciphertext and tag from both
// implementations, whatever the plaintext's pieces and sizes (partial blocks inside a record
// included), and each opens what the other sealed.
TEST_P(RecordAeadIpsecMbTest, MatchesOpenSslByteForByte) {
  const std::string key = RandomBytes(key_size());
  auto fast_seal = Make(GetParam(), true, Implementation::kIpsecMb, key);
  auto fast_open = Make(GetParam(), false, Implementation::kIpsecMb, key);
  auto evp_seal = Make(GetParam(), true, Implementation::kOpenSsl, key);
  auto evp_open = Make(GetParam(), false, Implementation::kOpenSsl, key);
  ASSERT_TRUE(fast_seal && fast_open && evp_seal && evp_open);
  const std::vector<std::vector<size_t>> shapes = {
      {0, 0, 1},     {1, 0, 1},       {15, 1, 1},   {16, 0, 1},    {17, 33, 1},
      {7, 0, 0},     {255, 256, 1},   {4096, 0, 1}, {16384, 0, 1}, {16383, 1, 1},
      {1, 16383, 1}, {16000, 383, 1}, {65, 4031, 0}};
  for (const std::vector<size_t>& shape : shapes) {
    const std::string nonce = RandomBytes(RecordAead::kNonceSize);
    const std::string aad = RandomBytes(5);
    const std::string a = RandomBytes(shape[0]);
    const std::string b = RandomBytes(shape[1]);
    const std::string c = RandomBytes(shape[2]);
    SCOPED_TRACE(testing::Message() << shape[0] << "+" << shape[1] << "+" << shape[2]);
    Sealed fast = SealWith(*fast_seal, nonce, aad, {a, b, c});
    Sealed evp = SealWith(*evp_seal, nonce, aad, {a, b, c});
    EXPECT_EQ(fast.ciphertext, evp.ciphertext);
    EXPECT_EQ(fast.tag, evp.tag);
    EXPECT_EQ(OpenWith(*evp_open, nonce, aad, fast), std::pair(true, a + b + c));
    EXPECT_EQ(OpenWith(*fast_open, nonce, aad, evp), std::pair(true, a + b + c));
  }
}

// A changed tag, ciphertext byte, additional data or nonce fails authentication.
TEST_P(RecordAeadIpsecMbTest, RefusesWhatWasChanged) {
  const std::string key = RandomBytes(key_size());
  auto seal = Make(GetParam(), true, Implementation::kIpsecMb, key);
  auto open = Make(GetParam(), false, Implementation::kIpsecMb, key);
  ASSERT_TRUE(seal && open);
  const std::string nonce = RandomBytes(RecordAead::kNonceSize);
  const std::string aad = RandomBytes(5);
  const Sealed sealed = SealWith(*seal, nonce, aad, {RandomBytes(1000), "\x17"});
  ASSERT_TRUE(OpenWith(*open, nonce, aad, sealed).first);
  Sealed bad_tag = sealed;
  bad_tag.tag[15] ^= 1;
  EXPECT_FALSE(OpenWith(*open, nonce, aad, bad_tag).first);
  Sealed bad_body = sealed;
  bad_body.ciphertext[500] ^= 0x80;
  EXPECT_FALSE(OpenWith(*open, nonce, aad, bad_body).first);
  std::string other_aad = aad;
  other_aad[4] ^= 1;
  EXPECT_FALSE(OpenWith(*open, nonce, other_aad, sealed).first);
  std::string other_nonce = nonce;
  other_nonce[11] ^= 1;
  EXPECT_FALSE(OpenWith(*open, other_nonce, aad, sealed).first);
}

// SetKey replaces the key: what the old key sealed no longer opens, the new key's records do,
// and OpenSSL agrees on the new key's output.
TEST_P(RecordAeadIpsecMbTest, SetKeyReplacesTheKey) {
  const std::string first_key = RandomBytes(key_size());
  const std::string second_key = RandomBytes(key_size());
  auto seal = Make(GetParam(), true, Implementation::kIpsecMb, first_key);
  auto open = Make(GetParam(), false, Implementation::kIpsecMb, first_key);
  ASSERT_TRUE(seal && open);
  const std::string nonce = RandomBytes(RecordAead::kNonceSize);
  const std::string aad = RandomBytes(5);
  const Sealed old_record = SealWith(*seal, nonce, aad, {"before the update"});
  ASSERT_TRUE(seal->SetKey(Bytes(second_key)).ok());
  ASSERT_TRUE(open->SetKey(Bytes(second_key)).ok());
  EXPECT_FALSE(OpenWith(*open, nonce, aad, old_record).first);
  const Sealed new_record = SealWith(*seal, nonce, aad, {"after the update"});
  EXPECT_EQ(OpenWith(*open, nonce, aad, new_record),
            std::pair(true, std::string("after the update")));
  auto evp = Make(GetParam(), true, Implementation::kOpenSsl, second_key);
  ASSERT_TRUE(evp);
  EXPECT_EQ(SealWith(*evp, nonce, aad, {"after the update"}).tag, new_record.tag);
}

INSTANTIATE_TEST_SUITE_P(AesGcm, RecordAeadIpsecMbTest,
                         ::testing::Values(NID_aes_128_gcm, NID_aes_256_gcm));

TEST(RecordAeadTest, ChaChaIsAlwaysOpenSsls) {
  EXPECT_EQ(
      RecordAead::Create(NID_chacha20_poly1305, true, Implementation::kIpsecMb).status().code(),
      absl::StatusCode::kUnavailable);
  const std::string key = RandomBytes(32);
  auto seal = Make(NID_chacha20_poly1305, true, Implementation::kFastest, key);
  auto open = Make(NID_chacha20_poly1305, false, Implementation::kFastest, key);
  ASSERT_TRUE(seal && open);
  const std::string nonce = RandomBytes(RecordAead::kNonceSize);
  const Sealed sealed = SealWith(*seal, nonce, "hdr", {"chacha", "20"});
  EXPECT_EQ(OpenWith(*open, nonce, "hdr", sealed), std::pair(true, std::string("chacha20")));
}

TEST(RecordAeadTest, RefusesOtherCiphers) {
  EXPECT_EQ(RecordAead::Create(NID_aes_128_cbc, true).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rdv
