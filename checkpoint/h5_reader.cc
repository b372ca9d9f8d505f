#include "checkpoint/h5_reader.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <optional>
#include <utility>

#include <fmt/ranges.h>

#include "checkpoint/h5_common.h"

namespace cairn::ckpt {

std::mutex& H5Mutex() {
  static std::mutex mu;
  return mu;
}

namespace {

using h5internal::Catalog;
using h5internal::CatalogLimits;
using h5internal::DatasetEntry;
using h5internal::H5Failure;
using h5internal::H5Handle;
using h5internal::H5Lock;

constexpr char kDTypeAttr[] = "cairn.dtype";
constexpr std::string_view kBlobPrefix = ".cairn/blobs/";

// ---- The read-only virtual file driver over a RandomAccessSource --------------------
//
// libhdf5 calls the driver only from the thread that holds H5Mutex(); the structs below
// are touched by that thread alone (the source itself may be shared further).

// The first cairn Error a driver read hit during the current operation.
struct ErrorSlot {
  std::optional<Error> first;
};

// Driver info carried by the fapl (copied and freed by HDF5 through the callbacks).
struct SourceFapl {
  std::shared_ptr<const RandomAccessSource> source;
  std::shared_ptr<ErrorSlot> errors;
};

struct SourceFile {
  H5FD_t pub;  // must be first: HDF5 sees this struct as an H5FD_t
  SourceFapl* fapl;
  haddr_t eoa;
};

SourceFile* AsSource(H5FD_t* f) { return reinterpret_cast<SourceFile*>(f); }
const SourceFile* AsSource(const H5FD_t* f) { return reinterpret_cast<const SourceFile*>(f); }

void PushDriverError(const char* func, hid_t minor, const char* msg) {
  H5Epush2(H5E_DEFAULT, __FILE__, func, __LINE__, H5E_ERR_CLS, H5E_VFL, minor, "%s", msg);
}

void* SourceFaplCopy(const void* p) {
  return new (std::nothrow) SourceFapl(*static_cast<const SourceFapl*>(p));
}

herr_t SourceFaplFree(void* p) {
  delete static_cast<SourceFapl*>(p);
  return 0;
}

void* SourceFaplGet(H5FD_t* f) { return SourceFaplCopy(AsSource(f)->fapl); }

H5FD_t* SourceOpen(const char* /*name*/, unsigned flags, hid_t fapl, haddr_t /*maxaddr*/) {
  if ((flags & (H5F_ACC_RDWR | H5F_ACC_TRUNC | H5F_ACC_CREAT | H5F_ACC_EXCL)) != 0) {
    PushDriverError(__func__, H5E_CANTOPENFILE, "cairn source driver is read-only");
    return nullptr;
  }
  const auto* info = static_cast<const SourceFapl*>(H5Pget_driver_info(fapl));
  if (info == nullptr || info->source == nullptr || info->errors == nullptr) {
    PushDriverError(__func__, H5E_CANTOPENFILE, "cairn source driver: no source in fapl");
    return nullptr;
  }
  auto* file = new (std::nothrow) SourceFile{};
  if (file == nullptr) {
    PushDriverError(__func__, H5E_CANTALLOC, "cairn source driver: out of memory");
    return nullptr;
  }
  file->fapl = static_cast<SourceFapl*>(SourceFaplCopy(info));
  if (file->fapl == nullptr) {
    delete file;
    PushDriverError(__func__, H5E_CANTALLOC, "cairn source driver: out of memory");
    return nullptr;
  }
  file->eoa = 0;
  return &file->pub;
}

herr_t SourceClose(H5FD_t* f) {
  SourceFile* file = AsSource(f);
  delete file->fapl;
  delete file;
  return 0;
}

herr_t SourceQuery(const H5FD_t* /*f*/, unsigned long* flags) {
  // No data sieving: raw data reads go straight into the caller's buffer.
  if (flags != nullptr) *flags = H5FD_FEAT_AGGREGATE_METADATA | H5FD_FEAT_ACCUMULATE_METADATA;
  return 0;
}

haddr_t SourceGetEoa(const H5FD_t* f, H5FD_mem_t /*type*/) { return AsSource(f)->eoa; }

herr_t SourceSetEoa(H5FD_t* f, H5FD_mem_t /*type*/, haddr_t addr) {
  AsSource(f)->eoa = addr;
  return 0;
}

haddr_t SourceGetEof(const H5FD_t* f, H5FD_mem_t /*type*/) {
  return AsSource(f)->fapl->source->size();
}

herr_t SourceRead(H5FD_t* f, H5FD_mem_t /*type*/, hid_t /*dxpl*/, haddr_t addr, size_t size,
                  void* buf) {
  SourceFile* file = AsSource(f);
  if (addr == HADDR_UNDEF || addr + size < addr) {
    PushDriverError(__func__, H5E_OVERFLOW, "cairn source driver: read address overflow");
    return -1;
  }
  auto* out = static_cast<std::byte*>(buf);
  const uint64_t src_size = file->fapl->source->size();
  // Like a POSIX file: bytes past the end read as zeros.
  const std::size_t in_range =
      addr >= src_size ? 0 : static_cast<std::size_t>(std::min<uint64_t>(size, src_size - addr));
  if (in_range < size) std::memset(out + in_range, 0, size - in_range);
  if (in_range == 0) return 0;
  Status st;
  try {
    st = file->fapl->source->ReadAt(addr, std::span<std::byte>(out, in_range));
  } catch (const std::exception& e) {
    st = MakeError(Code::kInternal, "source read threw: {}", e.what());
  }
  if (!st) {
    std::string text = st.error().ToString();
    if (!file->fapl->errors->first) file->fapl->errors->first = std::move(st).error();
    PushDriverError(__func__, H5E_READERROR, text.c_str());
    return -1;
  }
  return 0;
}

herr_t SourceWrite(H5FD_t* /*f*/, H5FD_mem_t /*type*/, hid_t /*dxpl*/, haddr_t /*addr*/,
                   size_t /*size*/, const void* /*buf*/) {
  PushDriverError(__func__, H5E_WRITEERROR, "cairn source driver is read-only");
  return -1;
}

const H5FD_class_t& SourceDriverClass() {
  static const H5FD_class_t cls = [] {
    H5FD_class_t c{};
    c.name = "cairn_source";
    c.maxaddr = haddr_t{1} << 62;
    c.fc_degree = H5F_CLOSE_WEAK;
    c.fapl_size = sizeof(SourceFapl);
    c.fapl_get = SourceFaplGet;
    c.fapl_copy = SourceFaplCopy;
    c.fapl_free = SourceFaplFree;
    c.open = SourceOpen;
    c.close = SourceClose;
    c.query = SourceQuery;
    c.get_eoa = SourceGetEoa;
    c.set_eoa = SourceSetEoa;
    c.get_eof = SourceGetEof;
    c.read = SourceRead;
    c.write = SourceWrite;
    for (int t = 0; t < H5FD_MEM_NTYPES; ++t) c.fl_map[t] = H5FD_MEM_SUPER;
    c.fl_map[H5FD_MEM_DRAW] = H5FD_MEM_DRAW;
    c.fl_map[H5FD_MEM_GHEAP] = H5FD_MEM_DRAW;
    return c;
  }();
  return cls;
}

Result<hid_t> SourceDriver() {
  static hid_t id = H5I_INVALID_HID;
  if (id >= 0 && H5Iis_valid(id) > 0) return id;
  id = H5FDregister(&SourceDriverClass());
  if (id < 0) return H5Failure(Code::kInternal, "register the cairn source file driver");
  return id;
}

// ---- Types, attributes, datasets ------------------------------------------------------

struct TypeInfo {
  DType dtype;
  bool big_endian;
};

// Maps an HDF5 type to a cairn dtype, exactly: IEEE f32/f64/f16, bfloat16, signed 32/64
// and unsigned 8 bit integers, in either byte order, without padding bits.
std::string_view ClassName(H5T_class_t cls) {
  switch (cls) {
    case H5T_INTEGER:
      return "integer";
    case H5T_FLOAT:
      return "float";
    case H5T_TIME:
      return "time";
    case H5T_STRING:
      return "string";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_COMPOUND:
      return "compound";
    case H5T_REFERENCE:
      return "reference";
    case H5T_ENUM:
      return "enum";
    case H5T_VLEN:
      return "variable-length";
    case H5T_ARRAY:
      return "array";
    default:
      return "unknown";
  }
}

Result<TypeInfo> DTypeOf(hid_t type, std::string_view what, Code corrupt) {
  const H5T_class_t cls = H5Tget_class(type);
  const std::size_t size = H5Tget_size(type);
  if (cls == H5T_NO_CLASS || size == 0) {
    return H5Failure(corrupt, fmt::format("inspect the type of {}", what));
  }
  auto unsupported = [&]() {
    return MakeError(Code::kInvalidArgument,
                     "{} has an unsupported HDF5 type ({}, {} bytes); supported: f32, f64, f16, "
                     "bf16, i32, i64, u8",
                     what, ClassName(cls), size);
  };
  if (cls != H5T_INTEGER && cls != H5T_FLOAT) return unsupported();
  const H5T_order_t order = H5Tget_order(type);
  const bool big_endian = order == H5T_ORDER_BE;
  if (size > 1 && order != H5T_ORDER_LE && order != H5T_ORDER_BE) return unsupported();
  if (H5Tget_precision(type) != 8 * size || H5Tget_offset(type) != 0) return unsupported();
  if (cls == H5T_INTEGER) {
    const H5T_sign_t sign = H5Tget_sign(type);
    if (size == 4 && sign == H5T_SGN_2) return TypeInfo{DType::kI32, big_endian};
    if (size == 8 && sign == H5T_SGN_2) return TypeInfo{DType::kI64, big_endian};
    if (size == 1 && sign == H5T_SGN_NONE) return TypeInfo{DType::kU8, false};
    return unsupported();
  }
  std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) {
    return H5Failure(corrupt, fmt::format("inspect the float type of {}", what));
  }
  const std::size_t ebias = H5Tget_ebias(type);
  if (H5Tget_norm(type) != H5T_NORM_IMPLIED || mpos != 0 || spos != 8 * size - 1 || epos != msize ||
      esize + msize + 1 != 8 * size) {
    return unsupported();
  }
  if (size == 4 && msize == 23 && ebias == 127) return TypeInfo{DType::kF32, big_endian};
  if (size == 8 && msize == 52 && ebias == 1023) return TypeInfo{DType::kF64, big_endian};
  if (size == 2 && msize == 10 && ebias == 15) return TypeInfo{DType::kF16, big_endian};
  if (size == 2 && msize == 7 && ebias == 127) return TypeInfo{DType::kBF16, big_endian};
  return unsupported();
}

// Reads a string attribute (variable or fixed length, scalar or one element).
Result<std::string> ReadStringAttribute(hid_t attr, std::string_view what, Code corrupt) {
  H5Handle type(H5Aget_type(attr));
  H5Handle space(H5Aget_space(attr));
  if (!type.valid() || !space.valid()) {
    return H5Failure(corrupt, fmt::format("inspect {}", what));
  }
  if (H5Tget_class(type.get()) != H5T_STRING) {
    return MakeError(Code::kInvalidArgument, "{} is not a string", what);
  }
  const hssize_t npoints = H5Sget_simple_extent_npoints(space.get());
  if (npoints != 1) {
    return MakeError(Code::kInvalidArgument, "{} holds {} values, expected one string", what,
                     npoints);
  }
  const htri_t is_var = H5Tis_variable_str(type.get());
  if (is_var < 0) return H5Failure(corrupt, fmt::format("inspect {}", what));
  if (is_var > 0) {
    H5Handle mem(H5Tcopy(H5T_C_S1));
    if (!mem.valid() || H5Tset_size(mem.get(), H5T_VARIABLE) < 0 ||
        H5Tset_cset(mem.get(), H5Tget_cset(type.get())) < 0) {
      return H5Failure(Code::kInternal, fmt::format("make a string type for {}", what));
    }
    char* p = nullptr;
    if (H5Aread(attr, mem.get(), &p) < 0) {
      return H5Failure(corrupt, fmt::format("read {}", what));
    }
    std::string value = p != nullptr ? std::string(p) : std::string();
    H5Dvlen_reclaim(mem.get(), space.get(), H5P_DEFAULT, &p);
    return value;
  }
  const std::size_t size = H5Tget_size(type.get());
  if (size == 0 || size > (64u << 20)) {
    return MakeError(corrupt, "{} has an implausible string size {}", what, size);
  }
  std::string value(size, '\0');
  if (H5Aread(attr, type.get(), value.data()) < 0) {
    return H5Failure(corrupt, fmt::format("read {}", what));
  }
  switch (H5Tget_strpad(type.get())) {
    case H5T_STR_NULLTERM:
      value.resize(std::strlen(value.c_str()));
      break;
    case H5T_STR_SPACEPAD:
      while (!value.empty() && value.back() == ' ') value.pop_back();
      break;
    default:
      while (!value.empty() && value.back() == '\0') value.pop_back();
      break;
  }
  return value;
}

// Opens the dataset whose object header is at `addr`.
Result<H5Handle> OpenDatasetAt(hid_t file, haddr_t addr, std::string_view what, Code corrupt) {
  H5Handle obj(H5Oopen_by_addr(file, addr));
  if (!obj.valid()) return H5Failure(corrupt, fmt::format("open {}", what));
  if (H5Iget_type(obj.get()) != H5I_DATASET) {
    return MakeError(corrupt, "{} is not a dataset", what);
  }
  return obj;
}

// Describes one dataset and checks that it can be read safely within `limits`.
Result<DatasetEntry> Describe(hid_t dset, std::string path, std::string name, std::string_view what,
                              bool dtype_attr, const CatalogLimits& limits) {
  const Code corrupt = limits.corrupt;
  H5Handle type(H5Dget_type(dset));
  if (!type.valid()) return H5Failure(corrupt, fmt::format("get the type of {}", what));
  CAIRN_ASSIGN_OR_RETURN(TypeInfo ti, DTypeOf(type.get(), what, corrupt));
  if (dtype_attr) {
    const htri_t has = H5Aexists(dset, kDTypeAttr);
    if (has < 0)
      return H5Failure(corrupt, fmt::format("look up attribute {} of {}", kDTypeAttr, what));
    if (has > 0) {
      H5Handle attr(H5Aopen(dset, kDTypeAttr, H5P_DEFAULT));
      if (!attr.valid())
        return H5Failure(corrupt, fmt::format("open attribute {} of {}", kDTypeAttr, what));
      CAIRN_ASSIGN_OR_RETURN(
          std::string dtype_name,
          ReadStringAttribute(attr.get(), fmt::format("attribute {} of {}", kDTypeAttr, what),
                              corrupt));
      auto dt = ParseDType(dtype_name);
      if (!dt) return std::unexpected(std::move(dt).error().With(std::string(what)));
      if (*dt != ti.dtype) {
        return MakeError(Code::kInvalidArgument, "{}: attribute {} says {} but its HDF5 type is {}",
                         what, kDTypeAttr, DTypeName(*dt), DTypeName(ti.dtype));
      }
    }
  }

  H5Handle space(H5Dget_space(dset));
  if (!space.valid()) return H5Failure(corrupt, fmt::format("get the dataspace of {}", what));
  std::vector<uint64_t> shape;
  switch (H5Sget_simple_extent_type(space.get())) {
    case H5S_SCALAR:
      break;
    case H5S_SIMPLE: {
      const int rank = H5Sget_simple_extent_ndims(space.get());
      if (rank < 0 || rank > H5S_MAX_RANK) {
        return H5Failure(corrupt, fmt::format("get the rank of {}", what));
      }
      std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
      if (rank > 0 && H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) < 0) {
        return H5Failure(corrupt, fmt::format("get the shape of {}", what));
      }
      shape.assign(dims.begin(), dims.end());
      break;
    }
    default:
      return MakeError(Code::kInvalidArgument, "{} has a null or unknown dataspace", what);
  }
  auto n = NumElements(shape);
  const uint64_t elem = DTypeSize(ti.dtype);
  if (!n || *n > UINT64_MAX / elem) {
    return MakeError(corrupt, "{}: shape [{}] overflows", what, fmt::join(shape, ", "));
  }
  const uint64_t size_bytes = *n * elem;

  H5Handle dcpl(H5Dget_create_plist(dset));
  if (!dcpl.valid())
    return H5Failure(corrupt, fmt::format("get the creation properties of {}", what));
  const int external = H5Pget_external_count(dcpl.get());
  if (external != 0) {
    return MakeError(Code::kInvalidArgument, "{} keeps its data in external files", what);
  }
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  const haddr_t offset = H5Dget_offset(dset);
  switch (layout) {
    case H5D_COMPACT:
    case H5D_CONTIGUOUS: {
      const bool stored = layout == H5D_COMPACT || offset != HADDR_UNDEF;
      if (!stored) {
        if (size_bytes > limits.sparse_max) {
          return MakeError(corrupt, "{} is unwritten and claims {} bytes (limit {})", what,
                           size_bytes, limits.sparse_max);
        }
        break;
      }
      const hsize_t storage = H5Dget_storage_size(dset);
      if (storage != size_bytes) {
        return MakeError(corrupt, "{} stores {} bytes but its shape and type need {}", what,
                         storage, size_bytes);
      }
      if (size_bytes > limits.file_size ||
          (layout == H5D_CONTIGUOUS && offset > limits.file_size - size_bytes)) {
        return MakeError(corrupt, "{}: {} bytes at offset {} lie outside the file ({} bytes)", what,
                         size_bytes, offset, limits.file_size);
      }
      break;
    }
    case H5D_CHUNKED:
      if (size_bytes > limits.sparse_max) {
        return MakeError(corrupt, "{} is chunked and claims {} bytes (limit {})", what, size_bytes,
                         limits.sparse_max);
      }
      break;
    default:
      return MakeError(Code::kInvalidArgument, "{} has an unsupported layout ({})", what,
                       static_cast<int>(layout));
  }
  DatasetEntry e;
  e.info.name = std::move(name);
  e.info.dtype = ti.dtype;
  e.info.shape = std::move(shape);
  e.info.size_bytes = size_bytes;
  e.path = std::move(path);
  e.big_endian = ti.big_endian;
  return e;
}

struct VisitState {
  std::vector<std::pair<std::string, haddr_t>> datasets;
};

herr_t CollectDatasets(hid_t /*obj*/, const char* name, const H5O_info_t* info, void* data) {
  try {
    if (info != nullptr && info->type == H5O_TYPE_DATASET && name != nullptr) {
      static_cast<VisitState*>(data)->datasets.emplace_back(name, info->addr);
    }
  } catch (...) {
    return -1;
  }
  return 0;
}

herr_t CollectAttrNames(hid_t /*loc*/, const char* name, const H5A_info_t* /*info*/, void* data) {
  try {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
  } catch (...) {
    return -1;
  }
  return 0;
}

// Attributes of /.cairn, if it exists as a hard-linked group.
Status ReadCairnAttributes(hid_t file, const CatalogLimits& limits,
                           std::map<std::string, std::string>* out) {
  const Code corrupt = limits.corrupt;
  const htri_t exists = H5Lexists(file, ".cairn", H5P_DEFAULT);
  if (exists < 0) return H5Failure(corrupt, "look up /.cairn");
  if (exists == 0) return OkStatus();
  H5L_info_t linfo;
  if (H5Lget_info(file, ".cairn", &linfo, H5P_DEFAULT) < 0) {
    return H5Failure(corrupt, "inspect link /.cairn");
  }
  if (linfo.type != H5L_TYPE_HARD) {
    return MakeError(Code::kInvalidArgument, "/.cairn is not a hard link (type {})",
                     static_cast<int>(linfo.type));
  }
  H5Handle obj(H5Oopen_by_addr(file, linfo.u.address));
  if (!obj.valid()) return H5Failure(corrupt, "open /.cairn");
  if (H5Iget_type(obj.get()) != H5I_GROUP) return OkStatus();
  std::vector<std::string> names;
  hsize_t idx = 0;
  if (H5Aiterate2(obj.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, CollectAttrNames, &names) < 0) {
    return H5Failure(corrupt, "list the attributes of /.cairn");
  }
  for (const std::string& key : names) {
    const std::string what = fmt::format("attribute '{}' of /.cairn", key);
    H5Handle attr(H5Aopen(obj.get(), key.c_str(), H5P_DEFAULT));
    if (!attr.valid()) return H5Failure(corrupt, fmt::format("open {}", what));
    CAIRN_ASSIGN_OR_RETURN(std::string value, ReadStringAttribute(attr.get(), what, corrupt));
    (*out)[key] = std::move(value);
  }
  return OkStatus();
}

}  // namespace

namespace h5internal {

Result<Catalog> ReadCatalog(hid_t file, const CatalogLimits& limits) {
  VisitState visit;
  if (H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, CollectDatasets, &visit, H5O_INFO_BASIC) < 0) {
    return H5Failure(limits.corrupt, "list the datasets");
  }
  Catalog catalog;
  for (auto& [path, addr] : visit.datasets) {
    const std::string_view p = path;
    const bool is_blob = p.starts_with(kBlobPrefix);
    if (!is_blob && (p == ".cairn" || p.starts_with(".cairn/"))) continue;
    std::string name(is_blob ? p.substr(kBlobPrefix.size()) : p);
    const std::string what = fmt::format("{} '{}'", is_blob ? "blob" : "dataset", name);
    CAIRN_ASSIGN_OR_RETURN(H5Handle dset, OpenDatasetAt(file, addr, what, limits.corrupt));
    CAIRN_ASSIGN_OR_RETURN(DatasetEntry entry, Describe(dset.get(), path, std::move(name), what,
                                                        /*dtype_attr=*/!is_blob, limits));
    entry.addr = addr;
    if (is_blob) {
      if (entry.info.dtype != DType::kU8 || entry.info.shape.size() != 1) {
        return MakeError(Code::kInvalidArgument, "{} is not a 1-D u8 dataset", what);
      }
      catalog.blobs.push_back(std::move(entry));
    } else {
      catalog.tensors.push_back(std::move(entry));
    }
  }
  auto by_name = [](const DatasetEntry& a, const DatasetEntry& b) {
    return a.info.name < b.info.name;
  };
  std::sort(catalog.tensors.begin(), catalog.tensors.end(), by_name);
  std::sort(catalog.blobs.begin(), catalog.blobs.end(), by_name);
  CAIRN_RETURN_IF_ERROR(ReadCairnAttributes(file, limits, &catalog.attrs));
  return catalog;
}

Status ReadEntry(hid_t file, const DatasetEntry& entry, const CatalogLimits& limits,
                 std::span<std::byte> out) {
  const std::string what = fmt::format("dataset '{}'", entry.path);
  if (out.size() != entry.info.size_bytes) {
    return MakeError(Code::kInvalidArgument, "{} has {} bytes but the buffer holds {}", what,
                     entry.info.size_bytes, out.size());
  }
  if (out.empty()) return OkStatus();
  CAIRN_ASSIGN_OR_RETURN(H5Handle dset, OpenDatasetAt(file, entry.addr, what, limits.corrupt));
  H5Handle type(H5Dget_type(dset.get()));
  H5Handle space(H5Dget_space(dset.get()));
  if (!type.valid() || !space.valid()) {
    return H5Failure(limits.corrupt, fmt::format("inspect {}", what));
  }
  // The catalog checked this dataset; re-check what bounds the write into `out`.
  const hssize_t npoints = H5Sget_simple_extent_npoints(space.get());
  if (npoints < 0 || H5Tget_size(type.get()) != DTypeSize(entry.info.dtype) ||
      static_cast<uint64_t>(npoints) * DTypeSize(entry.info.dtype) != entry.info.size_bytes) {
    return MakeError(limits.corrupt, "{} changed since it was catalogued", what);
  }
  // The file's own type, so bytes arrive exactly as stored; big-endian data is swapped.
  H5Handle mem;
  if (entry.big_endian) {
    mem = H5Handle(H5Tcopy(type.get()));
    if (!mem.valid() || H5Tset_order(mem.get(), H5T_ORDER_LE) < 0) {
      return H5Failure(Code::kInternal, fmt::format("make the memory type of {}", what));
    }
  }
  const hid_t mem_type = mem.valid() ? mem.get() : type.get();
  if (H5Dread(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0) {
    return H5Failure(limits.corrupt, fmt::format("read {}", what));
  }
  return OkStatus();
}

}  // namespace h5internal

// ---- H5ShardReader --------------------------------------------------------------------

struct H5ShardReader::State {
  std::shared_ptr<const RandomAccessSource> source;
  std::shared_ptr<ErrorSlot> errors;
  CatalogLimits limits;
  Catalog catalog;
  hid_t file = H5I_INVALID_HID;

  // The error to report for a failed operation: the source's own error if a driver
  // read failed, else `fallback`. Clears the slot.
  Error Resolve(Error fallback) const {
    if (errors->first) {
      Error e = std::move(*errors->first);
      errors->first.reset();
      return e;
    }
    return fallback;
  }
};

H5ShardReader::H5ShardReader(std::unique_ptr<State> state, std::string display_name)
    : state_(std::move(state)), display_name_(std::move(display_name)) {
  for (const DatasetEntry& e : state_->catalog.tensors) tensors_.push_back(e.info);
  for (const DatasetEntry& e : state_->catalog.blobs) blob_infos_.push_back(e.info);
  attrs_ = state_->catalog.attrs;
}

H5ShardReader::~H5ShardReader() {
  if (state_ && state_->file >= 0) {
    H5Lock lock;
    H5Fclose(state_->file);
  }
}

Result<std::unique_ptr<H5ShardReader>> H5ShardReader::Open(
    std::shared_ptr<const RandomAccessSource> src, std::string display_name) {
  const std::string frame = fmt::format("open HDF5 shard {}", display_name);
  if (src == nullptr) return MakeError(Code::kInvalidArgument, "{}: no source", frame);
  auto state = std::make_unique<State>();
  state->source = src;
  state->errors = std::make_shared<ErrorSlot>();
  state->limits.file_size = src->size();
  state->limits.sparse_max = src->size();
  state->limits.corrupt = Code::kDataLoss;

  H5Lock lock;
  auto fail = [&](Error e) { return std::unexpected(state->Resolve(std::move(e)).With(frame)); };
  auto driver = SourceDriver();
  if (!driver) return std::unexpected(std::move(driver).error().With(frame));
  H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  const SourceFapl info{src, state->errors};
  if (!fapl.valid() || H5Pset_driver(fapl.get(), *driver, &info) < 0 ||
      H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) < 0) {
    return std::unexpected(
        H5Failure(Code::kInternal, "make the file access property list").error().With(frame));
  }
  H5Handle file(H5Fopen(display_name.c_str(), H5F_ACC_RDONLY, fapl.get()));
  if (!file.valid()) return fail(H5Failure(Code::kDataLoss, "not a readable HDF5 file").error());
  auto catalog = h5internal::ReadCatalog(file.get(), state->limits);
  if (!catalog) return fail(std::move(catalog).error());
  state->catalog = std::move(*catalog);
  state->errors->first.reset();
  state->file = file.release();
  return std::unique_ptr<H5ShardReader>(new H5ShardReader(std::move(state), display_name));
}

Result<TensorInfo> H5ShardReader::Info(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) {
    return MakeError(Code::kNotFound, "no tensor '{}' in shard {}", name, display_name_);
  }
  return *it;
}

Status H5ShardReader::ReadDataset(std::string_view kind, std::string_view name, bool blob,
                                  std::span<std::byte> out) const {
  const auto& entries = blob ? state_->catalog.blobs : state_->catalog.tensors;
  auto it =
      std::lower_bound(entries.begin(), entries.end(), name,
                       [](const DatasetEntry& e, std::string_view n) { return e.info.name < n; });
  if (it == entries.end() || it->info.name != name) {
    return MakeError(Code::kNotFound, "no {} '{}' in shard {}", kind, name, display_name_);
  }
  H5Lock lock;
  state_->errors->first.reset();
  Status st = h5internal::ReadEntry(state_->file, *it, state_->limits, out);
  if (!st) {
    return std::unexpected(
        state_->Resolve(std::move(st).error())
            .With(fmt::format("read {} '{}' of shard {}", kind, name, display_name_)));
  }
  return OkStatus();
}

Status H5ShardReader::ReadTensor(std::string_view name, std::span<std::byte> out) const {
  return ReadDataset("tensor", name, /*blob=*/false, out);
}

std::vector<std::string> H5ShardReader::blobs() const {
  std::vector<std::string> names;
  names.reserve(blob_infos_.size());
  for (const TensorInfo& b : blob_infos_) names.push_back(b.name);
  return names;
}

Result<std::vector<std::byte>> H5ShardReader::ReadBlob(std::string_view name) const {
  auto it = std::lower_bound(blob_infos_.begin(), blob_infos_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == blob_infos_.end() || it->name != name) {
    return MakeError(Code::kNotFound, "no blob '{}' in shard {}", name, display_name_);
  }
  std::vector<std::byte> data(it->size_bytes);
  CAIRN_RETURN_IF_ERROR(ReadDataset("blob", name, /*blob=*/true, data));
  return data;
}

Result<std::string> H5ShardReader::Attribute(std::string_view key) const {
  auto it = attrs_.find(std::string(key));
  if (it == attrs_.end()) {
    return MakeError(Code::kNotFound, "no attribute '{}' in shard {}", key, display_name_);
  }
  return it->second;
}

}  // namespace cairn::ckpt
