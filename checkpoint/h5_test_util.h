// Test helpers shared by h5_image_test.cc and h5_plain_test.cc: tensors with owned
// storage, in-memory and failing RandomAccessSources, temp directories, and running
// /usr/bin/python3 (h5py) scripts.
//
// Threading: test-only; MemorySource and FailingSource are safe for concurrent reads,
// the rest is used by one thread.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "checkpoint/types.h"
#include "common/io.h"
#include "common/status.h"

namespace cairn::ckpt::testutil {

// Tensors whose bytes live in stable storage owned by this object.
class OwnedTensors {
 public:
  // Adds a tensor filled with deterministic pseudo-random bytes.
  const TensorRef& Add(std::string name, DType dtype, std::vector<uint64_t> shape,
                       uint32_t seed = 1) {
    const uint64_t n = *NumElements(shape) * DTypeSize(dtype);
    std::vector<std::byte> bytes(n);
    std::mt19937 rng(seed);
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    return AddBytes(std::move(name), dtype, std::move(shape), std::move(bytes));
  }
  const TensorRef& AddBytes(std::string name, DType dtype, std::vector<uint64_t> shape,
                            std::vector<std::byte> bytes) {
    storage_.push_back(std::move(bytes));
    refs_.push_back(TensorRef{std::move(name), dtype, std::move(shape), storage_.back()});
    return refs_.back();
  }
  const BlobRef& AddBlob(std::string name, std::string_view content) {
    const auto* p = reinterpret_cast<const std::byte*>(content.data());
    storage_.emplace_back(p, p + content.size());
    blobs_.push_back(BlobRef{std::move(name), storage_.back()});
    return blobs_.back();
  }
  std::span<const TensorRef> refs() const { return refs_; }
  std::span<const BlobRef> blobs() const { return blobs_; }

 private:
  std::deque<std::vector<std::byte>> storage_;
  std::vector<TensorRef> refs_;
  std::vector<BlobRef> blobs_;
};

inline std::string Hex(std::span<const std::byte> bytes) {
  return ToHex(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

// Concatenates the segments of a PlaintextSource, asking for `chunk` bytes at a time.
inline std::vector<std::byte> Materialize(const PlaintextSource& src, uint64_t chunk = 1ull << 20) {
  std::vector<std::byte> out(src.size());
  std::vector<std::span<const std::byte>> segs;
  for (uint64_t off = 0; off < src.size(); off += chunk) {
    segs.clear();
    src.Segments(off, chunk, &segs);
    uint64_t pos = off;
    for (auto s : segs) {
      if (s.data() != nullptr) std::memcpy(out.data() + pos, s.data(), s.size());
      pos += s.size();
    }
    EXPECT_EQ(pos, std::min<uint64_t>(off + chunk, src.size())) << "segments at " << off;
  }
  return out;
}

class MemorySource : public RandomAccessSource {
 public:
  explicit MemorySource(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  uint64_t size() const override { return bytes_.size(); }
  Status ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    if (offset > bytes_.size() || out.size() > bytes_.size() - offset) {
      return MakeError(Code::kDataLoss, "read of {} bytes at {} past the end ({})", out.size(),
                       offset, bytes_.size());
    }
    std::memcpy(out.data(), bytes_.data() + offset, out.size());
    return OkStatus();
  }
  const std::vector<std::byte>& bytes() const { return bytes_; }

 private:
  std::vector<std::byte> bytes_;
};

// Fails (kDataLoss) every read that touches [bad_begin, bad_end).
class FailingSource : public MemorySource {
 public:
  FailingSource(std::vector<std::byte> bytes, uint64_t bad_begin, uint64_t bad_end)
      : MemorySource(std::move(bytes)), bad_begin_(bad_begin), bad_end_(bad_end) {}
  Status ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    if (offset < bad_end_ && offset + out.size() > bad_begin_) {
      return MakeError(Code::kDataLoss, "chunk at {} failed authentication", bad_begin_);
    }
    return MemorySource::ReadAt(offset, out);
  }

 private:
  uint64_t bad_begin_;
  uint64_t bad_end_;
};

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            fmt::format("cairn_h5_test_{}", io::RandomSuffix());
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string File(std::string_view name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void WriteFile(const std::string& path, std::span<const std::byte> bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

inline CommandResult RunCommand(const std::string& cmd) {
  CommandResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

constexpr char kPython[] = "/usr/bin/python3";

inline bool HaveH5py() {
  static const bool have =
      RunCommand(fmt::format("{} -c 'import h5py, numpy'", kPython)).exit_code == 0;
  return have;
}

// Writes `script` into `dir` and runs it with the given arguments.
inline CommandResult RunPython(const TempDir& dir, std::string_view script,
                               const std::string& args) {
  const std::string path = dir.File("script.py");
  {
    std::ofstream f(path, std::ios::trunc);
    f << script;
  }
  return RunCommand(fmt::format("{} {} {}", kPython, path, args));
}

// Splits text into lines, and a line into whitespace-separated fields.
inline std::vector<std::string> Split(std::string_view text, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(sep, start);
    if (end == std::string_view::npos) end = text.size();
    if (end > start) out.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace cairn::ckpt::testutil
