// Building checkpoint shard images without copying tensor bytes.
//
// BuildShardImage lets libhdf5 lay out an HDF5 file for a set of tensors, blobs and
// attributes while writing nothing to disk: a write-only virtual file driver records the
// metadata HDF5 writes, HDF5 allocates (but never writes) each dataset's contiguous raw
// data region, and the resulting ShardImage describes the file as segments: metadata
// bytes (owned by the image), tensor and blob bytes (pointing into the caller's memory)
// and zero-filled gaps. The encryptor streams these segments; the cost of building an
// image depends on the number of tensors, not on their byte sizes.
//
// File layout (also used by WritePlainH5, h5_plain.h):
//   /<tensor name>          contiguous dataset, attribute "cairn.dtype" = DTypeName
//                           (names with '/' live in nested groups; rank 0 = scalar)
//   /.cairn                 group; each entry of `attrs` is a string attribute of it
//   /.cairn/blobs/<name>    1-D u8 dataset per blob
// dtypes: f32/f64/i32/i64/u8 as little-endian IEEE/STD types, f16 as h5py's IEEE half,
// bf16 as a 2-byte float with 8-bit exponent and 7-bit mantissa (bias 127).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/types.h"
#include "common/status.h"

namespace cairn::ckpt {

// Where a dataset's raw bytes lie in an image.
struct DataPlacement {
  std::string path;  // dataset path without leading '/', e.g. "layer1/w", ".cairn/blobs/rng"
  uint64_t offset = kNoOffset;  // kNoOffset for zero-size data (nothing to place)
  uint64_t size = 0;
  static constexpr uint64_t kNoOffset = UINT64_MAX;
};

// An immutable HDF5 file image described as segments.
//
// Promise: the concatenation of Segments(0, size()) is a valid HDF5 file holding the
// tensors, blobs and attributes given to BuildShardImage. Tensor and blob segments point
// into the caller's buffers (which must outlive the image and stay unchanged); metadata
// segments point into the image's own buffers; gaps are zero segments (data() == nullptr).
// Segments() costs O(log n + k) for n segments, k of them returned.
//
// Threading: immutable after construction; all methods are safe to call concurrently.
class ShardImage : public PlaintextSource {
 public:
  struct Segment {
    uint64_t offset;
    uint64_t len;
    const std::byte* data;  // nullptr: zeros
  };

  ShardImage(uint64_t size, std::vector<std::vector<std::byte>> owned,
             std::vector<Segment> segments, std::vector<DataPlacement> tensors,
             std::vector<DataPlacement> blobs);

  uint64_t size() const override { return size_; }
  // Segments covering [offset, offset + len) clipped to [0, size()).
  void Segments(uint64_t offset, uint64_t len,
                std::vector<std::span<const std::byte>>* out) const override;

  // Raw-data placement of each tensor / blob, in the order given to BuildShardImage.
  const std::vector<DataPlacement>& tensor_placements() const { return tensors_; }
  const std::vector<DataPlacement>& blob_placements() const { return blobs_; }
  // Bytes of metadata HDF5 wrote (held by the image).
  uint64_t metadata_bytes() const { return metadata_bytes_; }
  // Number of segments (metadata, data and zero runs) describing the image.
  std::size_t segment_count() const { return segments_.size(); }

 private:
  uint64_t size_;
  uint64_t metadata_bytes_ = 0;
  std::vector<std::vector<std::byte>> owned_;
  std::vector<Segment> segments_;  // sorted, contiguous, covering [0, size_)
  std::vector<DataPlacement> tensors_;
  std::vector<DataPlacement> blobs_;
};

// Lays out an HDF5 file for the given content, writing nothing to disk and copying no
// tensor or blob bytes. Errors: kInvalidArgument naming the tensor/blob/attribute for an
// invalid or duplicate name, a tensor that is also a group of another, a data size that
// does not match shape and dtype, or an attribute containing a NUL byte; kInternal if
// libhdf5 fails or writes into a raw-data region. Thread-safe (serialises on H5Mutex()).
Result<std::unique_ptr<ShardImage>> BuildShardImage(
    std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
    const std::map<std::string, std::string>& attrs);

}  // namespace cairn::ckpt
