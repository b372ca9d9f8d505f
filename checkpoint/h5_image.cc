#include "checkpoint/h5_image.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <new>
#include <set>
#include <string_view>
#include <utility>

#include <fmt/ranges.h>

#include "checkpoint/h5_common.h"

namespace cairn::ckpt {
namespace {

using h5internal::DataMode;
using h5internal::H5Failure;
using h5internal::H5Handle;
using h5internal::H5Lock;

constexpr std::string_view kDTypeAttr = "cairn.dtype";
constexpr std::string_view kBlobPrefix = ".cairn/blobs/";

// ---- The recording, write-only virtual file driver ----------------------------------
//
// libhdf5 calls the driver only from the thread that holds H5Mutex(); the structs below
// are touched by that thread alone.

// What HDF5 wrote, and the file's end-of-allocation / end-of-file addresses.
struct Recorder {
  h5internal::SparseBytes bytes;
  uint64_t eoa = 0;
  uint64_t eof = 0;

  void Reset() {
    bytes.Clear();
    eoa = 0;
    eof = 0;
  }
};

struct ImageFapl {
  Recorder* recorder;
};

struct ImageFile {
  H5FD_t pub;  // must be first: HDF5 sees this struct as an H5FD_t
  Recorder* recorder;
};

Recorder* RecorderOf(const H5FD_t* f) { return reinterpret_cast<const ImageFile*>(f)->recorder; }

void PushDriverError(const char* func, hid_t minor, const char* msg) {
  H5Epush2(H5E_DEFAULT, __FILE__, func, __LINE__, H5E_ERR_CLS, H5E_VFL, minor, "%s", msg);
}

H5FD_t* ImageOpen(const char* /*name*/, unsigned /*flags*/, hid_t fapl, haddr_t /*maxaddr*/) {
  const auto* info = static_cast<const ImageFapl*>(H5Pget_driver_info(fapl));
  if (info == nullptr || info->recorder == nullptr) {
    PushDriverError(__func__, H5E_CANTOPENFILE, "cairn image driver: no recorder in fapl");
    return nullptr;
  }
  auto* file = new (std::nothrow) ImageFile{};
  if (file == nullptr) {
    PushDriverError(__func__, H5E_CANTALLOC, "cairn image driver: out of memory");
    return nullptr;
  }
  file->recorder = info->recorder;
  // Every open starts an empty file: HDF5 may open tentatively, close, and reopen to
  // create; nothing from an earlier open survives.
  file->recorder->Reset();
  return &file->pub;
}

herr_t ImageClose(H5FD_t* f) {
  delete reinterpret_cast<ImageFile*>(f);
  return 0;
}

herr_t ImageQuery(const H5FD_t* /*f*/, unsigned long* flags) {
  if (flags != nullptr) {
    *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA |
             H5FD_FEAT_AGGREGATE_SMALLDATA;
  }
  return 0;
}

haddr_t ImageGetEoa(const H5FD_t* f, H5FD_mem_t /*type*/) { return RecorderOf(f)->eoa; }

herr_t ImageSetEoa(H5FD_t* f, H5FD_mem_t /*type*/, haddr_t addr) {
  RecorderOf(f)->eoa = addr;
  return 0;
}

haddr_t ImageGetEof(const H5FD_t* f, H5FD_mem_t /*type*/) { return RecorderOf(f)->eof; }

herr_t ImageRead(H5FD_t* f, H5FD_mem_t /*type*/, hid_t /*dxpl*/, haddr_t addr, size_t size,
                 void* buf) {
  if (addr == HADDR_UNDEF || addr + size < addr) {
    PushDriverError(__func__, H5E_OVERFLOW, "cairn image driver: read address overflow");
    return -1;
  }
  RecorderOf(f)->bytes.Read(addr, static_cast<std::byte*>(buf), size);
  return 0;
}

herr_t ImageWrite(H5FD_t* f, H5FD_mem_t /*type*/, hid_t /*dxpl*/, haddr_t addr, size_t size,
                  const void* buf) {
  if (addr == HADDR_UNDEF || addr + size < addr) {
    PushDriverError(__func__, H5E_OVERFLOW, "cairn image driver: write address overflow");
    return -1;
  }
  try {
    Recorder* r = RecorderOf(f);
    r->bytes.Write(addr, static_cast<const std::byte*>(buf), size);
    r->eof = std::max<uint64_t>(r->eof, addr + size);
  } catch (const std::bad_alloc&) {
    PushDriverError(__func__, H5E_CANTALLOC, "cairn image driver: out of memory");
    return -1;
  }
  return 0;
}

herr_t ImageTruncate(H5FD_t* f, hid_t /*dxpl*/, hbool_t /*closing*/) {
  Recorder* r = RecorderOf(f);
  r->eof = r->eoa;
  return 0;
}

const H5FD_class_t& ImageDriverClass() {
  static const H5FD_class_t cls = [] {
    H5FD_class_t c{};
    c.name = "cairn_image";
    c.maxaddr = haddr_t{1} << 62;
    c.fc_degree = H5F_CLOSE_WEAK;
    c.fapl_size = sizeof(ImageFapl);
    c.open = ImageOpen;
    c.close = ImageClose;
    c.query = ImageQuery;
    c.get_eoa = ImageGetEoa;
    c.set_eoa = ImageSetEoa;
    c.get_eof = ImageGetEof;
    c.read = ImageRead;
    c.write = ImageWrite;
    c.truncate = ImageTruncate;
    for (int t = 0; t < H5FD_MEM_NTYPES; ++t) c.fl_map[t] = H5FD_MEM_SUPER;
    c.fl_map[H5FD_MEM_DRAW] = H5FD_MEM_DRAW;
    c.fl_map[H5FD_MEM_GHEAP] = H5FD_MEM_DRAW;
    return c;
  }();
  return cls;
}

// The driver id, registered on first use (and again if libhdf5 was closed meanwhile).
Result<hid_t> ImageDriver() {
  static hid_t id = H5I_INVALID_HID;
  if (id >= 0 && H5Iis_valid(id) > 0) return id;
  id = H5FDregister(&ImageDriverClass());
  if (id < 0) return H5Failure(Code::kInternal, "register the cairn image file driver");
  return id;
}

// ---- Layout ---------------------------------------------------------------------------

Result<H5Handle> FileType(DType t) {
  hid_t base = H5I_INVALID_HID;
  switch (t) {
    case DType::kF32:
      base = H5T_IEEE_F32LE;
      break;
    case DType::kF64:
      base = H5T_IEEE_F64LE;
      break;
    case DType::kF16:
    case DType::kBF16:
      base = H5T_IEEE_F32LE;
      break;
    case DType::kI32:
      base = H5T_STD_I32LE;
      break;
    case DType::kI64:
      base = H5T_STD_I64LE;
      break;
    case DType::kU8:
      base = H5T_STD_U8LE;
      break;
  }
  H5Handle type(H5Tcopy(base));
  if (!type.valid()) return H5Failure(Code::kInternal, "copy an HDF5 datatype");
  if (t == DType::kF16 || t == DType::kBF16) {
    // IEEE half exactly as h5py makes it; bfloat16 the same way with its own fields.
    const bool half = t == DType::kF16;
    if (H5Tset_fields(type.get(), 15, half ? 10 : 7, half ? 5 : 8, 0, half ? 10 : 7) < 0 ||
        H5Tset_size(type.get(), 2) < 0 || H5Tset_ebias(type.get(), half ? 15 : 127) < 0) {
      return H5Failure(Code::kInternal, fmt::format("make the HDF5 type of {}", DTypeName(t)));
    }
  }
  return type;
}

// A scalar string attribute: variable-length UTF-8 (h5py reads it as str), or fixed-length
// (stored in the object header itself, no global heap; h5py reads it as bytes).
Status WriteStringAttribute(hid_t loc, const std::string& key, const std::string& value,
                            std::string_view where, bool variable) {
  H5Handle type(H5Tcopy(H5T_C_S1));
  if (!type.valid() ||
      H5Tset_size(type.get(), variable ? H5T_VARIABLE : std::max<std::size_t>(1, value.size())) <
          0 ||
      H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0 ||
      (!variable && H5Tset_strpad(type.get(), H5T_STR_NULLPAD) < 0)) {
    return H5Failure(Code::kInternal, "make the HDF5 string type");
  }
  H5Handle space(H5Screate(H5S_SCALAR));
  H5Handle acpl(H5Pcreate(H5P_ATTRIBUTE_CREATE));
  if (!space.valid() || !acpl.valid() || H5Pset_char_encoding(acpl.get(), H5T_CSET_UTF8) < 0) {
    return H5Failure(Code::kInternal, "make an HDF5 attribute's dataspace");
  }
  H5Handle attr(H5Acreate2(loc, key.c_str(), type.get(), space.get(), acpl.get(), H5P_DEFAULT));
  if (!attr.valid()) {
    return H5Failure(Code::kInternal, fmt::format("create attribute '{}' of {}", key, where));
  }
  const char* p = value.c_str();
  std::string padded = value;
  if (!variable) padded.resize(std::max<std::size_t>(1, value.size()), '\0');
  if (H5Awrite(attr.get(), type.get(), variable ? static_cast<const void*>(&p) : padded.data()) <
      0) {
    return H5Failure(Code::kInternal, fmt::format("write attribute '{}' of {}", key, where));
  }
  return OkStatus();
}

// Creates one contiguous dataset with early allocation and no fill; writes `data` in
// kWrite mode, else reports where HDF5 placed it.
Status CreateDataset(hid_t file, hid_t lcpl, hid_t dcpl, const std::string& path, DType dtype,
                     std::span<const uint64_t> shape, std::span<const std::byte> data,
                     bool dtype_attr, DataMode mode, DataPlacement* placement) {
  CAIRN_ASSIGN_OR_RETURN(H5Handle type, FileType(dtype));
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  H5Handle space(shape.empty()
                     ? H5Screate(H5S_SCALAR)
                     : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  if (!space.valid()) {
    return H5Failure(Code::kInternal, fmt::format("make the dataspace of '{}'", path));
  }
  H5Handle dset(H5Dcreate2(file, path.c_str(), type.get(), space.get(), lcpl, dcpl, H5P_DEFAULT));
  if (!dset.valid()) return H5Failure(Code::kInternal, fmt::format("create dataset '{}'", path));
  if (dtype_attr) {
    CAIRN_RETURN_IF_ERROR(WriteStringAttribute(dset.get(), std::string(kDTypeAttr),
                                               std::string(DTypeName(dtype)),
                                               fmt::format("dataset '{}'", path),
                                               /*variable=*/false));
  }
  placement->path = path;
  placement->size = data.size();
  placement->offset = DataPlacement::kNoOffset;
  if (data.empty()) return OkStatus();
  if (mode == DataMode::kWrite) {
    if (H5Dwrite(dset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()) < 0) {
      return H5Failure(Code::kInternal, fmt::format("write dataset '{}'", path));
    }
    return OkStatus();
  }
  const haddr_t offset = H5Dget_offset(dset.get());
  if (offset == HADDR_UNDEF) {
    return H5Failure(Code::kInternal,
                     fmt::format("HDF5 allocated no contiguous storage for '{}'", path));
  }
  placement->offset = offset;
  return OkStatus();
}

// kInvalidArgument if some name is also a group on the path of another.
Status CheckNoGroupClash(const std::set<std::string, std::less<>>& names, std::string_view kind) {
  for (const std::string& name : names) {
    const std::string prefix = name + "/";
    auto it = names.lower_bound(prefix);
    if (it != names.end() && it->starts_with(prefix)) {
      return MakeError(Code::kInvalidArgument, "{} '{}' is also a group holding {} '{}'", kind,
                       name, kind, *it);
    }
  }
  return OkStatus();
}

// ---- Image assembly -----------------------------------------------------------------

Result<std::unique_ptr<ShardImage>> AssembleImage(Recorder& rec,
                                                  std::vector<DataPlacement> tensor_places,
                                                  std::vector<DataPlacement> blob_places,
                                                  std::span<const TensorRef> tensors,
                                                  std::span<const BlobRef> blobs) {
  struct Raw {
    uint64_t offset;
    uint64_t size;
    const std::byte* data;
    const std::string* path;
  };
  std::vector<Raw> raws;
  raws.reserve(tensors.size() + blobs.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const DataPlacement& p = tensor_places[i];
    if (p.offset != DataPlacement::kNoOffset) {
      raws.push_back({p.offset, p.size, tensors[i].data.data(), &p.path});
    }
  }
  for (std::size_t i = 0; i < blobs.size(); ++i) {
    const DataPlacement& p = blob_places[i];
    if (p.offset != DataPlacement::kNoOffset) {
      raws.push_back({p.offset, p.size, blobs[i].data.data(), &p.path});
    }
  }
  std::sort(raws.begin(), raws.end(),
            [](const Raw& a, const Raw& b) { return a.offset < b.offset; });

  const uint64_t size = std::max(rec.eoa, rec.eof);
  std::map<uint64_t, std::vector<std::byte>> extents = rec.bytes.TakeExtents();
  std::vector<std::vector<std::byte>> owned;
  owned.reserve(extents.size());
  std::vector<ShardImage::Segment> segments;
  segments.reserve(2 * (extents.size() + raws.size()) + 1);
  uint64_t pos = 0;
  auto emit = [&](uint64_t offset, uint64_t len, const std::byte* data) {
    if (offset > pos) segments.push_back({pos, offset - pos, nullptr});
    segments.push_back({offset, len, data});
    pos = offset + len;
  };
  auto meta = extents.begin();
  auto raw = raws.begin();
  while (meta != extents.end() || raw != raws.end()) {
    const bool take_meta =
        raw == raws.end() || (meta != extents.end() && meta->first < raw->offset);
    if (take_meta) {
      const uint64_t off = meta->first;
      const uint64_t len = meta->second.size();
      if (off < pos) {
        return MakeError(Code::kInternal,
                         "HDF5 wrote {} bytes of metadata at offset {} inside raw data ending "
                         "at {}",
                         len, off, pos);
      }
      owned.push_back(std::move(meta->second));
      emit(off, len, owned.back().data());
      ++meta;
    } else {
      if (raw->offset < pos) {
        return MakeError(Code::kInternal,
                         "raw data of '{}' at offset {} overlaps bytes ending at {} (metadata or "
                         "another dataset)",
                         *raw->path, raw->offset, pos);
      }
      emit(raw->offset, raw->size, raw->data);
      ++raw;
    }
  }
  if (pos > size) {
    return MakeError(Code::kInternal, "HDF5 placed bytes up to offset {} beyond the file end {}",
                     pos, size);
  }
  if (pos < size) segments.push_back({pos, size - pos, nullptr});
  return std::make_unique<ShardImage>(size, std::move(owned), std::move(segments),
                                      std::move(tensor_places), std::move(blob_places));
}

}  // namespace

// ---- ShardImage -----------------------------------------------------------------------

ShardImage::ShardImage(uint64_t size, std::vector<std::vector<std::byte>> owned,
                       std::vector<Segment> segments, std::vector<DataPlacement> tensors,
                       std::vector<DataPlacement> blobs)
    : size_(size),
      owned_(std::move(owned)),
      segments_(std::move(segments)),
      tensors_(std::move(tensors)),
      blobs_(std::move(blobs)) {
  for (const auto& v : owned_) metadata_bytes_ += v.size();
}

void ShardImage::Segments(uint64_t offset, uint64_t len,
                          std::vector<std::span<const std::byte>>* out) const {
  if (offset >= size_ || len == 0) return;
  const uint64_t end = offset + std::min(len, size_ - offset);
  // The last segment starting at or before `offset`.
  auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                             [](uint64_t v, const Segment& s) { return v < s.offset; });
  --it;  // segments_[0].offset == 0 <= offset
  for (; it != segments_.end() && it->offset < end; ++it) {
    const uint64_t s = std::max(it->offset, offset);
    const uint64_t e = std::min(it->offset + it->len, end);
    if (s >= e) continue;
    const std::byte* p = it->data == nullptr ? nullptr : it->data + (s - it->offset);
    out->emplace_back(p, static_cast<std::size_t>(e - s));
  }
}

// ---- Shared layout code ---------------------------------------------------------------

namespace h5internal {

void SparseBytes::Write(uint64_t addr, const std::byte* p, std::size_t n) {
  if (n == 0) return;
  const uint64_t end = addr + n;
  // First extent that overlaps or touches [addr, end).
  auto first = extents_.upper_bound(addr);
  if (first != extents_.begin()) {
    auto prev = std::prev(first);
    if (prev->first + prev->second.size() >= addr) first = prev;
  }
  auto last = first;
  uint64_t merged_end = end;
  while (last != extents_.end() && last->first <= end) {
    merged_end = std::max<uint64_t>(merged_end, last->first + last->second.size());
    ++last;
  }
  if (first == last) {
    extents_.emplace(addr, std::vector<std::byte>(p, p + n));
    return;
  }
  if (std::next(first) == last && first->first <= addr) {
    // One extent that starts at or before addr: overwrite and/or append in place.
    std::vector<std::byte>& v = first->second;
    if (merged_end - first->first > v.size()) v.resize(merged_end - first->first);
    std::memcpy(v.data() + (addr - first->first), p, n);
    return;
  }
  const uint64_t merged_start = std::min(addr, first->first);
  std::vector<std::byte> merged(merged_end - merged_start);
  for (auto it = first; it != last; ++it) {
    std::memcpy(merged.data() + (it->first - merged_start), it->second.data(), it->second.size());
  }
  std::memcpy(merged.data() + (addr - merged_start), p, n);
  extents_.erase(first, last);
  extents_.emplace(merged_start, std::move(merged));
}

void SparseBytes::Read(uint64_t addr, std::byte* p, std::size_t n) const {
  std::memset(p, 0, n);
  const uint64_t end = addr + n;
  auto it = extents_.upper_bound(addr);
  if (it != extents_.begin()) --it;
  for (; it != extents_.end() && it->first < end; ++it) {
    const uint64_t s = std::max(it->first, addr);
    const uint64_t e = std::min<uint64_t>(it->first + it->second.size(), end);
    if (s < e) std::memcpy(p + (s - addr), it->second.data() + (s - it->first), e - s);
  }
}

uint64_t MetadataBlockSize(std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                           const std::map<std::string, std::string>& attrs) {
  // Measured costs with headroom: an object header with its dtype attribute and symbol
  // table entry ~0.3-0.5 KiB, a group (header, B-tree node, local heap, symbol node)
  // ~1.3 KiB, names twice (local heap and B-tree keys).
  uint64_t bytes = 6 << 10;
  std::set<std::string_view> groups;
  auto add_path = [&](std::string_view path, std::size_t rank) {
    bytes += 448 + 16 * rank + 2 * path.size();
    for (std::size_t pos = path.find('/'); pos != std::string_view::npos;
         pos = path.find('/', pos + 1)) {
      groups.insert(path.substr(0, pos));
    }
  };
  for (const TensorRef& t : tensors) add_path(t.name, t.shape.size());
  for (const BlobRef& b : blobs) add_path(b.name, 1);
  bytes += 1280 * (groups.size() + 2);
  for (const auto& [key, value] : attrs) bytes += 128 + 2 * key.size();
  return (bytes + 4095) & ~uint64_t{4095};
}

Status ValidateContent(std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                       const std::map<std::string, std::string>& attrs) {
  std::set<std::string, std::less<>> names;
  for (const TensorRef& t : tensors) {
    CAIRN_RETURN_IF_ERROR_CTX(ValidateName(t.name), "tensor name");
    if (!names.insert(t.name).second) {
      return MakeError(Code::kInvalidArgument, "duplicate tensor name '{}'", t.name);
    }
    const std::size_t elem = DTypeSize(t.dtype);
    if (elem == 0) {
      return MakeError(Code::kInvalidArgument, "tensor '{}' has an unknown dtype ({})", t.name,
                       static_cast<int>(t.dtype));
    }
    if (t.shape.size() > H5S_MAX_RANK) {
      return MakeError(Code::kInvalidArgument, "tensor '{}' has rank {}; at most {} supported",
                       t.name, t.shape.size(), H5S_MAX_RANK);
    }
    auto n = NumElements(t.shape);
    if (!n || *n > UINT64_MAX / elem) {
      return MakeError(Code::kInvalidArgument, "tensor '{}': shape [{}] is too large", t.name,
                       fmt::join(t.shape, ", "));
    }
    if (t.data.size() != *n * elem) {
      return MakeError(Code::kInvalidArgument,
                       "tensor '{}': data has {} bytes but shape [{}] of {} needs {}", t.name,
                       t.data.size(), fmt::join(t.shape, ", "), DTypeName(t.dtype), *n * elem);
    }
    if (t.data.data() == nullptr && !t.data.empty()) {
      return MakeError(Code::kInvalidArgument, "tensor '{}' has no data", t.name);
    }
  }
  CAIRN_RETURN_IF_ERROR(CheckNoGroupClash(names, "tensor"));

  std::set<std::string, std::less<>> blob_names;
  for (const BlobRef& b : blobs) {
    CAIRN_RETURN_IF_ERROR_CTX(ValidateName(b.name), "blob name");
    if (!blob_names.insert(b.name).second) {
      return MakeError(Code::kInvalidArgument, "duplicate blob name '{}'", b.name);
    }
    if (b.data.data() == nullptr && !b.data.empty()) {
      return MakeError(Code::kInvalidArgument, "blob '{}' has no data", b.name);
    }
  }
  CAIRN_RETURN_IF_ERROR(CheckNoGroupClash(blob_names, "blob"));

  for (const auto& [key, value] : attrs) {
    if (key.empty() || key.find('\0') != std::string::npos) {
      return MakeError(Code::kInvalidArgument,
                       "attribute name '{}' must be non-empty and free of NUL bytes", key);
    }
    if (value.find('\0') != std::string::npos) {
      return MakeError(Code::kInvalidArgument,
                       "attribute '{}' has a NUL byte in its value (HDF5 strings cannot hold "
                       "one)",
                       key);
    }
  }
  return OkStatus();
}

Status PopulateFile(hid_t file, std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
                    const std::map<std::string, std::string>& attrs, DataMode mode,
                    std::vector<DataPlacement>* tensor_out, std::vector<DataPlacement>* blob_out) {
  H5Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  if (!lcpl.valid() || !dcpl.valid() || H5Pset_create_intermediate_group(lcpl.get(), 1) < 0 ||
      H5Pset_char_encoding(lcpl.get(), H5T_CSET_UTF8) < 0 ||
      H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS) < 0 ||
      H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY) < 0 ||
      H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER) < 0) {
    return H5Failure(Code::kInternal, "make HDF5 creation property lists");
  }
  // /.cairn and its attributes first: their global heap then sits right after the
  // metadata block, before any raw data.
  H5Handle group(H5Gcreate2(file, ".cairn", lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!group.valid()) return H5Failure(Code::kInternal, "create group /.cairn");
  for (const auto& [key, value] : attrs) {
    CAIRN_RETURN_IF_ERROR(
        WriteStringAttribute(group.get(), key, value, "group /.cairn", /*variable=*/true));
  }
  std::vector<DataPlacement> tensor_places(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    CAIRN_RETURN_IF_ERROR(CreateDataset(file, lcpl.get(), dcpl.get(), t.name, t.dtype, t.shape,
                                        t.data, /*dtype_attr=*/true, mode, &tensor_places[i]));
  }
  std::vector<DataPlacement> blob_places(blobs.size());
  for (std::size_t i = 0; i < blobs.size(); ++i) {
    const BlobRef& b = blobs[i];
    const uint64_t shape[1] = {b.data.size()};
    CAIRN_RETURN_IF_ERROR(CreateDataset(file, lcpl.get(), dcpl.get(),
                                        std::string(kBlobPrefix) + b.name, DType::kU8, shape,
                                        b.data, /*dtype_attr=*/false, mode, &blob_places[i]));
  }
  if (tensor_out != nullptr) *tensor_out = std::move(tensor_places);
  if (blob_out != nullptr) *blob_out = std::move(blob_places);
  return OkStatus();
}

}  // namespace h5internal

// ---- BuildShardImage ------------------------------------------------------------------

Result<std::unique_ptr<ShardImage>> BuildShardImage(
    std::span<const TensorRef> tensors, std::span<const BlobRef> blobs,
    const std::map<std::string, std::string>& attrs) {
  CAIRN_RETURN_IF_ERROR_CTX(h5internal::ValidateContent(tensors, blobs, attrs),
                            "build shard image");
  // On the heap: if libhdf5 failed to close the file it might still reach the recorder
  // through the open file, so it is then deliberately not freed.
  auto recorder = std::make_unique<Recorder>();
  std::vector<DataPlacement> tensor_places;
  std::vector<DataPlacement> blob_places;
  {
    H5Lock lock;
    CAIRN_ASSIGN_OR_RETURN(hid_t driver, ImageDriver());
    H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
    const ImageFapl info{recorder.get()};
    if (!fapl.valid() || H5Pset_driver(fapl.get(), driver, &info) < 0 ||
        H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) < 0 ||
        H5Pset_meta_block_size(fapl.get(), h5internal::MetadataBlockSize(tensors, blobs, attrs)) <
            0) {
      return H5Failure(Code::kInternal, "build shard image: make the file access property list");
    }
    const hid_t file = H5Fcreate("cairn-shard-image", H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
    if (file < 0) return H5Failure(Code::kInternal, "build shard image: create the file");
    Status populated = h5internal::PopulateFile(
        file, tensors, blobs, attrs, DataMode::kAllocateOnly, &tensor_places, &blob_places);
    if (H5Fclose(file) < 0) {
      (void)recorder.release();
      auto err = H5Failure(Code::kInternal, "build shard image: close (flush) the file");
      return populated ? err : std::unexpected(std::move(populated).error());
    }
    if (!populated) {
      return std::unexpected(std::move(populated).error().With("build shard image"));
    }
  }
  return WithContext(
      AssembleImage(*recorder, std::move(tensor_places), std::move(blob_places), tensors, blobs),
      "build shard image");
}

}  // namespace cairn::ckpt
