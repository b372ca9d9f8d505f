// A 1 GiB step (256 f32 tensors of 4 MiB) written, verified and read back bit for bit.
#include <gtest/gtest.h>

#include <chrono>

#include "checkpoint/reader.h"
#include "checkpoint/store.h"
#include "checkpoint/test_util.h"
#include "checkpoint/writer.h"

namespace cairn::ckpt {
namespace {

TEST(LargeCheckpointTest, OneGibStepRoundTrips) {
  testing::TempDir dir;
  auto key = testing::NewKey();
  std::vector<testing::OwnedTensor> ts;
  for (int i = 0; i < 256; ++i) {
    ts.push_back(testing::MakeTensor(fmt::format("layers/{}/w", i), DType::kF32, {1u << 20}, i));
  }
  auto refs = testing::Refs(ts);
  WriterOptions o;
  o.dir = dir.Sub("run");
  o.run_id = "large";
  o.key = key;
  auto t0 = std::chrono::steady_clock::now();
  {
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value());
    auto info = (*w)->Save(1, refs);
    ASSERT_TRUE(info.has_value()) << info.error().ToString();
    EXPECT_GT(info->bytes_written, 1ull << 30);
  }
  auto t1 = std::chrono::steady_clock::now();
  auto rep = VerifyDirectory(io::DefaultFileSystem(), o.dir, {{}, key.get()});
  ASSERT_TRUE(rep.has_value());
  EXPECT_TRUE(rep->ok()) << rep->failures.front().message;
  auto t2 = std::chrono::steady_clock::now();
  ReaderOptions ro{key};
  ro.verify = VerifyMode::kOnOpen;
  auto r = CheckpointReader::Open(o.dir, ro);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  auto shard = (*r)->Shard(0);
  ASSERT_TRUE(shard.has_value());
  std::vector<std::byte> buf(4u << 20);
  for (const auto& t : ts) {
    ASSERT_TRUE((*shard)->ReadTensor(t.name, buf).has_value()) << t.name;
    ASSERT_EQ(buf, t.bytes) << t.name;
  }
  auto t3 = std::chrono::steady_clock::now();
  auto s = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  std::printf("1 GiB: save %.2f s, verify with key %.2f s, load %.2f s (informational)\n",
              s(t0, t1), s(t1, t2), s(t2, t3));
}

}  // namespace
}  // namespace cairn::ckpt
