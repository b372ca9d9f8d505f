// Reading checkpoint shards: HDF5 over authenticated plaintext.
//
// H5ShardReader opens an HDF5 file whose bytes come from a RandomAccessSource (the
// decrypting side of a shard) through a read-only HDF5 virtual file driver. libhdf5
// only ever sees bytes the source returned, i.e. bytes that were authenticated; a
// source failure (kDataLoss for a chunk that fails authentication) is returned by the
// reader as that very error, with context, never as a generic HDF5 message.
//
// Also here: H5Mutex(), the one lock around all use of libhdf5 in cairn. Debian's
// libhdf5 is built without thread safety, so every sequence of HDF5 calls anywhere in
// the process must hold this mutex.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/types.h"
#include "common/status.h"

namespace cairn::ckpt {

// The process-wide lock for libhdf5. Hold it around every HDF5 call sequence (the
// ckpt_h5 library does so itself; other code calling HDF5 directly must too).
std::mutex& H5Mutex();

// A read-only view of one shard's HDF5 content.
//
// Promise: Open() reads the catalog once (every dataset outside /.cairn as a tensor,
// every dataset under /.cairn/blobs as a blob, every attribute of /.cairn as a string)
// and validates it: supported dtype, shape without overflow, size within the file, no
// external or virtual storage (no byte may come from anywhere but the source).
// Malformed content yields an error (kInvalidArgument for unsupported types, kDataLoss
// for content libhdf5 cannot parse), never a crash as far as the checks reach. Reads
// return bytes exactly as stored (no type conversion for little-endian data; big-endian
// data is byte-swapped to little-endian).
//
// Threading: all methods are safe to call concurrently; the accessors of the catalog
// (tensors(), Info(), blobs(), Attribute()) take no lock, reads serialise on H5Mutex().
// The source must be safe for concurrent ReadAt calls only if it is shared elsewhere.
class H5ShardReader {
 public:
  // Opens the HDF5 file held by `src`. `display_name` names the shard in errors.
  static Result<std::unique_ptr<H5ShardReader>> Open(std::shared_ptr<const RandomAccessSource> src,
                                                     std::string display_name);
  ~H5ShardReader();
  H5ShardReader(const H5ShardReader&) = delete;
  H5ShardReader& operator=(const H5ShardReader&) = delete;

  // Every tensor, sorted by name (names relative to the root, without a leading '/').
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The tensor called `name`; kNotFound naming it.
  Result<TensorInfo> Info(std::string_view name) const;
  // Reads tensor `name` into `out`, whose size must equal its size_bytes.
  Status ReadTensor(std::string_view name, std::span<std::byte> out) const;

  // Blob names, sorted.
  std::vector<std::string> blobs() const;
  Result<std::vector<std::byte>> ReadBlob(std::string_view name) const;
  // A string attribute of /.cairn; kNotFound naming it.
  Result<std::string> Attribute(std::string_view key) const;
  const std::map<std::string, std::string>& attributes() const { return attrs_; }

  const std::string& display_name() const { return display_name_; }

 private:
  struct State;
  H5ShardReader(std::unique_ptr<State> state, std::string display_name);
  Status ReadDataset(std::string_view kind, std::string_view name, bool blob,
                     std::span<std::byte> out) const;

  std::unique_ptr<State> state_;
  std::string display_name_;
  std::vector<TensorInfo> tensors_;
  std::vector<TensorInfo> blob_infos_;
  std::map<std::string, std::string> attrs_;
};

}  // namespace cairn::ckpt
