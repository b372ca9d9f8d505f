#include "checkpoint/h5_plain.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <map>

#include "checkpoint/h5_test_util.h"

namespace cairn::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testutil::Hex;
using testutil::OwnedTensors;
using testutil::TempDir;

OwnedTensors MakeTensors() {
  OwnedTensors t;
  t.Add("layer1/weight", DType::kF32, {3, 4}, 1);
  t.Add("layer1/bias", DType::kF16, {4}, 2);
  t.Add("emb", DType::kBF16, {2, 3}, 3);
  t.Add("f64", DType::kF64, {2}, 4);
  t.Add("step", DType::kI64, {}, 5);
  t.Add("ids", DType::kI32, {6}, 6);
  t.Add("mask", DType::kU8, {2, 0}, 7);
  t.Add("a/b/c", DType::kU8, {5}, 8);
  t.AddBlob("rng", "rng-bytes");
  return t;
}

const std::map<std::string, std::string> kAttrs = {{"format", "cairn-1"}, {"step", "7"}};

void ExpectSame(const PlainH5Contents& got, const OwnedTensors& want) {
  std::map<std::string, const TensorRef*> by_name;
  for (const TensorRef& r : want.refs()) by_name[r.name] = &r;
  ASSERT_EQ(got.tensors.size(), by_name.size());
  auto it = by_name.begin();
  for (const PlainTensor& t : got.tensors) {
    const TensorRef& ref = *(it++)->second;
    SCOPED_TRACE(ref.name);
    EXPECT_EQ(t.info.name, ref.name);
    EXPECT_EQ(t.info.dtype, ref.dtype);
    EXPECT_EQ(t.info.shape, ref.shape);
    EXPECT_EQ(Hex(t.data), Hex(ref.data));
  }
}

TEST(PlainH5Test, WriteThenReadRoundTripWithPrivateMode) {
  TempDir dir;
  const std::string path = dir.File("export.h5");
  OwnedTensors t = MakeTensors();
  ASSERT_TRUE(WritePlainH5(path, t.refs(), t.blobs(), kAttrs).has_value());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto got = ReadPlainH5(path);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  ExpectSame(*got, t);
  EXPECT_EQ(got->attrs, kAttrs);
  ASSERT_EQ(got->blobs.size(), 1u);
  EXPECT_EQ(got->blobs[0].first, "rng");
  EXPECT_EQ(got->blobs[0].second.size(), 9u);

  // Overwriting an existing export replaces it.
  OwnedTensors t2;
  t2.Add("only", DType::kF32, {2}, 9);
  ASSERT_TRUE(WritePlainH5(path, t2.refs(), {}, {}).has_value());
  auto got2 = ReadPlainH5(path);
  ASSERT_TRUE(got2.has_value()) << got2.error().ToString();
  ExpectSame(*got2, t2);
  EXPECT_TRUE(got2->attrs.empty());
}

TEST(PlainH5Test, Errors) {
  TempDir dir;
  auto missing = ReadPlainH5(dir.File("missing.h5"));
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_THAT(missing.error().ToString(), HasSubstr("missing.h5"));

  const std::string junk = dir.File("junk.h5");
  testutil::WriteFile(junk, std::as_bytes(std::span("definitely not HDF5", 19)));
  auto not_h5 = ReadPlainH5(junk);
  ASSERT_FALSE(not_h5.has_value());
  EXPECT_EQ(not_h5.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(not_h5.error().ToString(), HasSubstr("HDF5"));

  std::vector<std::byte> four(4);
  const TensorRef bad{"x", DType::kF64, {1}, four};
  const std::string out = dir.File("bad.h5");
  auto st = WritePlainH5(out, std::span(&bad, 1), {}, {});
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), Code::kInvalidArgument);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".tmp"));

  const TensorRef good{"x", DType::kF32, {1}, four};
  auto no_dir = WritePlainH5(dir.File("no/such/dir.h5"), std::span(&good, 1), {}, {});
  ASSERT_FALSE(no_dir.has_value());
  EXPECT_EQ(no_dir.error().code(), Code::kNotFound) << no_dir.error().ToString();
}

constexpr std::string_view kDumpScript = R"PY(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
def show(name, obj):
    if isinstance(obj, h5py.Dataset):
        data = np.asarray(obj[()])
        le = data.astype(data.dtype.newbyteorder("<"))
        print(name, obj.dtype.str if obj.dtype.kind != "f" or obj.dtype.itemsize != 2 else "f16",
              "x".join(map(str, obj.shape)) or "scalar", "hex:" + le.tobytes().hex())
f.visititems(show)
for k, v in f[".cairn"].attrs.items() if ".cairn" in f else []:
    print("attr", k, v)
)PY";

std::map<std::string, std::vector<std::string>> ParseDump(const std::string& output) {
  std::map<std::string, std::vector<std::string>> lines;
  for (const std::string& line : testutil::Split(output, '\n')) {
    auto fields = testutil::Split(line, ' ');
    if (fields.size() >= 2 && fields[0] == "attr") {
      lines["attr " + fields[1]] = fields;
    } else if (!fields.empty()) {
      lines[fields[0]] = fields;
    }
  }
  return lines;
}

TEST(PlainH5Test, H5pyReadsTheExportBitForBit) {
  if (!testutil::HaveH5py()) GTEST_SKIP() << "python3-h5py is not installed";
  TempDir dir;
  const std::string path = dir.File("export.h5");
  OwnedTensors t = MakeTensors();
  ASSERT_TRUE(WritePlainH5(path, t.refs(), t.blobs(), kAttrs).has_value());
  auto r = testutil::RunPython(dir, kDumpScript, path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto lines = ParseDump(r.output);
  const std::map<DType, std::string> numpy = {{DType::kF32, "<f4"}, {DType::kF64, "<f8"},
                                              {DType::kF16, "f16"}, {DType::kI32, "<i4"},
                                              {DType::kI64, "<i8"}, {DType::kU8, "|u1"}};
  for (const TensorRef& ref : t.refs()) {
    SCOPED_TRACE(ref.name);
    ASSERT_TRUE(lines.contains(ref.name)) << r.output;
    const auto& f = lines[ref.name];
    ASSERT_EQ(f.size(), 4u) << r.output;
    if (ref.dtype == DType::kBF16) continue;  // numpy has no bfloat16
    EXPECT_EQ(f[1], numpy.at(ref.dtype));
    EXPECT_EQ(f[3], "hex:" + Hex(ref.data));
  }
  EXPECT_EQ(lines["attr format"], (std::vector<std::string>{"attr", "format", "cairn-1"}));
  EXPECT_EQ(lines[".cairn/blobs/rng"][3], "hex:" + Hex(t.blobs()[0].data));
}

constexpr std::string_view kMakeScript = R"PY(
import sys, h5py, numpy as np
rng = np.random.default_rng(7)
with h5py.File(sys.argv[1], "w") as f:
    f["f32"] = rng.standard_normal((3, 4)).astype(np.float32)
    f["f64"] = rng.standard_normal(5)
    f["f16"] = rng.standard_normal((2, 2)).astype(np.float16)
    f["i32"] = np.int32(-123456)
    f["i64"] = np.zeros((0,), dtype=np.int64)
    f["u8"] = np.arange(7, dtype=np.uint8)
    f.create_group("g1/g2")["deep"] = np.array([1.5, -2.5], dtype=np.float32)
    f.create_dataset("chunked", data=rng.standard_normal((100, 50)).astype(np.float32),
                     chunks=(10, 10), compression="gzip", compression_opts=4, shuffle=True)
    f["be"] = np.array([1.0, 2.0, -3.25], dtype=">f8")
    f["i64big"] = np.arange(-5, 5, dtype=np.int64).reshape(2, 5)
    f.attrs["note"] = "root attributes are ignored"
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    space = h5py.h5s.create_simple((3,))
    compact = h5py.h5d.create(f.id, b"compact", h5py.h5t.STD_I32LE, space, dcpl=dcpl)
    compact.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array([7, -8, 9], dtype=np.int32))
)PY";

TEST(PlainH5Test, ReadsFilesWrittenByH5py) {
  if (!testutil::HaveH5py()) GTEST_SKIP() << "python3-h5py is not installed";
  TempDir dir;
  const std::string path = dir.File("from_h5py.h5");
  auto made = testutil::RunPython(dir, kMakeScript, path);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  auto dump = testutil::RunPython(dir, kDumpScript, path);
  ASSERT_EQ(dump.exit_code, 0) << dump.output;
  auto lines = ParseDump(dump.output);

  auto got = ReadPlainH5(path);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  const std::map<std::string, std::pair<DType, std::vector<uint64_t>>> want = {
      {"be", {DType::kF64, {3}}},         {"chunked", {DType::kF32, {100, 50}}},
      {"compact", {DType::kI32, {3}}},    {"f16", {DType::kF16, {2, 2}}},
      {"f32", {DType::kF32, {3, 4}}},     {"f64", {DType::kF64, {5}}},
      {"g1/g2/deep", {DType::kF32, {2}}}, {"i32", {DType::kI32, {}}},
      {"i64", {DType::kI64, {0}}},        {"i64big", {DType::kI64, {2, 5}}},
      {"u8", {DType::kU8, {7}}},
  };
  ASSERT_EQ(got->tensors.size(), want.size());
  auto it = want.begin();
  for (const PlainTensor& t : got->tensors) {
    const auto& [name, spec] = *(it++);
    SCOPED_TRACE(name);
    EXPECT_EQ(t.info.name, name);
    EXPECT_EQ(t.info.dtype, spec.first);
    EXPECT_EQ(t.info.shape, spec.second);
    ASSERT_TRUE(lines.contains(name)) << dump.output;
    EXPECT_EQ("hex:" + Hex(t.data), lines[name][3]);
  }
  EXPECT_TRUE(got->blobs.empty());
  EXPECT_TRUE(got->attrs.empty());
}

TEST(PlainH5Test, UnsupportedH5pyDatasetsAreNamed) {
  if (!testutil::HaveH5py()) GTEST_SKIP() << "python3-h5py is not installed";
  TempDir dir;
  for (const auto& [name, expr] : std::vector<std::pair<std::string, std::string>>{
           {"grp/flags", "np.array([True, False])"},
           {"grp/i16", "np.arange(3, dtype=np.int16)"},
           {"grp/text", "np.array([b'abc', b'de'])"},
           {"grp/cplx", "np.zeros(2, dtype=np.complex64)"}}) {
    const std::string path = dir.File("bad.h5");
    auto made = testutil::RunPython(dir,
                                    fmt::format("import sys, h5py, numpy as np\n"
                                                "with h5py.File(sys.argv[1], 'w') as f:\n"
                                                "    f['ok'] = np.float32(1)\n"
                                                "    f['{}'] = {}\n",
                                                name, expr),
                                    path);
    ASSERT_EQ(made.exit_code, 0) << made.output;
    auto got = ReadPlainH5(path);
    ASSERT_FALSE(got.has_value()) << name;
    EXPECT_EQ(got.error().code(), Code::kInvalidArgument) << got.error().ToString();
    EXPECT_THAT(got.error().ToString(), HasSubstr(name));
  }
}

}  // namespace
}  // namespace cairn::ckpt
