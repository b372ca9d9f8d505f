#include <cstdio>

#include "cli/commands.h"

namespace cairn::cli {

void RegisterConfigCommands(CLI::App& app, Context* ctx) {
  auto* config = app.add_subcommand("config", "Inspect cairn configuration");
  config->require_subcommand(1);
  auto* show = config->add_subcommand(
      "show", "Validate the config given by --config and print the effective settings");
  show->callback([ctx] {
    auto c = LoadEffectiveConfig(*ctx->flags);
    if (!c) {
      ctx->exit_code = ReportError("cairn", c.error());
      return;
    }
    std::fputs(ConfigToYaml(*c).c_str(), stdout);
  });
}

}  // namespace cairn::cli
