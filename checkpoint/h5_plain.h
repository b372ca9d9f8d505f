// Plaintext HDF5 export and import (explicit, key-gated by the caller).
//
// WritePlainH5 writes an ordinary HDF5 file with the layout of a shard image (see
// h5_image.h), so that h5py and h5dump read it: tensor "layer1/weight" is h5py's
// f["layer1/weight"]. ReadPlainH5 reads such files and files written by h5py: every
// dataset outside /.cairn is a tensor (contiguous, compact or chunked with any filter
// libhdf5 has built in), /.cairn/blobs holds blobs, attributes of /.cairn are strings.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "checkpoint/types.h"
#include "common/status.h"

namespace cairn::ckpt {

// Writes `path` as an HDF5 file: first to "<path>.tmp" created with mode 0600, flushed
// to disk, then renamed over `path` (and the directory synced). On failure the temp
// file is removed and `path` is untouched. Errors as BuildShardImage for bad input;
// file system errors by errno. Thread-safe (serialises on H5Mutex()).
Status WritePlainH5(const std::string& path, std::span<const TensorRef> tensors,
                    std::span<const BlobRef> blobs,
                    const std::map<std::string, std::string>& attrs);

struct PlainTensor {
  TensorInfo info;
  std::vector<std::byte> data;  // little-endian, exactly info.size_bytes
};

struct PlainH5Contents {
  std::vector<PlainTensor> tensors;                                   // sorted by name
  std::vector<std::pair<std::string, std::vector<std::byte>>> blobs;  // sorted by name
  std::map<std::string, std::string> attrs;
};

// Reads a whole HDF5 file. dtype comes from the "cairn.dtype" attribute when present,
// else from the HDF5 type (f32, f64, f16, bf16, i32, i64, u8; either byte order).
// Errors: kNotFound / kPermissionDenied for the path; kInvalidArgument for a file that
// is not HDF5, a dataset of an unsupported type or layout (named), or a dataset larger
// than the file can hold. Thread-safe (serialises on H5Mutex()).
Result<PlainH5Contents> ReadPlainH5(const std::string& path);

}  // namespace cairn::ckpt
