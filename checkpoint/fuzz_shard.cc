// libFuzzer target: reading a mutated encrypted shard. A valid shard (an HDF5 image with a
// few tensors, encrypted under a fixed key) is built once; the fuzzer's input is a list
// of edits (flip, overwrite, truncate, extend) applied to its bytes. Opening and reading
// the result must either fail with kDataLoss, or — when the edits left the file intact —
// return exactly the original tensors. Nothing may crash, and no unauthenticated byte
// may reach libhdf5.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/aead_stream.h"
#include "checkpoint/crypto.h"
#include "checkpoint/h5_image.h"
#include "checkpoint/h5_reader.h"

namespace {

using namespace cairn;
using namespace cairn::ckpt;

class MemFile final : public io::ReadableFile {
 public:
  explicit MemFile(std::string data) : data_(std::move(data)) {}
  Result<std::size_t> ReadAt(uint64_t off, std::span<std::byte> out) const override {
    if (off >= data_.size()) return std::size_t{0};
    std::size_t n = std::min<std::size_t>(out.size(), data_.size() - off);
    std::memcpy(out.data(), data_.data() + off, n);
    return n;
  }
  uint64_t size() const override { return data_.size(); }
  const std::string& path() const override { return path_; }

 private:
  std::string data_;
  std::string path_ = "<fuzz>";
};

class StringSink final : public io::WritableFile {
 public:
  Status Append(std::span<const std::byte> d) override {
    data.append(reinterpret_cast<const char*>(d.data()), d.size());
    return OkStatus();
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  const std::string& path() const override { return path_; }
  std::string data;

 private:
  std::string path_ = "<mem>";
};

struct Fixture {
  SecretKey key = SecretKey::FromBytes(std::vector<uint8_t>(32, 7));
  std::vector<std::vector<std::byte>> tensor_bytes;
  std::vector<TensorRef> tensors;
  std::string shard;
  ShardExpectation expect{};

  Fixture() {
    for (int i = 0; i < 3; ++i) {
      tensor_bytes.emplace_back(3000 * (i + 1));
      for (std::size_t k = 0; k < tensor_bytes.back().size(); ++k) {
        tensor_bytes.back()[k] = static_cast<std::byte>(k * 31 + i);
      }
    }
    tensors = {{"a", DType::kF32, {750}, tensor_bytes[0]},
               {"g/b", DType::kU8, {6000}, tensor_bytes[1]},
               {"g/c", DType::kI64, {1125}, tensor_bytes[2]}};
    auto image = BuildShardImage(tensors, {}, {{"step", "5"}});
    if (!image) std::abort();
    ShardHeader h;
    h.chunk_size = 4096;
    h.plaintext_size = (*image)->size();
    h.step = 5;
    h.rank = 0;
    h.world_size = 1;
    h.run_tag = RunTag("fuzz");
    StringSink sink;
    EncryptOptions eo;
    eo.threads = 1;
    auto sum = EncryptShard(**image, h, key, sink, eo);
    if (!sum) std::abort();
    shard = sink.data;
    expect = {5, 0, 1, RunTag("fuzz"), 0};
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fx = new Fixture();
  std::string bytes = fx->shard;
  // Edits: 4 bytes each: op, pos (2 bytes, scaled), value.
  for (size_t i = 0; i + 4 <= size; i += 4) {
    const uint8_t op = data[i] % 4;
    const size_t pos = ((static_cast<size_t>(data[i + 1]) << 8) | data[i + 2]) * bytes.size() / 65536;
    const uint8_t v = data[i + 3];
    if (bytes.empty()) break;
    switch (op) {
      case 0: bytes[pos % bytes.size()] ^= static_cast<char>(v | 1); break;
      case 1: bytes[pos % bytes.size()] = static_cast<char>(v); break;
      case 2: bytes.resize(pos); break;
      case 3: bytes.append(v % 64 + 1, static_cast<char>(v)); break;
    }
  }
  const bool intact = bytes == fx->shard;
  ShardExpectation expect = fx->expect;
  expect.file_size = bytes.size();
  auto file = std::make_shared<MemFile>(bytes);
  auto dec = ShardDecryptor::Open(file, fx->key, expect);
  if (!dec) {
    if (intact || dec.error().code() != cairn::Code::kDataLoss) std::abort();
    return 0;
  }
  std::shared_ptr<const RandomAccessSource> src(std::move(*dec));
  auto reader = H5ShardReader::Open(src, "fuzz");
  if (!reader) {
    if (intact || reader.error().code() != cairn::Code::kDataLoss) std::abort();
    return 0;
  }
  for (const auto& t : fx->tensors) {
    std::vector<std::byte> out(t.data.size());
    auto st = (*reader)->ReadTensor(t.name, out);
    if (!st) {
      if (intact || st.error().code() != cairn::Code::kDataLoss) std::abort();
      continue;
    }
    // Authenticated bytes are the original bytes.
    if (std::memcmp(out.data(), t.data.data(), out.size()) != 0) std::abort();
  }
  return 0;
}
