// Helpers shared by the checkpoint tests: temp directories, keys, deterministic tensors.
#pragma once

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "checkpoint/crypto.h"
#include "checkpoint/keys.h"
#include "checkpoint/types.h"
#include "common/io.h"

namespace cairn::ckpt::testing {

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() / ("cairn_ckpt_" + io::RandomSuffix());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string Sub(std::string_view name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::shared_ptr<const MasterKey> NewKey(std::string source = "test key") {
  auto k = SecretKey::Random();
  MasterKey m{*k, KeyId(*k), std::move(source)};
  return std::make_shared<const MasterKey>(std::move(m));
}

// A tensor that owns its bytes (filled from a seed, reproducibly).
struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  std::vector<std::byte> bytes;

  TensorRef ref() const { return {name, dtype, shape, bytes}; }
};

inline OwnedTensor MakeTensor(std::string name, DType dtype, std::vector<uint64_t> shape,
                              uint64_t seed) {
  OwnedTensor t{std::move(name), dtype, std::move(shape), {}};
  uint64_t n = *NumElements(t.shape) * DTypeSize(dtype);
  t.bytes.resize(n);
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(t.bytes.data() + i, &v, std::min<uint64_t>(8, n - i));
  }
  return t;
}

inline std::vector<TensorRef> Refs(const std::vector<OwnedTensor>& ts) {
  std::vector<TensorRef> out;
  for (const auto& t : ts) out.push_back(t.ref());
  return out;
}

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteFileBytes(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

// Every regular file under dir (recursively).
inline std::vector<std::string> AllFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) out.push_back(e.path().string());
  }
  return out;
}

}  // namespace cairn::ckpt::testing
