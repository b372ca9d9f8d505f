#include <cblas.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/io.h"
#include "examples/fmnist/idx.h"
#include "examples/fmnist/model.h"

namespace cairn::fmnist {
namespace {

class TempDir {
 public:
  TempDir() : path_(std::filesystem::temp_directory_path() / ("cairn_fmnist_" + io::RandomSuffix())) {
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string Sub(const std::string& n) const { return (path_ / n).string(); }

 private:
  std::filesystem::path path_;
};

void Be32(std::string* s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s->push_back(static_cast<char>(v >> (8 * i)));
}

std::string Images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols, std::size_t pixels) {
  std::string s;
  Be32(&s, magic);
  Be32(&s, n);
  Be32(&s, rows);
  Be32(&s, cols);
  for (std::size_t i = 0; i < pixels; ++i) s.push_back(static_cast<char>(i % 251));
  return s;
}

std::string Labels(uint32_t magic, uint32_t n, std::vector<uint8_t> labels) {
  std::string s;
  Be32(&s, magic);
  Be32(&s, n);
  for (uint8_t l : labels) s.push_back(static_cast<char>(l));
  return s;
}

void WriteGz(const std::string& path, const std::string& data) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, data.data(), static_cast<unsigned>(data.size())), static_cast<int>(data.size()));
  gzclose(f);
}

void WritePlain(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary) << data;
}

std::string ErrorOf(const Result<Split>& r) { return r ? "" : r.error().ToString(); }

TEST(Idx, LoadsAValidGzipAndPlainSplit) {
  TempDir d;
  WriteGz(d.Sub("i.gz"), Images(0x803, 3, 28, 28, 3 * 784));
  WritePlain(d.Sub("l"), Labels(0x801, 3, {0, 9, 4}));
  auto s = LoadSplit(d.Sub("i.gz"), d.Sub("l"));
  ASSERT_TRUE(s) << s.error().ToString();
  EXPECT_EQ(s->count, 3u);
  EXPECT_EQ(s->labels, (std::vector<uint8_t>{0, 9, 4}));
  EXPECT_EQ(s->pixels.size(), 3u * 784);
  EXPECT_EQ(s->pixels[785], 785 % 251);
}

// The decompressed cache: a miss fills it, a hit returns the same bytes, and a changed
// source or a tampered/torn entry is a miss that decompresses the source again.
TEST(Idx, DecompressedCacheIsVerifiedAndNeverChangesWhatIsLoaded) {
  TempDir d;
  WriteGz(d.Sub("i.gz"), Images(0x803, 5, 28, 28, 5 * 784));
  WriteGz(d.Sub("l.gz"), Labels(0x801, 5, {1, 2, 3, 4, 5}));
  DataCache cache;
  cache.dir = d.Sub("cache");
  auto first = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache);
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_EQ(cache.misses, 2);
  EXPECT_EQ(cache.hits, 0);

  auto second = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache);
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(cache.hits, 2);
  EXPECT_EQ(second->pixels, first->pixels);
  EXPECT_EQ(second->labels, first->labels);

  // Tamper with one cached pixel: the digest catches it; the source is read again.
  std::string entry;
  for (const auto& e : std::filesystem::directory_iterator(cache.dir)) {
    if (e.path().filename().string().starts_with("i.gz.")) entry = e.path().string();
  }
  ASSERT_FALSE(entry.empty());
  {
    std::fstream f(entry, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-10, std::ios::end);
    f.put('\x7f');
  }
  cache = DataCache{.dir = d.Sub("cache")};
  auto third = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache);
  ASSERT_TRUE(third);
  EXPECT_EQ(cache.misses, 1);
  EXPECT_EQ(third->pixels, first->pixels);
  // ... and the entry was rewritten: the next load hits again.
  cache = DataCache{.dir = d.Sub("cache")};
  ASSERT_TRUE(LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache));
  EXPECT_EQ(cache.hits, 2);

  // A torn entry (cut short) is a miss.
  std::filesystem::resize_file(entry, std::filesystem::file_size(entry) / 2);
  cache = DataCache{.dir = d.Sub("cache"), .write = false};
  ASSERT_TRUE(LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache));
  EXPECT_EQ(cache.misses, 1);

  // A new source (same name, other content): the cache follows it.
  WriteGz(d.Sub("l.gz"), Labels(0x801, 5, {9, 9, 9, 9, 9}));
  cache = DataCache{.dir = d.Sub("cache")};
  auto fourth = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache);
  ASSERT_TRUE(fourth);
  EXPECT_EQ(fourth->labels, (std::vector<uint8_t>{9, 9, 9, 9, 9}));

  // A bad source is still named, cache or not.
  WriteGz(d.Sub("l.gz"), Labels(0x801, 5, {1, 2, 3, 4, 10}));
  cache = DataCache{.dir = d.Sub("cache")};
  auto bad = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"), &cache);
  ASSERT_FALSE(bad);
  EXPECT_NE(ErrorOf(bad).find("l.gz: label 10 at index 4"), std::string::npos) << ErrorOf(bad);
}

TEST(Idx, EveryKindOfBadFileIsNamed) {
  TempDir d;
  const std::string good_labels = Labels(0x801, 2, {1, 2});
  struct Case {
    std::string images, labels, expect_file, expect_text;
  };
  std::vector<Case> cases = {
      {Images(0x802, 2, 28, 28, 2 * 784), good_labels, "i.gz", "wrong magic 0x00000802"},
      {Images(0x803, 2, 32, 32, 2 * 1024), good_labels, "i.gz", "images are 32x32"},
      {Images(0x803, 2, 28, 28, 784 + 100), good_labels, "i.gz", "truncated"},
      {Images(0x803, 2, 28, 28, 2 * 784 + 1), good_labels, "i.gz", "trailing bytes"},
      {Images(0x803, 2, 28, 28, 2 * 784), Labels(0x801, 2, {1, 10}), "l.gz",
       "label 10 at index 1 is out of range"},
      {Images(0x803, 2, 28, 28, 2 * 784), Labels(0x801, 3, {1, 2, 3}), "l.gz", "3 labels"},
      {Images(0x803, 2, 28, 28, 2 * 784), Labels(0x803, 2, {1, 2}), "l.gz", "wrong magic"},
      {Images(0x803, 2, 28, 28, 2 * 784), Labels(0x801, 2, {1}), "l.gz", "truncated"},
      {std::string("\x00\x00\x08", 3), good_labels, "i.gz", "truncated IDX header"},
  };
  for (const auto& c : cases) {
    WriteGz(d.Sub("i.gz"), c.images);
    WriteGz(d.Sub("l.gz"), c.labels);
    auto r = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"));
    ASSERT_FALSE(r) << c.expect_text;
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
    EXPECT_NE(ErrorOf(r).find(d.Sub(c.expect_file)), std::string::npos) << ErrorOf(r);
    EXPECT_NE(ErrorOf(r).find(c.expect_text), std::string::npos) << ErrorOf(r);
  }
}

TEST(Idx, TruncatedGzipStreamAndMissingFile) {
  TempDir d;
  WriteGz(d.Sub("i.gz"), Images(0x803, 50, 28, 28, 50 * 784));
  std::string gz;
  {
    std::ifstream in(d.Sub("i.gz"), std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), {});
  }
  WritePlain(d.Sub("i.gz"), gz.substr(0, gz.size() / 2));  // cut the compressed stream
  WriteGz(d.Sub("l.gz"), Labels(0x801, 50, std::vector<uint8_t>(50, 1)));
  auto r = LoadSplit(d.Sub("i.gz"), d.Sub("l.gz"));
  ASSERT_FALSE(r);
  EXPECT_NE(ErrorOf(r).find(d.Sub("i.gz")), std::string::npos) << ErrorOf(r);

  auto missing = LoadSplit(d.Sub("nope.gz"), d.Sub("l.gz"));
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_NE(ErrorOf(missing).find("nope.gz"), std::string::npos);
}

TEST(Model, AnalyticGradientMatchesFiniteDifferences) {
  openblas_set_num_threads(1);
  Layout layout;
  Mlp mlp(layout);
  std::vector<float> params(layout.total());
  rt::Philox rng(3);
  mlp.Init(params, rng);
  // Two synthetic samples.
  Split split;
  split.count = 2;
  split.pixels.resize(2 * kPixels);
  for (std::size_t i = 0; i < split.pixels.size(); ++i) {
    split.pixels[i] = static_cast<uint8_t>((i * 37) % 256);
  }
  split.labels = {3, 7};
  std::vector<float> x;
  std::vector<uint8_t> y;
  std::vector<uint32_t> idx{0, 1};
  GatherBatch(split, idx, {}, &x, &y);
  std::vector<float> grad(layout.total(), 0.0f), scratch(layout.total());
  mlp.Gradient(params, x.data(), y.data(), 2, grad);
  // Check a few coordinates of every tensor with central differences (in double via
  // small steps on float params; tolerance accounts for float rounding).
  for (const Tensor& t : layout.tensors()) {
    for (std::size_t k : {std::size_t{0}, t.size() / 2, t.size() - 1}) {
      const std::size_t i = t.offset + k;
      const float orig = params[i];
      const float h = 1e-2f;
      params[i] = orig + h;
      double lp = mlp.Gradient(params, x.data(), y.data(), 2, scratch);
      params[i] = orig - h;
      double lm = mlp.Gradient(params, x.data(), y.data(), 2, scratch);
      params[i] = orig;
      const double numeric = (lp - lm) / (2.0 * h);
      EXPECT_NEAR(grad[i], numeric, 2e-2 + 2e-2 * std::fabs(numeric)) << t.name << "[" << k << "]";
    }
  }
}

TEST(Model, GatherFlipsMirrorRows) {
  Split split;
  split.count = 1;
  split.pixels.resize(kPixels);
  for (int i = 0; i < kPixels; ++i) split.pixels[static_cast<std::size_t>(i)] = static_cast<uint8_t>(i % kCols);
  split.labels = {5};
  std::vector<float> a, b;
  std::vector<uint8_t> y;
  std::vector<uint32_t> idx{0};
  std::vector<uint8_t> no{0}, yes{1};
  GatherBatch(split, idx, no, &a, &y);
  GatherBatch(split, idx, yes, &b, &y);
  EXPECT_EQ(y[0], 5);
  for (int r = 0; r < kRows; ++r) {
    for (int c = 0; c < kCols; ++c) {
      ASSERT_EQ(a[static_cast<std::size_t>(r * kCols + c)],
                b[static_cast<std::size_t>(r * kCols + kCols - 1 - c)]);
    }
  }
}

TEST(Model, AdamAndSgdStepsMoveAgainstTheGradient) {
  for (Optimizer kind : {Optimizer::kAdam, Optimizer::kSgd}) {
    OptimizerConfig cfg;
    cfg.kind = kind;
    cfg.lr = 0.1f;
    std::vector<float> p{1.0f, -1.0f}, g{0.5f, -0.5f};
    OptimizerState st;
    ApplyUpdate(cfg, p, g, &st);
    EXPECT_LT(p[0], 1.0f);
    EXPECT_GT(p[1], -1.0f);
    EXPECT_EQ(st.t, 1u);
  }
}

}  // namespace
}  // namespace cairn::fmnist
