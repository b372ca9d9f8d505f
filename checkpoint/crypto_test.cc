#include "checkpoint/crypto.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace cairn::ckpt {
namespace {

std::span<const std::byte> Bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

SecretKey KeyOf(uint8_t fill) {
  std::array<uint8_t, 32> b;
  b.fill(fill);
  return SecretKey::FromBytes(b);
}

TEST(Sha256Test, KnownAnswers) {
  EXPECT_EQ(ToHex(Sha256Of(Bytes("abc"))),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(Sha256Of({})),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(ToHex(Sha256Of(Bytes("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"))),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256Test, IncrementalMatchesOneShotAndResetsAfterFinish) {
  std::string msg(100000, '\0');
  for (std::size_t i = 0; i < msg.size(); ++i) msg[i] = static_cast<char>(i * 31 + 7);
  Sha256 h;
  h.Update(Bytes(std::string_view(msg).substr(0, 1)));
  h.Update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(msg.data()) + 1, 999));
  h.Update(std::string_view(msg).substr(1000));
  EXPECT_EQ(h.Finish(), Sha256Of(Bytes(msg)));
  // The same object is reusable for the next message.
  h.Update(Bytes("abc"));
  EXPECT_EQ(ToHex(h.Finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(h.Finish(), Sha256Of({}));
}

TEST(HkdfTest, Rfc5869TestCase3) {
  // Test case 3: SHA-256, zero-length salt and info.
  const std::vector<uint8_t> ikm(22, 0x0b);
  std::array<uint8_t, 42> okm;
  ASSERT_TRUE(HkdfSha256(ikm, "", okm).has_value());
  EXPECT_EQ(ToHex(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
}

TEST(HkdfTest, KeyFormIsDeterministicAndSeparatesPurposes) {
  const SecretKey k = KeyOf(0x42);
  auto a = HkdfSha256(k, "cairn.wrap.v1");
  auto b = HkdfSha256(k, "cairn.wrap.v1");
  auto c = HkdfSha256(k, "cairn.other.v1");
  auto d = HkdfSha256(KeyOf(0x43), "cairn.wrap.v1");
  ASSERT_TRUE(a && b && c && d);
  EXPECT_TRUE(*a == *b);
  EXPECT_FALSE(*a == *c);
  EXPECT_FALSE(*a == *d);
  EXPECT_FALSE(*a == k);
  // Same as the span form's first 32 bytes.
  std::array<uint8_t, 32> raw;
  ASSERT_TRUE(HkdfSha256(k.bytes(), "cairn.wrap.v1", raw).has_value());
  EXPECT_TRUE(SecretKey::FromBytes(raw) == *a);
}

TEST(SecretKeyTest, RandomKeysDifferAndCopiesCompareEqual) {
  auto a = SecretKey::Random();
  auto b = SecretKey::Random();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(*a == *b);
  SecretKey c = *a;
  EXPECT_TRUE(c == *a);
  c = *b;
  EXPECT_TRUE(c == *b);
  const SecretKey d = SecretKey::FromBytes(a->bytes());
  EXPECT_TRUE(std::equal(d.bytes().begin(), d.bytes().end(), a->bytes().begin()));
}

// NIST GCM spec (McGrew & Viega) test cases 13 and 14: AES-256, zero key, zero IV.
TEST(AesGcmTest, KnownAnswersWithZeroSegment) {
  auto gcm = AesGcm::Create(KeyOf(0));
  ASSERT_TRUE(gcm.has_value());
  const std::array<uint8_t, 12> nonce{};
  std::array<uint8_t, 16> tag;
  // Case 13: empty plaintext.
  ASSERT_TRUE(gcm->Seal(nonce, {}, std::span<const std::byte>(), nullptr, tag).has_value());
  EXPECT_EQ(ToHex(tag), "530f8afbc74536b9a963b4f1c4cb738b");
  // Case 14: 16 zero bytes, given as a null segment.
  const std::span<const std::byte> zeros(static_cast<const std::byte*>(nullptr), 16);
  const std::vector<std::span<const std::byte>> segs = {zeros};
  std::array<std::byte, 16> ct;
  ASSERT_TRUE(gcm->Seal(nonce, {}, segs, ct.data(), tag).has_value());
  EXPECT_EQ(ToHex(std::span(reinterpret_cast<const uint8_t*>(ct.data()), ct.size())),
            "cea7403d4d606b6e074ec5d3baf39d18");
  EXPECT_EQ(ToHex(tag), "d0d1c8a799996bf0265b98b5d48ab919");
}

class AesGcmRoundTrip : public ::testing::Test {
 protected:
  void SetUp() override {
    a_.resize(1000);
    b_.resize(70000);
    for (std::size_t i = 0; i < a_.size(); ++i) a_[i] = static_cast<std::byte>(i * 7 + 1);
    for (std::size_t i = 0; i < b_.size(); ++i) b_[i] = static_cast<std::byte>(i * 13 + 5);
    // a_ || 100000 zeros || (empty) || b_
    segs_ = {a_, std::span<const std::byte>(static_cast<const std::byte*>(nullptr), 100000),
             std::span<const std::byte>(), b_};
    flat_ = a_;
    flat_.resize(a_.size() + 100000, std::byte{0});
    flat_.insert(flat_.end(), b_.begin(), b_.end());
    for (std::size_t i = 0; i < nonce_.size(); ++i) nonce_[i] = static_cast<uint8_t>(i + 1);
  }

  std::vector<std::byte> a_, b_, flat_;
  std::vector<std::span<const std::byte>> segs_;
  std::array<uint8_t, 12> nonce_;
  const std::string aad_ = "header bytes";
  std::span<const uint8_t> Aad() const {
    return {reinterpret_cast<const uint8_t*>(aad_.data()), aad_.size()};
  }
};

TEST_F(AesGcmRoundTrip, SegmentsEqualContiguousAndOpenRestores) {
  auto gcm = AesGcm::Create(KeyOf(7));
  ASSERT_TRUE(gcm.has_value());
  std::vector<std::byte> ct1(flat_.size()), ct2(flat_.size());
  std::array<uint8_t, 16> tag1, tag2;
  ASSERT_TRUE(gcm->Seal(nonce_, Aad(), segs_, ct1.data(), tag1).has_value());
  ASSERT_TRUE(gcm->Seal(nonce_, Aad(), flat_, ct2.data(), tag2).has_value());
  EXPECT_EQ(ct1, ct2);
  EXPECT_EQ(tag1, tag2);
  EXPECT_NE(ct1, flat_);

  std::vector<std::byte> pt(flat_.size());
  ASSERT_TRUE(gcm->Open(nonce_, Aad(), ct1, pt.data(), tag1));
  EXPECT_EQ(pt, flat_);
  // In place, with a second object under the same key.
  auto gcm2 = AesGcm::Create(KeyOf(7));
  ASSERT_TRUE(gcm2.has_value());
  ASSERT_TRUE(gcm2->Open(nonce_, Aad(), ct2, ct2.data(), tag2));
  EXPECT_EQ(ct2, flat_);
}

TEST_F(AesGcmRoundTrip, TamperingFailsAndZeroesOutput) {
  auto gcm = AesGcm::Create(KeyOf(7));
  ASSERT_TRUE(gcm.has_value());
  std::vector<std::byte> ct(flat_.size());
  std::array<uint8_t, 16> tag;
  ASSERT_TRUE(gcm->Seal(nonce_, Aad(), segs_, ct.data(), tag).has_value());
  std::vector<std::byte> pt(ct.size(), std::byte{0x55});

  auto bad_ct = ct;
  bad_ct[123456] ^= std::byte{1};
  EXPECT_FALSE(gcm->Open(nonce_, Aad(), bad_ct, pt.data(), tag));
  EXPECT_TRUE(std::all_of(pt.begin(), pt.end(), [](std::byte b) { return b == std::byte{0}; }));

  auto bad_tag = tag;
  bad_tag[15] ^= 0x80;
  EXPECT_FALSE(gcm->Open(nonce_, Aad(), ct, pt.data(), bad_tag));

  auto bad_nonce = nonce_;
  bad_nonce[0] ^= 1;
  EXPECT_FALSE(gcm->Open(bad_nonce, Aad(), ct, pt.data(), tag));

  const std::string other_aad = "header bytez";
  EXPECT_FALSE(gcm->Open(nonce_,
                         {reinterpret_cast<const uint8_t*>(other_aad.data()), other_aad.size()}, ct,
                         pt.data(), tag));
  EXPECT_FALSE(gcm->Open(nonce_, Aad(), std::span(ct).first(ct.size() - 1), pt.data(), tag));

  auto other = AesGcm::Create(KeyOf(8));
  ASSERT_TRUE(other.has_value());
  EXPECT_FALSE(other->Open(nonce_, Aad(), ct, pt.data(), tag));

  // The object still works after failures.
  ASSERT_TRUE(gcm->Open(nonce_, Aad(), ct, pt.data(), tag));
  EXPECT_EQ(pt, flat_);
}

}  // namespace
}  // namespace cairn::ckpt
