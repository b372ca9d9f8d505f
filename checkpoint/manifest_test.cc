#include "checkpoint/manifest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace cairn::ckpt {
namespace {

using ::testing::HasSubstr;

Manifest Sample(uint32_t world) {
  Manifest m;
  m.run_id = "run-42";
  m.step = 1000;
  m.world_size = world;
  m.chunk_size = 1 << 20;
  m.created_unix_ms = 1764100000000;
  m.provenance_digest.fill(0xab);
  m.previous_digest.fill(0x11);
  m.key_id = "0123456789abcdef";
  for (uint32_t r = 0; r < world; ++r) {
    ShardEntry e;
    e.file_size = 1000 + r;
    e.plaintext_size = 900 + r;
    e.sha256.fill(static_cast<uint8_t>(r));
    m.shards.push_back(e);
    m.wrapped_keys.emplace_back(kWrappedKeySize, static_cast<uint8_t>(0x80 + r));
  }
  return m;
}

TEST(ManifestTest, RoundTripIsCanonical) {
  const Manifest m = Sample(3);
  const std::string bytes = m.Encode();
  auto back = Manifest::Decode(bytes);
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(back->run_id, "run-42");
  EXPECT_EQ(back->step, 1000u);
  EXPECT_EQ(back->world_size, 3u);
  EXPECT_EQ(back->shards[2].file_size, 1002u);
  EXPECT_EQ(back->wrapped_keys[1], m.wrapped_keys[1]);
  EXPECT_EQ(back->Encode(), bytes);
  EXPECT_EQ(back->ComputeDigest(), m.ComputeDigest());
  EXPECT_FALSE(m.IsFirst());
}

TEST(ManifestTest, DigestCoversCoreButNotKeySlots) {
  const Manifest m = Sample(2);
  Manifest rekeyed = m;
  rekeyed.key_id = "fedcba9876543210";
  rekeyed.wrapped_keys[0][5] ^= 1;
  EXPECT_EQ(rekeyed.ComputeDigest(), m.ComputeDigest());
  for (auto mutate : std::vector<std::function<void(Manifest&)>>{
           [](Manifest& x) { x.step++; },
           [](Manifest& x) { x.run_id += "x"; },
           [](Manifest& x) { x.previous_digest[0] ^= 1; },
           [](Manifest& x) { x.provenance_digest[31] ^= 1; },
           [](Manifest& x) { x.shards[1].sha256[7] ^= 1; },
           [](Manifest& x) { x.shards[0].file_size++; },
           [](Manifest& x) { x.created_unix_ms++; }}) {
    Manifest changed = m;
    mutate(changed);
    EXPECT_NE(changed.ComputeDigest(), m.ComputeDigest());
  }
}

TEST(ManifestTest, EveryTruncationAndTrailingByteIsRejected) {
  const std::string bytes = Sample(2).Encode();
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto r = Manifest::Decode(std::string_view(bytes).substr(0, n));
    ASSERT_FALSE(r.has_value()) << "prefix of " << n << " bytes accepted";
    EXPECT_EQ(r.error().code(), Code::kDataLoss);
  }
  auto trailing = Manifest::Decode(bytes + "x");
  ASSERT_FALSE(trailing.has_value());
  EXPECT_THAT(trailing.error().ToString(), HasSubstr("key slots"));
}

TEST(ManifestTest, StructuralErrorsNameTheField) {
  std::string bytes = Sample(1).Encode();
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_THAT(Manifest::Decode(bad_magic).error().ToString(), HasSubstr("bad magic"));
  std::string bad_version = bytes;
  bad_version[8] = 9;
  EXPECT_THAT(Manifest::Decode(bad_version).error().ToString(), HasSubstr("version 9"));
  // World size field sits after magic(8) version(4) core_len(4) run_id(2+6) step(8).
  std::string bad_world = bytes;
  bad_world[32] = 2;
  EXPECT_THAT(Manifest::Decode(bad_world).error().ToString(), HasSubstr("world size 2"));
}

TEST(ManifestTest, WrapAadBindsEveryField) {
  Digest d{};
  auto base = WrapAad("run", 5, 1, 4, d);
  EXPECT_NE(WrapAad("run2", 5, 1, 4, d), base);
  EXPECT_NE(WrapAad("run", 6, 1, 4, d), base);
  EXPECT_NE(WrapAad("run", 5, 2, 4, d), base);
  EXPECT_NE(WrapAad("run", 5, 1, 3, d), base);
  d[0] = 1;
  EXPECT_NE(WrapAad("run", 5, 1, 4, d), base);
}

}  // namespace
}  // namespace cairn::ckpt
