// Fashion-MNIST in IDX format (gzip-compressed or plain), as Debian's
// dataset-fashion-mnist installs it.
//
// Promise: a file is accepted only if it is exactly what its header says: the magic
// (0x00000803 images of unsigned bytes, 0x00000801 labels), 28x28 images, as many labels
// as images, every label in 0..9, and no byte missing or left over. Anything else is a
// kInvalidArgument (or kNotFound) error naming the file and the problem.
//
// Decompressed cache: inflating the 26 MiB training images costs ~0.3 s per process, paid
// again by every rank of every restart. With a cache directory, a .gz file's decompressed
// bytes are kept there once, keyed by the source's path, size, mtime, device and inode,
// with their SHA-256: a hit is used only if the source is unchanged and the bytes hash to
// the recorded digest; anything else (stale, torn, tampered, unreadable) is a miss that
// decompresses the source again and rewrites the entry (tmp + rename). The cache never
// changes what is loaded, only how fast.
//
// Threading: functions without shared state; concurrent processes may share a cache
// directory (entries are replaced atomically).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace cairn::fmnist {

inline constexpr int kRows = 28;
inline constexpr int kCols = 28;
inline constexpr int kPixels = kRows * kCols;
inline constexpr int kClasses = 10;

struct Split {
  uint32_t count = 0;
  std::vector<uint8_t> pixels;  // count * kPixels, row-major
  std::vector<uint8_t> labels;  // count
};

struct DataCache {
  std::string dir;     // empty: no cache
  bool write = true;   // write missing or stale entries
  // Counters, for tests and the startup line.
  int hits = 0;
  int misses = 0;
};

Result<Split> LoadSplit(const std::string& images_path, const std::string& labels_path,
                        DataCache* cache = nullptr);

struct Dataset {
  Split train;
  Split test;
};

// DIR/train-images-idx3-ubyte.gz etc. (".gz" optional: the plain name is tried too).
Result<Dataset> LoadDataset(const std::string& dir, DataCache* cache = nullptr);

// The default cache directory: $CAIRN_DATA_CACHE, else $XDG_CACHE_HOME/cairn/datasets,
// else $HOME/.cache/cairn/datasets ("" when none of them is set).
std::string DefaultDataCacheDir();

}  // namespace cairn::fmnist
