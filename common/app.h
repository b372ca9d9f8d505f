// Flags every cairn binary shares: --version (prints "<program> <git describe>" and
// exits 0), --log-level, --config. Binaries call AddStandardFlags before parsing, then
// LoadEffectiveConfig for the typed Config, then put their own flags over it (flag over
// config file over default, see common/config.h).
//
// Threading: call from main() only.
#pragma once

#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "common/config.h"
#include "common/status.h"

namespace cairn {

struct StandardFlags {
  std::string log_level;    // empty: from config (default info)
  std::string config_path;  // empty: $CAIRN_CONFIG, else built-in defaults
};

std::string_view Version();

void AddStandardFlags(CLI::App& app, StandardFlags* flags, std::string_view program);

// The config file a binary reads: --config, else $CAIRN_CONFIG (when not empty), else ""
// (none: built-in defaults).
std::string ConfigFilePath(const StandardFlags& flags);

// Loads the config file (ConfigFilePath; a named file that is missing is an error),
// applies --log-level over it and sets the log level.
Result<Config> LoadEffectiveConfig(const StandardFlags& flags);

// Prints "<program>: error: <message>" to stderr and returns the exit code for it
// (2 for kInvalidArgument, 1 otherwise).
int ReportError(std::string_view program, const Error& error);

}  // namespace cairn
