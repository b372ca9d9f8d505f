// Types shared by the checkpoint component's layers (HDF5 layout, AEAD stream,
// manifest/store, writer/reader).
//
// Threading: plain values and interfaces; implementations state their own contract.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::ckpt {

enum class DType : uint8_t { kF32 = 1, kF64 = 2, kF16 = 3, kBF16 = 4, kI32 = 5, kI64 = 6, kU8 = 7 };

std::string_view DTypeName(DType t);            // "f32", "bf16", ...
Result<DType> ParseDType(std::string_view name);  // inverse of DTypeName
std::size_t DTypeSize(DType t);                 // bytes per element

// Number of elements of a shape (1 for rank 0); error on overflow.
Result<uint64_t> NumElements(std::span<const uint64_t> shape);

// A tensor to save: `data` must hold exactly NumElements(shape) * DTypeSize(dtype) bytes
// and stay alive and unchanged until the save has taken it (sync: until Commit returns;
// async: until the snapshot is taken, i.e. until Save returns).
struct TensorRef {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  std::span<const std::byte> data;
};

// A small named byte blob (RNG state, data cursor, JSON metadata).
struct BlobRef {
  std::string name;
  std::span<const std::byte> data;
};

// What a reader reports about a stored tensor.
struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t size_bytes = 0;
};

// Tensor and blob names: 1..1024 bytes of UTF-8 without NUL; '/' separates groups;
// no empty, "." or ".." component, no leading or trailing '/'; the first component
// must not be ".cairn" (reserved). The error names the offending name.
Status ValidateName(std::string_view name);

// A plaintext byte stream described as segments, so that encryption can read tensor
// bytes from where they live without copying them first.
class PlaintextSource {
 public:
  virtual ~PlaintextSource() = default;
  virtual uint64_t size() const = 0;
  // Appends to *out the segments that, concatenated, are bytes [offset, offset + len).
  // Segments may point into the source's own buffers or into caller memory; a segment
  // with data() == nullptr stands for that many zero bytes.
  virtual void Segments(uint64_t offset, uint64_t len,
                        std::vector<std::span<const std::byte>>* out) const = 0;
};

// Random-access reads of authenticated plaintext (the decrypting side).
class RandomAccessSource {
 public:
  virtual ~RandomAccessSource() = default;
  virtual uint64_t size() const = 0;
  // Fills all of `out` with bytes [offset, offset + out.size()); fails (kDataLoss with the
  // chunk named) if any byte cannot be authenticated, or on a read past size().
  virtual Status ReadAt(uint64_t offset, std::span<std::byte> out) const = 0;
};

using Digest = std::array<uint8_t, 32>;  // SHA-256
std::string ToHex(std::span<const uint8_t> bytes);
Result<Digest> DigestFromHex(std::string_view hex);

}  // namespace cairn::ckpt
