// Flags every cairn binary shares: --version (prints "<program> <git describe>" and
// exits 0), --log-level, --config. Binaries call AddStandardFlags before parsing and
// ApplyStandardFlags after, then LoadEffectiveConfig for the typed Config.
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
  std::string config_path;  // empty: built-in defaults
};

std::string_view Version();

void AddStandardFlags(CLI::App& app, StandardFlags* flags, std::string_view program);

// Loads the config named by --config (or defaults) and applies --log-level over it.
Result<Config> LoadEffectiveConfig(const StandardFlags& flags);

// Prints "<program>: error: <message>" to stderr and returns the exit code for it
// (2 for kInvalidArgument, 1 otherwise).
int ReportError(std::string_view program, const Error& error);

}  // namespace cairn
