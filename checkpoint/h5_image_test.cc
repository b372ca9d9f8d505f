#include "checkpoint/h5_image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include <fmt/ranges.h>

#include "checkpoint/h5_common.h"
#include "checkpoint/h5_plain.h"
#include "checkpoint/h5_reader.h"
#include "checkpoint/h5_test_util.h"

namespace cairn::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testutil::FailingSource;
using testutil::Hex;
using testutil::Materialize;
using testutil::MemorySource;
using testutil::OwnedTensors;
using testutil::TempDir;

constexpr uint64_t kBigElems = 1'000'000;

// Tensors of every dtype and the interesting shapes, nested names, blobs, attributes.
OwnedTensors MakeMixed() {
  OwnedTensors t;
  t.Add("scalar_f32", DType::kF32, {}, 1);
  t.Add("empty", DType::kF32, {0}, 2);
  t.Add("empty3", DType::kI64, {3, 0, 2}, 3);
  t.Add("one", DType::kF64, {1}, 4);
  t.Add("layer1/weight", DType::kF16, {2, 3, 4, 5}, 5);
  t.Add("layer1/bias", DType::kBF16, {7}, 6);
  t.Add("a/b/c", DType::kI32, {4, 4}, 7);
  t.Add("ids", DType::kI64, {5}, 8);
  t.Add("bytes", DType::kU8, {3, 3}, 9);
  t.Add("scalar_i64", DType::kI64, {}, 10);
  std::vector<std::byte> big(kBigElems * 4);
  for (uint64_t i = 0; i < kBigElems; ++i) {
    const float v = static_cast<float>(i) * 0.5f;
    std::memcpy(big.data() + 4 * i, &v, 4);
  }
  t.AddBytes("big", DType::kF32, {kBigElems}, std::move(big));
  t.AddBlob("rng", "rng-state-0123456789");
  t.AddBlob("data/cursor", "{\"epoch\": 3}");
  t.AddBlob("empty_blob", "");
  return t;
}

const std::map<std::string, std::string> kAttrs = {
    {"step", "40"}, {"run", "run-\xc3\xa9t\xc3\xa9"}, {"empty", ""}};

Result<std::unique_ptr<H5ShardReader>> OpenImage(const ShardImage& image) {
  return H5ShardReader::Open(std::make_shared<MemorySource>(Materialize(image)), "test-shard");
}

// Checks that `reader` holds exactly `t`'s tensors and blobs, bit for bit.
void ExpectContents(const H5ShardReader& reader, const OwnedTensors& t) {
  std::map<std::string, const TensorRef*> want;
  for (const TensorRef& r : t.refs()) want[r.name] = &r;
  ASSERT_EQ(reader.tensors().size(), want.size());
  auto it = want.begin();
  for (const TensorInfo& info : reader.tensors()) {
    const TensorRef& ref = *(it++)->second;
    SCOPED_TRACE(ref.name);
    EXPECT_EQ(info.name, ref.name);
    EXPECT_EQ(info.dtype, ref.dtype);
    EXPECT_EQ(info.shape, ref.shape);
    EXPECT_EQ(info.size_bytes, ref.data.size());
    std::vector<std::byte> got(info.size_bytes);
    ASSERT_TRUE(reader.ReadTensor(ref.name, got).has_value());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.data.begin(), ref.data.end()));
  }
  std::vector<std::string> blob_names;
  for (const BlobRef& b : t.blobs()) blob_names.push_back(b.name);
  std::sort(blob_names.begin(), blob_names.end());
  EXPECT_EQ(reader.blobs(), blob_names);
  for (const BlobRef& b : t.blobs()) {
    auto got = reader.ReadBlob(b.name);
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    EXPECT_TRUE(std::equal(got->begin(), got->end(), b.data.begin(), b.data.end())) << b.name;
  }
}

// All metadata (everything the image holds itself) lies before the first raw data, so
// that opening the file reads only its first bytes.
void ExpectMetadataFirst(const ShardImage& image) {
  uint64_t first_raw = image.size();
  for (const auto* places : {&image.tensor_placements(), &image.blob_placements()}) {
    for (const DataPlacement& p : *places) {
      if (p.offset != DataPlacement::kNoOffset) first_raw = std::min(first_raw, p.offset);
    }
  }
  std::set<const std::byte*> raw_starts;
  std::vector<std::span<const std::byte>> segs;
  for (const auto* places : {&image.tensor_placements(), &image.blob_placements()}) {
    for (const DataPlacement& p : *places) {
      if (p.offset == DataPlacement::kNoOffset) continue;
      segs.clear();
      image.Segments(p.offset, 1, &segs);
      raw_starts.insert(segs.at(0).data());
    }
  }
  segs.clear();
  image.Segments(0, image.size(), &segs);
  uint64_t off = 0;
  for (auto s : segs) {
    if (s.data() != nullptr && !raw_starts.contains(s.data())) {
      EXPECT_LE(off + s.size(), first_raw) << "metadata at " << off;
    }
    off += s.size();
  }
}

TEST(ShardImageTest, RoundTripAllDTypesShapesBlobsAndAttributes) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  ASSERT_EQ((*image)->tensor_placements().size(), t.refs().size());
  for (std::size_t i = 0; i < t.refs().size(); ++i) {
    const DataPlacement& p = (*image)->tensor_placements()[i];
    EXPECT_EQ(p.path, t.refs()[i].name);
    EXPECT_EQ(p.size, t.refs()[i].data.size());
    EXPECT_EQ(p.offset == DataPlacement::kNoOffset, t.refs()[i].data.empty()) << p.path;
  }
  auto reader = OpenImage(**image);
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  ExpectContents(**reader, t);
  EXPECT_EQ((*reader)->attributes(), kAttrs);
  auto step = (*reader)->Attribute("step");
  ASSERT_TRUE(step.has_value());
  EXPECT_EQ(*step, "40");

  auto info = (*reader)->Info("layer1/weight");
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->dtype, DType::kF16);
  EXPECT_EQ(info->shape, (std::vector<uint64_t>{2, 3, 4, 5}));
  EXPECT_EQ(info->size_bytes, 240u);
  auto scalar = (*reader)->Info("scalar_f32");
  ASSERT_TRUE(scalar.has_value());
  EXPECT_TRUE(scalar->shape.empty());
  EXPECT_EQ(scalar->size_bytes, 4u);

  auto missing = (*reader)->Info("layer1");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_THAT(missing.error().ToString(), HasSubstr("layer1"));
  std::vector<std::byte> wrong(3);
  auto bad = (*reader)->ReadTensor("one", wrong);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);
  EXPECT_EQ((*reader)->ReadTensor("nope", wrong).error().code(), Code::kNotFound);
  EXPECT_EQ((*reader)->ReadBlob("nope").error().code(), Code::kNotFound);
  EXPECT_EQ((*reader)->Attribute("nope").error().code(), Code::kNotFound);
}

TEST(ShardImageTest, ThreeHundredTensorsInNestedGroups) {
  OwnedTensors t;
  for (int i = 0; i < 300; ++i) {
    const DType dt = static_cast<DType>(1 + i % 7);
    t.Add(fmt::format("block{}/layer{}/p{}", i % 5, i % 11, i), dt,
          {static_cast<uint64_t>(1 + i % 13), static_cast<uint64_t>(1 + i % 3)},
          static_cast<uint32_t>(i));
  }
  auto image = BuildShardImage(t.refs(), {}, {});
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  ExpectMetadataFirst(**image);
  auto reader = OpenImage(**image);
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  ExpectContents(**reader, t);
}

TEST(ShardImageTest, SegmentsAreSortedContiguousAndPointIntoCallerMemory) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  const ShardImage& img = **image;
  ExpectMetadataFirst(img);
  const std::vector<std::byte> all = Materialize(img, img.size());
  EXPECT_EQ(Materialize(img, 4096), all);
  EXPECT_EQ(Materialize(img, 1000), all);
  EXPECT_EQ(Materialize(img, 1), std::vector<std::byte>(all.begin(), all.end()));

  // Each tensor's bytes are one segment pointing at the caller's buffer.
  for (std::size_t i = 0; i < t.refs().size(); ++i) {
    const DataPlacement& p = img.tensor_placements()[i];
    if (p.offset == DataPlacement::kNoOffset) continue;
    std::vector<std::span<const std::byte>> segs;
    img.Segments(p.offset, p.size, &segs);
    ASSERT_EQ(segs.size(), 1u) << p.path;
    EXPECT_EQ(segs[0].data(), t.refs()[i].data.data()) << p.path;
    EXPECT_EQ(segs[0].size(), p.size);
  }
  // Zero segments are nullptr; requests past the end are clipped.
  std::vector<std::span<const std::byte>> segs;
  img.Segments(img.size() - 10, 100, &segs);
  uint64_t total = 0;
  for (auto s : segs) total += s.size();
  EXPECT_EQ(total, 10u);
  segs.clear();
  img.Segments(img.size(), 100, &segs);
  EXPECT_TRUE(segs.empty());
  EXPECT_GT(img.metadata_bytes(), 0u);
  EXPECT_LT(img.metadata_bytes(), 64u * 1024);
}

// HDF5 itself (sec2 driver) reads the image written to a real file.
TEST(ShardImageTest, ImageIsAnOrdinaryHdf5File) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  TempDir dir;
  const std::string path = dir.File("shard.h5");
  testutil::WriteFile(path, Materialize(**image));
  auto contents = ReadPlainH5(path);
  ASSERT_TRUE(contents.has_value()) << contents.error().ToString();
  ASSERT_EQ(contents->tensors.size(), t.refs().size());
  std::map<std::string, const TensorRef*> want;
  for (const TensorRef& r : t.refs()) want[r.name] = &r;
  for (const PlainTensor& pt : contents->tensors) {
    ASSERT_TRUE(want.contains(pt.info.name)) << pt.info.name;
    const TensorRef& ref = *want[pt.info.name];
    EXPECT_EQ(pt.info.dtype, ref.dtype) << ref.name;
    EXPECT_EQ(pt.info.shape, ref.shape) << ref.name;
    EXPECT_TRUE(std::equal(pt.data.begin(), pt.data.end(), ref.data.begin(), ref.data.end()))
        << ref.name;
  }
  EXPECT_EQ(contents->attrs, kAttrs);
  ASSERT_EQ(contents->blobs.size(), 3u);
  EXPECT_EQ(contents->blobs[0].first, "data/cursor");
}

constexpr std::string_view kReadImageScript = R"PY(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
def show(name, obj):
    if isinstance(obj, h5py.Dataset) and not name.startswith(".cairn"):
        data = obj[()]
        raw = "hex:" + (np.asarray(data).tobytes().hex() if obj.size < 5000 else "-")
        dt = obj.attrs["cairn.dtype"]
        print(name, obj.dtype, "x".join(map(str, obj.shape)) or "scalar",
              dt.decode() if isinstance(dt, bytes) else dt, raw)
f.visititems(show)
big = f["big"][...]
print("big_ok", bool(np.array_equal(big, np.arange(big.size, dtype=np.float32) * np.float32(0.5))))
print("attr_step", f[".cairn"].attrs["step"])
print("blob_rng", bytes(f[".cairn/blobs/rng"][...]).decode())
)PY";

TEST(ShardImageTest, H5pyReadsTheImage) {
  if (!testutil::HaveH5py()) GTEST_SKIP() << "python3-h5py is not installed";
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  TempDir dir;
  const std::string path = dir.File("shard.h5");
  testutil::WriteFile(path, Materialize(**image));
  auto r = testutil::RunPython(dir, kReadImageScript, path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, std::vector<std::string>> lines;
  for (const std::string& line : testutil::Split(r.output, '\n')) {
    auto fields = testutil::Split(line, ' ');
    if (!fields.empty()) lines[fields[0]] = fields;
  }
  const std::map<DType, std::string> numpy_names = {
      {DType::kF32, "float32"}, {DType::kF64, "float64"}, {DType::kF16, "float16"},
      {DType::kI32, "int32"},   {DType::kI64, "int64"},   {DType::kU8, "uint8"}};
  for (const TensorRef& ref : t.refs()) {
    SCOPED_TRACE(ref.name);
    ASSERT_TRUE(lines.contains(ref.name)) << r.output;
    const auto& f = lines[ref.name];
    ASSERT_GE(f.size(), 5u);
    EXPECT_EQ(f[3], DTypeName(ref.dtype));
    if (ref.dtype == DType::kBF16) continue;  // numpy has no bfloat16
    EXPECT_EQ(f[1], numpy_names.at(ref.dtype));
    if (ref.name != "big") {
      EXPECT_EQ(f[4], "hex:" + Hex(ref.data));
    }
  }
  EXPECT_EQ(lines["big_ok"], (std::vector<std::string>{"big_ok", "True"})) << r.output;
  EXPECT_EQ(lines["attr_step"], (std::vector<std::string>{"attr_step", "40"})) << r.output;
  EXPECT_EQ(lines["blob_rng"], (std::vector<std::string>{"blob_rng", "rng-state-0123456789"}));
}

// Files under `dir` (recursively) whose contents contain `needle`.
std::vector<std::string> FilesContaining(const fs::path& dir, std::string_view needle,
                                         fs::file_time_type since) {
  std::vector<std::string> hits;
  std::error_code ec;
  for (auto it =
           fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code e2;
    if (!it->is_regular_file(e2) || it->file_size(e2) > (64u << 20)) continue;
    if (it->last_write_time(e2) < since) continue;
    std::ifstream f(it->path(), std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (content.find(needle) != std::string::npos) hits.push_back(it->path().string());
  }
  return hits;
}

TEST(ShardImageTest, WritesNothingToDisk) {
  TempDir cwd;
  const fs::path old_cwd = fs::current_path();
  fs::current_path(cwd.path());
  const auto start = fs::file_time_type::clock::now() - std::chrono::seconds(1);
  const std::string secret = "zz_secret_tensor_name_" + io::RandomSuffix();
  OwnedTensors t;
  t.Add(secret + "/w", DType::kF32, {16});
  auto image = BuildShardImage(t.refs(), {}, {{"note", secret}});
  fs::current_path(old_cwd);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  // The name is in the image (in memory) ...
  const std::vector<std::byte> bytes = Materialize(**image);
  const std::string_view view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  EXPECT_NE(view.find(secret), std::string_view::npos);
  // ... and nowhere on disk: no file appeared in the working directory or in /tmp.
  EXPECT_TRUE(fs::is_empty(cwd.path()));
  EXPECT_THAT(FilesContaining(fs::temp_directory_path(), secret, start), ::testing::IsEmpty());
  // The scan does find such a file.
  testutil::WriteFile(cwd.File("probe"), std::as_bytes(std::span(secret)));
  EXPECT_THAT(FilesContaining(fs::temp_directory_path(), secret, start), ::testing::SizeIs(1));
}

TEST(ShardImageTest, BuildTimeDependsOnTensorCountNotBytes) {
  constexpr int kTensors = 256;
  constexpr std::size_t kBytes = 4u << 20;
  std::vector<std::byte> big(kBytes, std::byte{0x5a});
  std::vector<std::byte> tiny(4, std::byte{0x5a});
  auto make = [&](std::span<const std::byte> data) {
    std::vector<TensorRef> refs;
    for (int i = 0; i < kTensors; ++i) {
      refs.push_back({fmt::format("layers/{}/w", i), DType::kF32, {data.size() / 4}, data});
    }
    return refs;
  };
  const auto big_refs = make(big);
  const auto tiny_refs = make(tiny);
  auto time = [](std::span<const TensorRef> refs, std::unique_ptr<ShardImage>* out) {
    const auto t0 = std::chrono::steady_clock::now();
    auto image = BuildShardImage(refs, {}, {{"step", "1"}});
    const auto t1 = std::chrono::steady_clock::now();
    EXPECT_TRUE(image.has_value()) << image.error().ToString();
    if (image) *out = std::move(*image);
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
  };
  std::unique_ptr<ShardImage> img_big, img_tiny;
  time(big_refs, &img_big);  // warm-up (driver registration, HDF5 init)
  const double ms_big = time(big_refs, &img_big);
  const double ms_tiny = time(tiny_refs, &img_tiny);
  ASSERT_TRUE(img_big && img_tiny);
  fmt::print(
      "[ image ] {} tensors x 4 MiB: BuildShardImage {:.2f} ms; image {} bytes, "
      "{} segments, {} metadata bytes; {} tensors x 4 B: {:.2f} ms\n",
      kTensors, ms_big, img_big->size(), img_big->segment_count(), img_big->metadata_bytes(),
      kTensors, ms_tiny);
  EXPECT_GE(img_big->size(), uint64_t{kTensors} * kBytes);
  EXPECT_LT(img_big->size(), uint64_t{kTensors} * kBytes + (1u << 20));
  EXPECT_LT(ms_big, 2000.0);  // milliseconds in practice; generous for loaded machines
  ExpectMetadataFirst(*img_big);
  // Every tensor is a single span into the shared buffer: nothing was copied.
  for (const DataPlacement& p : img_big->tensor_placements()) {
    std::vector<std::span<const std::byte>> segs;
    img_big->Segments(p.offset, p.size, &segs);
    ASSERT_EQ(segs.size(), 1u);
    EXPECT_EQ(segs[0].data(), big.data());
  }
}

TEST(ShardImageTest, RejectsBadInput) {
  auto expect_invalid = [](std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                           const std::map<std::string, std::string>& attrs,
                           std::string_view mention) {
    auto image = BuildShardImage(tensors, blobs, attrs);
    ASSERT_FALSE(image.has_value()) << mention;
    EXPECT_EQ(image.error().code(), Code::kInvalidArgument) << image.error().ToString();
    EXPECT_THAT(image.error().ToString(), HasSubstr(std::string(mention)));
  };
  std::vector<std::byte> four(4);
  for (std::string name : {"", "/a", "a/", "a//b", "a/./b", "../a", ".cairn/x"}) {
    const TensorRef ref{name, DType::kF32, {1}, four};
    expect_invalid(std::span(&ref, 1), {}, {}, name.empty() ? "tensor name" : name);
  }
  const std::vector<TensorRef> dup = {{"x", DType::kF32, {1}, four}, {"x", DType::kI32, {1}, four}};
  expect_invalid(dup, {}, {}, "duplicate tensor name 'x'");
  const std::vector<TensorRef> clash = {{"a", DType::kF32, {1}, four},
                                        {"a/b", DType::kF32, {1}, four}};
  expect_invalid(clash, {}, {}, "'a'");
  const TensorRef wrong_size{"w", DType::kF64, {1}, four};
  expect_invalid(std::span(&wrong_size, 1), {}, {}, "tensor 'w'");
  const TensorRef wrong_shape{"s", DType::kF32, {2, 2}, four};
  expect_invalid(std::span(&wrong_shape, 1), {}, {}, "tensor 's'");
  const TensorRef high_rank{"r", DType::kU8, std::vector<uint64_t>(33, 1),
                            std::span(four).first(1)};
  expect_invalid(std::span(&high_rank, 1), {}, {}, "rank 33");
  const std::vector<BlobRef> dup_blobs = {{"b", four}, {"b", four}};
  expect_invalid({}, dup_blobs, {}, "duplicate blob name 'b'");
  const BlobRef bad_blob{"a//b", four};
  expect_invalid({}, std::span(&bad_blob, 1), {}, "a//b");
  expect_invalid({}, {}, {{"k", std::string("a\0b", 3)}}, "attribute 'k'");
  expect_invalid({}, {}, {{"", "v"}}, "attribute name");
}

TEST(ShardImageTest, SourceErrorsComeBackAsTheSourceError) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  const std::vector<std::byte> bytes = Materialize(**image);
  const DataPlacement* big = nullptr;
  for (const DataPlacement& p : (*image)->tensor_placements()) {
    if (p.path == "big") big = &p;
  }
  ASSERT_NE(big, nullptr);

  // A chunk in the middle of "big" fails: the catalog opens, that tensor fails.
  const uint64_t mid = big->offset + big->size / 2;
  auto reader = H5ShardReader::Open(std::make_shared<FailingSource>(bytes, mid, mid + 1), "s1");
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  std::vector<std::byte> out(big->size);
  auto st = (*reader)->ReadTensor("big", out);
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), Code::kDataLoss);
  EXPECT_EQ(st.error().message(), fmt::format("chunk at {} failed authentication", mid));
  EXPECT_THAT(st.error().ToString(), HasSubstr("tensor 'big'"));
  EXPECT_THAT(st.error().ToString(), HasSubstr("s1"));
  // Other tensors still read, and so does a retry's error.
  std::vector<std::byte> ids(40);
  EXPECT_TRUE((*reader)->ReadTensor("ids", ids).has_value());
  EXPECT_EQ((*reader)->ReadTensor("big", out).error().code(), Code::kDataLoss);

  // The superblock fails: Open returns the source's error.
  auto bad_open = H5ShardReader::Open(std::make_shared<FailingSource>(bytes, 0, 8), "s2");
  ASSERT_FALSE(bad_open.has_value());
  EXPECT_EQ(bad_open.error().code(), Code::kDataLoss);
  EXPECT_EQ(bad_open.error().message(), "chunk at 0 failed authentication");
  EXPECT_THAT(bad_open.error().ToString(), HasSubstr("s2"));

  // Every byte after the superblock fails (metadata unreadable).
  auto bad_meta =
      H5ShardReader::Open(std::make_shared<FailingSource>(bytes, 200, bytes.size()), "s3");
  ASSERT_FALSE(bad_meta.has_value());
  EXPECT_EQ(bad_meta.error().code(), Code::kDataLoss);
  EXPECT_EQ(bad_meta.error().message(), "chunk at 200 failed authentication");
}

TEST(ShardImageTest, GarbageIsACleanError) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  const std::vector<std::byte> bytes = Materialize(**image);

  std::mt19937 rng(42);
  std::vector<std::byte> random(1 << 16);
  for (auto& b : random) b = static_cast<std::byte>(rng());
  const std::vector<std::pair<std::string, std::vector<std::byte>>> cases = {
      {"random", random},
      {"empty", {}},
      {"zeros", std::vector<std::byte>(1 << 16)},
      {"truncated", std::vector<std::byte>(bytes.begin(), bytes.begin() + bytes.size() / 2)},
      {"superblock only", std::vector<std::byte>(bytes.begin(), bytes.begin() + 96)},
  };
  for (const auto& [what, data] : cases) {
    auto reader = H5ShardReader::Open(std::make_shared<MemorySource>(data), what);
    ASSERT_FALSE(reader.has_value()) << what;
    EXPECT_EQ(reader.error().code(), Code::kDataLoss) << reader.error().ToString();
    EXPECT_THAT(reader.error().ToString(), HasSubstr("HDF5")) << what;
  }
}

// A file with types cairn does not support: errors name the dataset.
TEST(ShardImageTest, UnsupportedTypesAreInvalidArgument) {
  TempDir dir;
  struct Case {
    std::string name;
    hid_t type;
  };
  for (const Case& c : {Case{"i16", H5T_STD_I16LE}, Case{"u32", H5T_STD_U32LE},
                        Case{"i8", H5T_STD_I8LE}, Case{"str", H5T_C_S1}}) {
    const std::string path = dir.File(c.name + ".h5");
    {
      std::lock_guard<std::mutex> lock(H5Mutex());
      hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
      ASSERT_GE(file, 0);
      hsize_t dims[1] = {4};
      hid_t space = H5Screate_simple(1, dims, nullptr);
      hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
      H5Pset_create_intermediate_group(lcpl, 1);
      hid_t dset = H5Dcreate2(file, ("grp/" + c.name).c_str(), c.type, space, lcpl, H5P_DEFAULT,
                              H5P_DEFAULT);
      H5Pclose(lcpl);
      ASSERT_GE(dset, 0);
      H5Dclose(dset);
      H5Sclose(space);
      H5Fclose(file);
    }
    std::ifstream f(path, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> bytes(s.size());
    std::memcpy(bytes.data(), s.data(), s.size());
    auto reader = H5ShardReader::Open(std::make_shared<MemorySource>(bytes), c.name);
    ASSERT_FALSE(reader.has_value()) << c.name;
    EXPECT_EQ(reader.error().code(), Code::kInvalidArgument) << reader.error().ToString();
    EXPECT_THAT(reader.error().ToString(), HasSubstr("grp/" + c.name));
    auto plain = ReadPlainH5(path);
    ASSERT_FALSE(plain.has_value());
    EXPECT_EQ(plain.error().code(), Code::kInvalidArgument) << plain.error().ToString();
  }
}

// Records every read so that tests can see where bytes went.
class RecordingSource : public MemorySource {
 public:
  struct Read {
    uint64_t offset;
    std::size_t size;
    const std::byte* dest;
  };
  using MemorySource::MemorySource;
  Status ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      reads_.push_back({offset, out.size(), out.data()});
    }
    return MemorySource::ReadAt(offset, out);
  }
  std::vector<Read> TakeReads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(reads_, {});
  }

 private:
  mutable std::mutex mu_;
  mutable std::vector<Read> reads_;
};

TEST(ShardImageTest, ContiguousTensorsAreReadStraightIntoTheCallerBuffer) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value()) << image.error().ToString();
  auto src = std::make_shared<RecordingSource>(Materialize(**image));
  auto reader = H5ShardReader::Open(src, "rec");
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  for (const DataPlacement& p : (*image)->tensor_placements()) {
    if (p.offset == DataPlacement::kNoOffset) continue;
    SCOPED_TRACE(p.path);
    std::vector<std::byte> out(p.size);
    src->TakeReads();
    ASSERT_TRUE((*reader)->ReadTensor(p.path, out).has_value());
    const auto reads = src->TakeReads();
    ASSERT_EQ(reads.size(), 1u);
    EXPECT_EQ(reads[0].offset, p.offset);
    EXPECT_EQ(reads[0].size, p.size);
    EXPECT_EQ(reads[0].dest, out.data());
  }
}

// The sparse byte map behind the image driver, against a flat reference.
TEST(ShardImageTest, SparseBytesMergesOverlappingWritesLaterWins) {
  std::mt19937 rng(3);
  for (int round = 0; round < 50; ++round) {
    h5internal::SparseBytes sparse;
    std::vector<std::byte> flat(4096);
    std::vector<bool> written(4096);
    for (int w = 0; w < 60; ++w) {
      const uint64_t addr = rng() % 4000;
      const std::size_t n = 1 + rng() % (w % 7 == 0 ? 90 : 12);
      std::vector<std::byte> data(n);
      for (auto& b : data) b = static_cast<std::byte>(1 + rng() % 255);
      sparse.Write(addr, data.data(), n);
      std::copy(data.begin(), data.end(), flat.begin() + static_cast<std::ptrdiff_t>(addr));
      std::fill(written.begin() + static_cast<std::ptrdiff_t>(addr),
                written.begin() + static_cast<std::ptrdiff_t>(addr + n), true);
    }
    std::vector<std::byte> got(4096);
    sparse.Read(0, got.data(), got.size());
    ASSERT_EQ(got, flat) << "round " << round;
    std::vector<std::byte> part(100);
    sparse.Read(1234, part.data(), part.size());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), flat.begin() + 1234));
    // Extents are sorted, disjoint, non-adjacent, and cover exactly the written bytes.
    uint64_t prev_end = 0;
    bool first = true;
    std::vector<bool> covered(4096);
    for (const auto& [off, bytes] : sparse.extents()) {
      if (!first) {
        EXPECT_GT(off, prev_end);
      }
      first = false;
      prev_end = off + bytes.size();
      for (uint64_t i = off; i < prev_end; ++i) covered[i] = true;
    }
    EXPECT_EQ(covered, written);
  }
}

TEST(ShardImageTest, ConcurrentBuildsAndReads) {
  OwnedTensors t = MakeMixed();
  auto image = BuildShardImage(t.refs(), t.blobs(), kAttrs);
  ASSERT_TRUE(image.has_value());
  auto reader = OpenImage(**image);
  ASSERT_TRUE(reader.has_value());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) {
        auto img = BuildShardImage(t.refs(), t.blobs(), kAttrs);
        if (!img || (*img)->size() != (*image)->size()) ++failures;
      }
    });
  }
  threads.emplace_back([&] {
    std::vector<std::byte> out(kBigElems * 4);
    for (int i = 0; i < 20; ++i) {
      if (!(*reader)->ReadTensor("big", out)) ++failures;
      auto r2 = OpenImage(**image);
      if (!r2) ++failures;
    }
  });
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace cairn::ckpt
