#include "checkpoint/types.h"

namespace cairn::ckpt {

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF64: return "f64";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kI32: return "i32";
    case DType::kI64: return "i64";
    case DType::kU8: return "u8";
  }
  return "?";
}

Result<DType> ParseDType(std::string_view name) {
  for (DType t : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16, DType::kI32, DType::kI64,
                  DType::kU8}) {
    if (DTypeName(t) == name) return t;
  }
  return MakeError(Code::kInvalidArgument,
                   "unknown dtype '{}' (expected f32, f64, f16, bf16, i32, i64 or u8)", name);
}

std::size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF16: case DType::kBF16: return 2;
    case DType::kU8: return 1;
  }
  return 0;
}

Result<uint64_t> NumElements(std::span<const uint64_t> shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (d != 0 && n > UINT64_MAX / d) {
      return MakeError(Code::kInvalidArgument, "shape has more than 2^64 elements");
    }
    n *= d;
  }
  return n;
}

Status ValidateName(std::string_view name) {
  if (name.empty() || name.size() > 1024) {
    return MakeError(Code::kInvalidArgument, "tensor name must be 1..1024 bytes, got {} bytes",
                     name.size());
  }
  if (name.find('\0') != std::string_view::npos) {
    return MakeError(Code::kInvalidArgument, "tensor name contains a NUL byte");
  }
  if (name.front() == '/' || name.back() == '/') {
    return MakeError(Code::kInvalidArgument, "tensor name '{}' starts or ends with '/'", name);
  }
  std::size_t start = 0;
  bool first = true;
  while (start <= name.size()) {
    std::size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view comp = name.substr(start, end - start);
    if (comp.empty() || comp == "." || comp == "..") {
      return MakeError(Code::kInvalidArgument,
                       "tensor name '{}' has an empty, '.' or '..' component", name);
    }
    if (first && comp == ".cairn") {
      return MakeError(Code::kInvalidArgument, "tensor name '{}' uses the reserved group .cairn",
                       name);
    }
    first = false;
    start = end + 1;
  }
  return OkStatus();
}

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kHex[bytes[i] >> 4];
    out[2 * i + 1] = kHex[bytes[i] & 15];
  }
  return out;
}

Result<Digest> DigestFromHex(std::string_view hex) {
  Digest d{};
  if (hex.size() != 64) {
    return MakeError(Code::kInvalidArgument, "digest must be 64 hex characters, got {}",
                     hex.size());
  }
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < 32; ++i) {
    int hi = val(hex[2 * i]), lo = val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return MakeError(Code::kInvalidArgument, "digest '{}' is not hexadecimal", hex);
    }
    d[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return d;
}

}  // namespace cairn::ckpt
