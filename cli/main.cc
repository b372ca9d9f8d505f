// cairn: the command-line interface.
#include <cstdio>

#include "cli/commands.h"
#include "common/app.h"

int main(int argc, char** argv) {
  CLI::App app{"cairn: distributed training orchestrator"};
  app.require_subcommand(1);
  cairn::StandardFlags flags;
  cairn::AddStandardFlags(app, &flags, "cairn");
  cairn::cli::Context ctx{&flags, 0};
  cairn::cli::RegisterConfigCommands(app, &ctx);
  cairn::cli::RegisterCheckpointCommands(app, &ctx);
  CLI11_PARSE(app, argc, argv);
  return ctx.exit_code;
}
