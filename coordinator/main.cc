// cairnd: the cairn coordinator.
#include <cstdio>

#include "common/app.h"
#include "common/log.h"

int main(int argc, char** argv) {
  CLI::App app{"cairnd: the cairn coordinator (job queue, gang scheduler, failure handling)"};
  cairn::StandardFlags flags;
  cairn::AddStandardFlags(app, &flags, "cairnd");
  bool check_config = false;
  app.add_flag("--check-config", check_config,
               "Validate the config, print the effective settings and exit");
  CLI11_PARSE(app, argc, argv);

  auto config = cairn::LoadEffectiveConfig(flags);
  if (!config) return cairn::ReportError("cairnd", config.error());
  if (check_config) {
    std::fputs(cairn::ConfigToYaml(*config).c_str(), stdout);
    return 0;
  }
  std::fputs(app.help().c_str(), stdout);
  return 0;
}
