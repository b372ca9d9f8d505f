// Internal to the ckpt_h5 library (h5_image.cc, h5_reader.cc, h5_plain.cc): RAII for
// HDF5 identifiers, the HDF5 lock guard, HDF5 error-stack capture, and the layout
// writer and catalog reader that the shard image, the shard reader and the plaintext
// import/export share. Not part of the public API.
//
// Threading: every function here must be called with an H5Lock held.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "checkpoint/h5_image.h"
#include "checkpoint/h5_reader.h"
#include "checkpoint/types.h"
#include "common/status.h"

namespace cairn::ckpt::h5internal {

// Owns one HDF5 identifier of any kind and releases it with H5Idec_ref. Destroy it
// while the H5Lock that created it is still held.
class H5Handle {
 public:
  H5Handle() = default;
  explicit H5Handle(hid_t id) : id_(id) {}
  ~H5Handle() { reset(); }
  H5Handle(H5Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)) {}
  H5Handle& operator=(H5Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }
  void reset() {
    if (id_ >= 0) H5Idec_ref(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// Whether HDF5 may load filter plugins (shared objects found on disk) while a lock is
// held. Shard reads never do: file content must not choose code to load.
enum class Plugins { kOff, kDefault };

// Holds H5Mutex(); on first use initialises libhdf5 (H5open, automatic error printing
// off). Every entry clears the error stack and applies the plugin policy.
class H5Lock {
 public:
  explicit H5Lock(Plugins plugins = Plugins::kOff) : lock_(H5Mutex()) {
    static const unsigned initial_plugin_state = [] {
      H5open();
      unsigned state = H5PL_ALL_PLUGIN;
      if (H5PLget_loading_state(&state) < 0) state = 0;
      return state;
    }();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    H5PLset_loading_state(plugins == Plugins::kOff ? 0u : initial_plugin_state);
    H5Eclear2(H5E_DEFAULT);
  }
  H5Lock(const H5Lock&) = delete;
  H5Lock& operator=(const H5Lock&) = delete;

 private:
  std::unique_lock<std::mutex> lock_;
};

// The current HDF5 error stack, outermost call first ("H5Fopen(): unable to open file;
// H5F_open(): truncated file: ..."), then clears it. Call it right after the failing
// HDF5 call, before any other HDF5 call (closing handles clears the stack).
inline std::string H5ErrorStack() {
  std::string text;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        auto* out = static_cast<std::string*>(data);
        if (out->size() > 4000) return 0;
        if (!out->empty()) out->append("; ");
        out->append(e->func_name ? e->func_name : "?");
        out->append("(): ");
        out->append(e->desc ? e->desc : "(no description)");
        return 0;
      },
      &text);
  H5Eclear2(H5E_DEFAULT);
  if (text.empty()) text = "no details on the HDF5 error stack";
  return text;
}

// "<what>: HDF5: <error stack>" as an Error with `code`, or with the code of the system
// error when the stack reports one ("errno = 28, error message = ...", from the sec2
// driver).
inline std::unexpected<Error> H5Failure(Code code, std::string_view what) {
  std::string stack = H5ErrorStack();
  constexpr std::string_view kErrno = "errno = ";
  if (auto pos = stack.find(kErrno); pos != std::string::npos) {
    int err = 0;
    for (pos += kErrno.size(); pos < stack.size() && stack[pos] >= '0' && stack[pos] <= '9';
         ++pos) {
      err = err * 10 + (stack[pos] - '0');
      if (err > 100000) break;
    }
    if (err > 0) code = CodeFromErrno(err);
  }
  return MakeError(code, "{}: HDF5: {}", what, stack);
}

// ---- Layout writer (defined in h5_image.cc) -----------------------------------------

// Bytes written at arbitrary offsets, kept as a sparse map offset -> bytes whose extents
// never overlap or touch: overlapping and adjacent writes merge, later bytes win. Reads
// see zeros where nothing was written. Threading: one thread at a time.
class SparseBytes {
 public:
  void Write(uint64_t addr, const std::byte* p, std::size_t n);
  void Read(uint64_t addr, std::byte* p, std::size_t n) const;
  void Clear() { extents_.clear(); }
  const std::map<uint64_t, std::vector<std::byte>>& extents() const { return extents_; }
  std::map<uint64_t, std::vector<std::byte>> TakeExtents() { return std::move(extents_); }

 private:
  std::map<uint64_t, std::vector<std::byte>> extents_;
};

// Checks names (ValidateName), duplicates, tensors that are also groups, data sizes,
// ranks and attributes. kInvalidArgument naming the offender.
Status ValidateContent(std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                       const std::map<std::string, std::string>& attrs);

// A metadata block size (H5Pset_meta_block_size) large enough that HDF5 places all of
// the file's metadata in one block at its start, so that a reader opening the file
// touches only its first bytes. Overestimates leave a run of zeros; underestimates only
// scatter the excess metadata.
uint64_t MetadataBlockSize(std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                           const std::map<std::string, std::string>& attrs);

enum class DataMode {
  kAllocateOnly,  // allocate raw data regions, never write them; report their placement
  kWrite,         // write tensor and blob bytes with H5Dwrite
};

// Creates the layout described in h5_image.h in the open, empty `file`. Call after
// ValidateContent. In kAllocateOnly mode fills *tensor_out and *blob_out.
Status PopulateFile(hid_t file, std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                    const std::map<std::string, std::string>& attrs, DataMode mode,
                    std::vector<DataPlacement>* tensor_out, std::vector<DataPlacement>* blob_out);

// ---- Catalog reader (defined in h5_reader.cc) ---------------------------------------

struct DatasetEntry {
  TensorInfo info;             // name: tensor name, or blob name (relative to /.cairn/blobs)
  std::string path;            // path in the file without leading '/'
  haddr_t addr = HADDR_UNDEF;  // object header address (opened by address, not by path)
  bool big_endian = false;
};

struct Catalog {
  std::vector<DatasetEntry> tensors;  // sorted by name
  std::vector<DatasetEntry> blobs;    // sorted by name
  std::map<std::string, std::string> attrs;
};

struct CatalogLimits {
  uint64_t file_size = 0;
  // Largest logical size accepted for data not stored as one allocated block
  // (chunked, or contiguous but never written).
  uint64_t sparse_max = 0;
  // Code for content that libhdf5 cannot parse or that contradicts itself.
  Code corrupt = Code::kDataLoss;
};

Result<Catalog> ReadCatalog(hid_t file, const CatalogLimits& limits);

// Reads one catalogued dataset into `out` (size must be entry.info.size_bytes).
Status ReadEntry(hid_t file, const DatasetEntry& entry, const CatalogLimits& limits,
                 std::span<std::byte> out);

}  // namespace cairn::ckpt::h5internal
