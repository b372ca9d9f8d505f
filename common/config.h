// The one typed configuration of a cairn installation, loaded from YAML: what cairnd,
// cairn-agent and the cairn CLI read (docs/config.md lists every key, its default and
// who reads it). Every setting has a default; a config file only states what differs.
// Unknown keys, wrong types, out-of-range values and malformed YAML are errors naming the
// file, line and key (see common/yaml.h).
//
// Precedence, the same for every key: a command-line flag over the config file over the
// built-in default (for the state directory, CAIRN_STATE_DIR sits between the flag and
// the file). The file is --config FILE, else $CAIRN_CONFIG, else none (common/app.h finds
// it). Environment variables are not read here: binaries map their flags onto this
// struct, in one place each, and check a flag's value with the same rule as the key's
// (the Check* functions below), so a bad flag and a bad key fail alike.
//
// Example:
//   state_dir: /var/lib/cairn
//   log_level: info
//   coordinator: { listen: 0.0.0.0:7070, heartbeat_timeout: 10s, quarantine_time: 30m }
//   agent: { cpus: 16, memory: 64GiB }
//
// Threading: values and functions without shared state.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace cairn {

// Read by cairnd (and so by `cairn up`, which passes the config file on).
struct CoordinatorConfig {
  // HOST:PORT to listen on, HOST an IP address; port 0: any free port (cairnd writes the
  // one it got to <state_dir>/cairnd.addr, where clients and agents find it).
  std::string listen = "127.0.0.1:0";                 // flag: cairnd --listen
  // A node without heartbeats this long is lost: its runs fail over.
  std::chrono::milliseconds heartbeat_timeout{5000};  // flag: --node-timeout
  // How long a node with repeated failures gets no new placements (0: until its agent
  // registers again).
  std::chrono::milliseconds quarantine_time{600'000};  // flag: --quarantine-time
};

// Read by cairn-agent (and so by `cairn up`'s agents).
struct AgentConfig {
  int32_t cpus = 0;           // CPUs the node offers; 0: the cores online. flag: --cpus
  uint64_t memory_bytes = 0;  // memory the node offers; 0: the physical memory
};

struct Config {
  // The cluster's state directory (absolute); empty: CAIRN_STATE_DIR, else ~/.cairn.
  // Read by every binary (flag: --state-dir).
  std::string state_dir;
  std::string log_level = "info";  // every binary (flag: --log-level)
  CoordinatorConfig coordinator;
  AgentConfig agent;
};

// Parses YAML text; `file` names the source in error messages.
Result<Config> ParseConfig(std::string_view yaml_text, std::string_view file);
// Reads and parses a config file.
Result<Config> LoadConfig(const std::string& path);

// The effective config as YAML (every key, defaults included); ParseConfig reads it back.
std::string ConfigToYaml(const Config& config);

// ---- The rule of each value, for keys and flags alike. A failed check says what is wrong
// with the value; the caller adds where it came from (file:line:col and key, or the flag).

struct HostPort {
  std::string host;  // an IPv4 or IPv6 address, without brackets
  uint16_t port = 0;
};
// "HOST:PORT" or "[V6]:PORT"; HOST an IP address literal, PORT 0..65535.
Result<HostPort> ParseHostPort(std::string_view text);
// At least 1 s, the agents' heartbeat interval: a shorter timeout would declare live
// nodes lost between two heartbeats.
Status CheckHeartbeatTimeout(std::chrono::milliseconds timeout);
Status CheckCpus(int64_t cpus);             // 0 (detect) .. 1,048,576
Status CheckStateDir(std::string_view dir);  // empty (default) or an absolute path

}  // namespace cairn
