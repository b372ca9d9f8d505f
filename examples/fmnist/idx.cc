#include "examples/fmnist/idx.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace cairn::fmnist {
namespace {

// Reads the whole (possibly gzip-compressed) file.
Result<std::vector<uint8_t>> ReadMaybeGzip(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(Code::kNotFound, "{}: no such file", path);
  }
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return ErrnoError(errno, path);
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int zerr = 0;
      std::string msg = gzerror(f, &zerr);
      gzclose(f);
      return MakeError(Code::kInvalidArgument, "{}: corrupt gzip data: {}", path, msg);
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
    if (out.size() > (uint64_t{1} << 31)) {
      gzclose(f);
      return MakeError(Code::kInvalidArgument, "{}: larger than 2 GiB, not a Fashion-MNIST file",
                       path);
    }
  }
  int zerr = 0;
  const char* msg = gzerror(f, &zerr);
  if (zerr != Z_OK && zerr != Z_STREAM_END) {
    std::string m = msg;
    gzclose(f);
    return MakeError(Code::kInvalidArgument, "{}: corrupt or truncated gzip data: {}", path, m);
  }
  gzclose(f);
  return out;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

Result<Split> LoadSplit(const std::string& images_path, const std::string& labels_path) {
  CAIRN_ASSIGN_OR_RETURN(auto img, ReadMaybeGzip(images_path));
  CAIRN_ASSIGN_OR_RETURN(auto lab, ReadMaybeGzip(labels_path));
  if (img.size() < 16) {
    return MakeError(Code::kInvalidArgument, "{}: truncated IDX header ({} bytes, need 16)",
                     images_path, img.size());
  }
  if (uint32_t magic = BigEndian32(img.data()); magic != 0x00000803) {
    return MakeError(Code::kInvalidArgument,
                     "{}: wrong magic 0x{:08x} (IDX images of unsigned bytes have 0x00000803)",
                     images_path, magic);
  }
  const uint32_t count = BigEndian32(img.data() + 4);
  const uint32_t rows = BigEndian32(img.data() + 8);
  const uint32_t cols = BigEndian32(img.data() + 12);
  if (rows != kRows || cols != kCols) {
    return MakeError(Code::kInvalidArgument, "{}: images are {}x{}, expected {}x{}",
                     images_path, rows, cols, kRows, kCols);
  }
  const uint64_t want = 16 + uint64_t{count} * kPixels;
  if (img.size() != want) {
    return MakeError(Code::kInvalidArgument,
                     "{}: {} for {} images: {} bytes, expected {}", images_path,
                     img.size() < want ? "truncated" : "trailing bytes", count, img.size(), want);
  }
  if (lab.size() < 8) {
    return MakeError(Code::kInvalidArgument, "{}: truncated IDX header ({} bytes, need 8)",
                     labels_path, lab.size());
  }
  if (uint32_t magic = BigEndian32(lab.data()); magic != 0x00000801) {
    return MakeError(Code::kInvalidArgument,
                     "{}: wrong magic 0x{:08x} (IDX labels have 0x00000801)", labels_path,
                     magic);
  }
  const uint32_t nlabels = BigEndian32(lab.data() + 4);
  if (nlabels != count) {
    return MakeError(Code::kInvalidArgument, "{}: {} labels, but {} has {} images", labels_path,
                     nlabels, images_path, count);
  }
  if (lab.size() != 8 + uint64_t{count}) {
    return MakeError(Code::kInvalidArgument, "{}: {} for {} labels: {} bytes, expected {}",
                     labels_path, lab.size() < 8 + uint64_t{count} ? "truncated" : "trailing bytes",
                     count, lab.size(), 8 + uint64_t{count});
  }
  Split s;
  s.count = count;
  s.labels.assign(lab.begin() + 8, lab.end());
  for (uint32_t i = 0; i < count; ++i) {
    if (s.labels[i] >= kClasses) {
      return MakeError(Code::kInvalidArgument, "{}: label {} at index {} is out of range 0..{}",
                       labels_path, s.labels[i], i, kClasses - 1);
    }
  }
  img.erase(img.begin(), img.begin() + 16);
  s.pixels = std::move(img);
  return s;
}

Result<Dataset> LoadDataset(const std::string& dir) {
  auto pick = [&](const std::string& stem) {
    std::string gz = dir + "/" + stem + ".gz";
    std::error_code ec;
    if (std::filesystem::exists(gz, ec)) return gz;
    std::string plain = dir + "/" + stem;
    return std::filesystem::exists(plain, ec) ? plain : gz;
  };
  Dataset d;
  CAIRN_ASSIGN_OR_RETURN(d.train,
                         LoadSplit(pick("train-images-idx3-ubyte"), pick("train-labels-idx1-ubyte")));
  CAIRN_ASSIGN_OR_RETURN(d.test,
                         LoadSplit(pick("t10k-images-idx3-ubyte"), pick("t10k-labels-idx1-ubyte")));
  if (d.train.count == 0 || d.test.count == 0) {
    return MakeError(Code::kInvalidArgument, "{}: the training or test set is empty", dir);
  }
  return d;
}

}  // namespace cairn::fmnist
