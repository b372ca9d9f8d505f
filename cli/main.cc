// cairn: the command-line interface.
#include <cstdio>
#include <string_view>

#include "cli/commands.h"
#include "common/app.h"
#include "coordinator/client.h"

int main(int argc, char** argv) {
  CLI::App app{"cairn: distributed training orchestrator"};
  app.require_subcommand(1);
  cairn::StandardFlags flags;
  cairn::AddStandardFlags(app, &flags, "cairn");
  cairn::cli::Context ctx{&flags, 0, {}};
  // Before any command runs: the config file (--config, else CAIRN_CONFIG), whose errors
  // end every command, and --log-level.
  app.parse_complete_callback([&] {
    auto config = cairn::LoadEffectiveConfig(flags);
    if (!config) throw CLI::RuntimeError(cairn::ReportError("cairn", config.error()));
    ctx.config = std::move(*config);
    cairn::coord::SetConfiguredStateDir(ctx.config.state_dir);
  });
  cairn::cli::RegisterConfigCommands(app, &ctx);
  cairn::cli::RegisterCheckpointCommands(app, &ctx);
  cairn::cli::RegisterJobCommands(app, &ctx);
  cairn::cli::RegisterRunCommands(app, &ctx);
  cairn::cli::RegisterClusterCommands(app, &ctx);
  cairn::cli::RegisterLineageCommands(app, &ctx);

  // Name an unknown command instead of CLI11's generic "A subcommand is required".
  CLI::App* level = &app;
  for (int i = 1; i < argc && level != nullptr; ++i) {
    std::string_view a = argv[i];
    if (a.starts_with("-")) {
      if ((a == "--log-level" || a == "--config") && i + 1 < argc) ++i;
      continue;
    }
    auto subs = level->get_subcommands({});
    if (subs.empty()) break;  // a positional argument of a leaf command
    CLI::App* next = nullptr;
    std::string known;
    for (auto* sub : subs) {
      if (sub->get_name() == a) next = sub;
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (next == nullptr) {
      std::fprintf(stderr, "cairn: error: unknown command '%s' (%s commands: %s)\n", argv[i],
                   level == &app ? "cairn" : level->get_name().c_str(), known.c_str());
      return 2;
    }
    level = next;
  }
  CLI11_PARSE(app, argc, argv);
  return ctx.exit_code;
}
