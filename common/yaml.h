// Strict, typed reading of YAML documents (yaml-cpp underneath).
//
// Promise: every error names the file, line and column, and the dotted key path, and
// says what was expected and what was found:
//   job.yaml:7:10: key 'checkpoint.keep_last': expected an integer, got 'three'
// A map read through YamlMap rejects keys that were never asked for (typos are errors,
// not silently ignored). Used by the cluster config (common/config.h) and job specs.
//
// Threading: values; no shared state.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/status.h"

namespace cairn::yaml {

// A byte count written as "4096", "64KiB", "1MiB", "2GiB", "1GB", ...
struct ByteSize {
  uint64_t bytes = 0;
};

// Parses "250ms", "5s", "2m", "1h" (or a bare integer = seconds).
Result<std::chrono::milliseconds> ParseDuration(std::string_view text);
Result<uint64_t> ParseByteSize(std::string_view text);

// Parses a whole document; a syntax error names the file, line and column.
Result<YAML::Node> ParseDocument(std::string_view text, std::string_view file);
// Reads and parses a file; a missing file is kNotFound naming the path.
Result<YAML::Node> LoadFile(const std::string& path);

class YamlMap {
 public:
  // Fails unless `node` is a map (an absent/null node reads as an empty map).
  static Result<YamlMap> Of(const YAML::Node& node, std::string file, std::string path = "");

  // Reads key into *out; missing key is an error naming the key and the map's line.
  template <typename T>
  Status Required(std::string_view key, T* out);
  // Reads key into *out if present; otherwise leaves *out (its default) alone.
  template <typename T>
  Status Optional(std::string_view key, T* out);
  // The sub-map under key (empty when absent).
  Result<YamlMap> Child(std::string_view key);
  bool Has(std::string_view key) const;
  // The raw node under key (for lists of maps); marks the key as consumed.
  YAML::Node Raw(std::string_view key);

  // Errors on the first key that was never read: "unknown key 'x.y' (known keys: ...)".
  Status Finish() const;

  const std::string& file() const { return file_; }
  std::string KeyPath(std::string_view key) const;
  // "file:line:col: " for a node.
  std::string Where(const YAML::Node& node) const;

 private:
  YamlMap(YAML::Node node, std::string file, std::string path)
      : node_(std::move(node)), file_(std::move(file)), path_(std::move(path)) {}
  template <typename T>
  Status Convert(const YAML::Node& n, std::string_view key, T* out);

  YAML::Node node_;
  std::string file_;
  std::string path_;
  std::set<std::string, std::less<>> known_;
};

// Conversion of one scalar/sequence node; specialised in yaml.cc for bool, int32,
// int64, uint32, uint64, double, string, vector<string>, milliseconds, ByteSize,
// map<string,string>.
template <typename T>
Status ConvertNode(const YAML::Node& n, const std::string& where, const std::string& key, T* out);

template <typename T>
Status YamlMap::Required(std::string_view key, T* out) {
  known_.emplace(key);
  YAML::Node n = node_[std::string(key)];
  if (!n.IsDefined() || n.IsNull()) {
    return MakeError(Code::kInvalidArgument, "{}missing required key '{}'", Where(node_),
                     KeyPath(key));
  }
  return ConvertNode(n, Where(n), KeyPath(key), out);
}

template <typename T>
Status YamlMap::Optional(std::string_view key, T* out) {
  known_.emplace(key);
  YAML::Node n = node_[std::string(key)];
  if (!n.IsDefined() || n.IsNull()) return OkStatus();
  return ConvertNode(n, Where(n), KeyPath(key), out);
}

}  // namespace cairn::yaml
