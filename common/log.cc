#include "common/log.h"

#include <atomic>
#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace cairn::log {
namespace {

std::atomic<spdlog::level::level_enum> g_level{spdlog::level::info};
std::mutex g_mu;

}  // namespace

std::shared_ptr<spdlog::logger> Logger(std::string_view component) {
  std::string name(component);
  if (auto existing = spdlog::get(name)) return existing;
  std::lock_guard lock(g_mu);
  if (auto existing = spdlog::get(name)) return existing;
  auto logger = spdlog::stderr_color_mt(name);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ [%n] %v");
  logger->set_level(g_level.load());
  return logger;
}

Result<spdlog::level::level_enum> ParseLevel(std::string_view name) {
  static constexpr std::pair<std::string_view, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off}};
  for (const auto& [n, lvl] : kLevels) {
    if (n == name) return lvl;
  }
  return MakeError(Code::kInvalidArgument,
                   "unknown log level '{}' (expected one of trace, debug, info, warn, error, "
                   "critical, off)",
                   name);
}

Status SetLevel(std::string_view name) {
  CAIRN_ASSIGN_OR_RETURN(auto lvl, ParseLevel(name));
  g_level = lvl;
  std::lock_guard lock(g_mu);
  spdlog::apply_all([lvl](const std::shared_ptr<spdlog::logger>& l) { l->set_level(lvl); });
  return OkStatus();
}

}  // namespace cairn::log
