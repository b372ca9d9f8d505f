// Fashion-MNIST in IDX format (gzip-compressed or plain), as Debian's
// dataset-fashion-mnist installs it.
//
// Promise: a file is accepted only if it is exactly what its header says: the magic
// (0x00000803 images of unsigned bytes, 0x00000801 labels), 28x28 images, as many labels
// as images, every label in 0..9, and no byte missing or left over. Anything else is a
// kInvalidArgument (or kNotFound) error naming the file and the problem.
//
// Threading: functions without shared state.
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

Result<Split> LoadSplit(const std::string& images_path, const std::string& labels_path);

struct Dataset {
  Split train;
  Split test;
};

// DIR/train-images-idx3-ubyte.gz etc. (".gz" optional: the plain name is tried too).
Result<Dataset> LoadDataset(const std::string& dir);

}  // namespace cairn::fmnist
