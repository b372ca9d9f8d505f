// The one typed configuration of a cairn installation (coordinator, agents, checkpoint
// defaults), loaded from YAML. Every setting has a default; a config file only states
// what differs. Unknown keys, wrong types and malformed YAML are errors naming the file,
// line and key (see common/yaml.h). Environment variables are not read here: binaries
// map their flags onto this struct, in one place.
//
// Example (docs/config.md lists every key):
//   state_dir: /var/lib/cairn
//   log_level: info
//   coordinator: { listen: 127.0.0.1:7070, heartbeat_timeout: 5s }
//   agent: { heartbeat_interval: 1s, cpus: 16 }
//   checkpoint: { chunk_size: 1MiB, max_inflight: 2, keep_last: 3, keep_every: 1000 }
//
// Threading: values; no shared state.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace cairn {

struct CoordinatorConfig {
  std::string listen = "127.0.0.1:7070";
  std::chrono::milliseconds heartbeat_timeout{5000};
  uint64_t max_frame_bytes = 16ull << 20;
};

struct AgentConfig {
  std::string coordinator = "127.0.0.1:7070";
  std::chrono::milliseconds heartbeat_interval{1000};
  int32_t cpus = 0;         // 0: detect
  uint64_t memory_bytes = 0;  // 0: detect
  std::chrono::milliseconds grace_period{30000};
};

struct CheckpointConfig {
  std::string key_file;           // master key file (0600)
  uint64_t chunk_size = 1ull << 20;  // AEAD chunk size in bytes
  int32_t max_inflight = 2;       // async saves in flight
  int32_t keep_last = 3;          // retention: newest N steps keep their shards
  int32_t keep_every = 0;         // retention: and every K-th step (0: none)
};

struct Config {
  std::string state_dir = "~/.cairn";
  std::string log_level = "info";
  CoordinatorConfig coordinator;
  AgentConfig agent;
  CheckpointConfig checkpoint;
};

// Parses YAML text; `file` names the source in error messages.
Result<Config> ParseConfig(std::string_view yaml_text, std::string_view file);
// Reads and parses a config file.
Result<Config> LoadConfig(const std::string& path);

}  // namespace cairn

namespace cairn {
// The effective config as YAML (every key, defaults included); ParseConfig reads it back.
std::string ConfigToYaml(const Config& config);
}  // namespace cairn
