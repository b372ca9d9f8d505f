#include "common/yaml.h"

#include <charconv>
#include <fstream>
#include <sstream>

namespace cairn::yaml {
namespace {

std::string Describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Scalar: return fmt::format("'{}'", n.Scalar());
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Null: return "null";
    default: return "nothing";
  }
}

std::unexpected<Error> TypeError(const std::string& where, const std::string& key,
                                 std::string_view expected, const YAML::Node& n) {
  return MakeError(Code::kInvalidArgument, "{}key '{}': expected {}, got {}", where, key,
                   expected, Describe(n));
}

template <typename Int>
Status ConvertInt(const YAML::Node& n, const std::string& where, const std::string& key,
                  Int* out, std::string_view what) {
  if (!n.IsScalar()) return TypeError(where, key, what, n);
  const std::string& s = n.Scalar();
  Int v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec == std::errc::result_out_of_range) {
    return MakeError(Code::kInvalidArgument, "{}key '{}': {} is out of range for {}", where,
                     key, s, what);
  }
  if (ec != std::errc() || p != s.data() + s.size()) return TypeError(where, key, what, n);
  *out = v;
  return OkStatus();
}

}  // namespace

Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  uint64_t value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || p == text.data()) {
    return MakeError(Code::kInvalidArgument, "'{}' is not a duration (e.g. 250ms, 5s, 2m, 1h)",
                     text);
  }
  std::string_view unit(p, text.data() + text.size() - p);
  uint64_t ms_per = 0;
  if (unit == "ms") ms_per = 1;
  else if (unit == "s" || unit.empty()) ms_per = 1000;
  else if (unit == "m") ms_per = 60'000;
  else if (unit == "h") ms_per = 3'600'000;
  else
    return MakeError(Code::kInvalidArgument, "'{}' has unknown duration unit '{}' (ms, s, m, h)",
                     text, unit);
  if (value > UINT64_MAX / ms_per / 2) {
    return MakeError(Code::kInvalidArgument, "duration '{}' is too large", text);
  }
  return std::chrono::milliseconds(static_cast<int64_t>(value * ms_per));
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  uint64_t value = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || p == text.data()) {
    return MakeError(Code::kInvalidArgument, "'{}' is not a byte size (e.g. 4096, 64KiB, 1MiB)",
                     text);
  }
  std::string_view unit(p, text.data() + text.size() - p);
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"", 1},           {"B", 1},           {"KiB", 1ull << 10}, {"MiB", 1ull << 20},
      {"GiB", 1ull << 30}, {"TiB", 1ull << 40}, {"KB", 1000},      {"MB", 1000'000},
      {"GB", 1000'000'000}, {"TB", 1000'000'000'000}};
  for (const auto& [u, mult] : kUnits) {
    if (u == unit) {
      if (value != 0 && mult > UINT64_MAX / value) {
        return MakeError(Code::kInvalidArgument, "byte size '{}' is too large", text);
      }
      return value * mult;
    }
  }
  return MakeError(Code::kInvalidArgument,
                   "'{}' has unknown size unit '{}' (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)",
                   text, unit);
}

Result<YAML::Node> ParseDocument(std::string_view text, std::string_view file) {
  try {
    return YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return MakeError(Code::kInvalidArgument, "{}:{}:{}: malformed YAML: {}", file,
                     e.mark.line + 1, e.mark.column + 1, e.msg);
  }
}

Result<YAML::Node> LoadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError(errno, fmt::format("open {}", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return ErrnoError(errno, fmt::format("read {}", path));
  return ParseDocument(ss.str(), path);
}

Result<YamlMap> YamlMap::Of(const YAML::Node& node, std::string file, std::string path) {
  YamlMap m(node, std::move(file), std::move(path));
  if (node.IsDefined() && !node.IsNull() && !node.IsMap()) {
    return MakeError(Code::kInvalidArgument, "{}{}: expected a map of keys, got {}",
                     m.Where(node), m.path_.empty() ? "document" : "key '" + m.path_ + "'",
                     Describe(node));
  }
  return m;
}

std::string YamlMap::KeyPath(std::string_view key) const {
  return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
}

std::string YamlMap::Where(const YAML::Node& node) const {
  YAML::Mark mark = node.Mark();
  if (mark.is_null()) return fmt::format("{}: ", file_);
  return fmt::format("{}:{}:{}: ", file_, mark.line + 1, mark.column + 1);
}

bool YamlMap::Has(std::string_view key) const {
  if (!node_.IsMap()) return false;
  YAML::Node n = node_[std::string(key)];
  return n.IsDefined() && !n.IsNull();
}

YAML::Node YamlMap::Raw(std::string_view key) {
  known_.emplace(key);
  if (!node_.IsMap()) return YAML::Node();
  return node_[std::string(key)];
}

Result<YamlMap> YamlMap::Child(std::string_view key) {
  known_.emplace(key);
  YAML::Node n = node_.IsMap() ? node_[std::string(key)] : YAML::Node();
  return Of(n, file_, KeyPath(key));
}

Status YamlMap::Finish() const {
  if (!node_.IsMap()) return OkStatus();
  for (const auto& kv : node_) {
    const std::string k = kv.first.Scalar();
    if (!known_.contains(k)) {
      std::string known;
      for (const auto& s : known_) known += (known.empty() ? "" : ", ") + s;
      return MakeError(Code::kInvalidArgument, "{}unknown key '{}' (known keys here: {})",
                       Where(kv.first), KeyPath(k), known);
    }
  }
  return OkStatus();
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   std::string* out) {
  if (!n.IsScalar()) return TypeError(where, key, "a string", n);
  *out = n.Scalar();
  return OkStatus();
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   bool* out) {
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    if (s == "true" || s == "yes" || s == "on") return *out = true, OkStatus();
    if (s == "false" || s == "no" || s == "off") return *out = false, OkStatus();
  }
  return TypeError(where, key, "true or false", n);
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   int32_t* out) {
  return ConvertInt(n, where, key, out, "an integer");
}
template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   int64_t* out) {
  return ConvertInt(n, where, key, out, "an integer");
}
template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   uint32_t* out) {
  return ConvertInt(n, where, key, out, "a non-negative integer");
}
template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   uint64_t* out) {
  return ConvertInt(n, where, key, out, "a non-negative integer");
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   double* out) {
  if (!n.IsScalar()) return TypeError(where, key, "a number", n);
  const std::string& s = n.Scalar();
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return TypeError(where, key, "a number", n);
  *out = v;
  return OkStatus();
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   std::chrono::milliseconds* out) {
  if (!n.IsScalar()) return TypeError(where, key, "a duration (e.g. 5s)", n);
  auto d = ParseDuration(n.Scalar());
  if (!d) return MakeError(Code::kInvalidArgument, "{}key '{}': {}", where, key, d.error().message());
  *out = *d;
  return OkStatus();
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   ByteSize* out) {
  if (!n.IsScalar()) return TypeError(where, key, "a byte size (e.g. 1MiB)", n);
  auto b = ParseByteSize(n.Scalar());
  if (!b) return MakeError(Code::kInvalidArgument, "{}key '{}': {}", where, key, b.error().message());
  out->bytes = *b;
  return OkStatus();
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   std::vector<std::string>* out) {
  if (!n.IsSequence()) return TypeError(where, key, "a list of strings", n);
  std::vector<std::string> v;
  for (std::size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      return TypeError(where, fmt::format("{}[{}]", key, i), "a string", n[i]);
    }
    v.push_back(n[i].Scalar());
  }
  *out = std::move(v);
  return OkStatus();
}

template <>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key,
                   std::map<std::string, std::string>* out) {
  if (!n.IsMap()) return TypeError(where, key, "a map of strings", n);
  std::map<std::string, std::string> m;
  for (const auto& kv : n) {
    if (!kv.second.IsScalar()) {
      return TypeError(where, fmt::format("{}.{}", key, kv.first.Scalar()), "a string",
                       kv.second);
    }
    m[kv.first.Scalar()] = kv.second.Scalar();
  }
  *out = std::move(m);
  return OkStatus();
}

}  // namespace cairn::yaml
