#include "common/app.h"

#include <cstdio>
#include <cstdlib>

#include "cairn/version.h"
#include "common/log.h"

namespace cairn {

std::string_view Version() { return CAIRN_VERSION; }

void AddStandardFlags(CLI::App& app, StandardFlags* flags, std::string_view program) {
  app.set_version_flag("--version", fmt::format("{} {}", program, Version()));
  app.add_option("--log-level", flags->log_level,
                 "Log level: trace, debug, info, warn, error, critical, off");
  app.add_option("--config", flags->config_path,
                 "cairn config file (YAML, docs/config.md; default $CAIRN_CONFIG, else none)");
}

std::string ConfigFilePath(const StandardFlags& flags) {
  if (!flags.config_path.empty()) return flags.config_path;
  const char* env = std::getenv("CAIRN_CONFIG");
  return env != nullptr ? env : "";
}

Result<Config> LoadEffectiveConfig(const StandardFlags& flags) {
  Config config;
  if (const std::string path = ConfigFilePath(flags); !path.empty()) {
    CAIRN_ASSIGN_OR_RETURN(config, LoadConfig(path));
  }
  if (!flags.log_level.empty()) config.log_level = flags.log_level;
  CAIRN_RETURN_IF_ERROR_CTX(log::SetLevel(config.log_level), "--log-level");
  return config;
}

int ReportError(std::string_view program, const Error& error) {
  std::fflush(stdout);  // keep what a command printed before its error
  std::fprintf(stderr, "%.*s: error: %s\n", static_cast<int>(program.size()), program.data(),
               error.ToString().c_str());
  return error.code() == Code::kInvalidArgument ? 2 : 1;
}

}  // namespace cairn
