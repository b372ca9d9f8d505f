// Subcommands of the `cairn` CLI. Each Register* adds one command group to the app; a
// command's callback stores its exit code in Context::exit_code (0 success, 1 failure,
// 2 bad usage or input) after printing any error as "cairn: error: ...".
#pragma once

#include <CLI/CLI.hpp>

#include "common/app.h"

namespace google::protobuf {
class Message;
}

namespace cairn::cli {

struct Context {
  StandardFlags* flags;
  int exit_code;
  // The effective config (LoadEffectiveConfig), loaded before any command runs; its
  // state_dir is also declared to coord::DefaultStateDir.
  Config config;
};

// A message as indented JSON with the .proto field names (the --json of every command).
std::string ToJson(const google::protobuf::Message& m);

// `cairn config show`
void RegisterConfigCommands(CLI::App& app, Context* ctx);
// `cairn ckpt keygen|ls|verify|inspect|export|import|rekey|gc`
void RegisterCheckpointCommands(CLI::App& app, Context* ctx);
// `cairn submit|status|cancel|nodes`
void RegisterJobCommands(CLI::App& app, Context* ctx);
// `cairn wait|logs|events|resume`
void RegisterRunCommands(CLI::App& app, Context* ctx);
// `cairn up|down` (a local cluster in the background)
void RegisterClusterCommands(CLI::App& app, Context* ctx);
// `cairn lineage JOB [--json]`, `cairn lineage verify JOB`
void RegisterLineageCommands(CLI::App& app, Context* ctx);

}  // namespace cairn::cli
