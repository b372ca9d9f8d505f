// Per-component loggers.
//
// Promise: `Logger("checkpoint")` returns the same spdlog logger for a component name
// everywhere in the process; all loggers write to stderr with one pattern and share one
// level, set once from the binaries' `--log-level` flag (trace, debug, info, warn,
// error, critical, off). An unknown level name is an kInvalidArgument error.
//
// Threading: thread-safe (spdlog's registry and _mt sinks).
#pragma once

#include <memory>
#include <string_view>

#include <spdlog/spdlog.h>

#include "common/status.h"

namespace cairn::log {

std::shared_ptr<spdlog::logger> Logger(std::string_view component);

// Parses a level name; the error lists the valid names.
Result<spdlog::level::level_enum> ParseLevel(std::string_view name);

// Sets the level of every existing and future cairn logger.
Status SetLevel(std::string_view name);

}  // namespace cairn::log
