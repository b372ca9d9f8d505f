#include <cstdio>

#include "cli/commands.h"
#include "coordinator/client.h"

namespace cairn::cli {

void RegisterConfigCommands(CLI::App& app, Context* ctx) {
  auto* config = app.add_subcommand("config", "Inspect cairn configuration");
  config->require_subcommand(1);
  auto* show = config->add_subcommand(
      "show",
      "Validate the config file (--config, else $CAIRN_CONFIG) and print the effective "
      "settings, the state directory resolved");
  show->callback([ctx] {
    Config effective = ctx->config;
    effective.state_dir = coord::DefaultStateDir("");
    const std::string path = ConfigFilePath(*ctx->flags);
    std::printf("# config file: %s\n",
                path.empty() ? "none (built-in defaults; see --config, CAIRN_CONFIG)"
                             : path.c_str());
    std::fputs(ConfigToYaml(effective).c_str(), stdout);
  });
}

}  // namespace cairn::cli
