// cairn-agent: one per node; registers the node, launches and supervises ranks.
#include <unistd.h>

#include <cstdio>

#include "common/app.h"
#include "common/log.h"

int main(int argc, char** argv) {
  CLI::App app{"cairn-agent: the per-node cairn agent (launches and supervises ranks)"};
  cairn::StandardFlags flags;
  cairn::AddStandardFlags(app, &flags, "cairn-agent");
  bool check_config = false;
  app.add_flag("--check-config", check_config,
               "Validate the config, print the effective settings and detected resources, exit");
  CLI11_PARSE(app, argc, argv);

  auto config = cairn::LoadEffectiveConfig(flags);
  if (!config) return cairn::ReportError("cairn-agent", config.error());
  if (check_config) {
    std::fputs(cairn::ConfigToYaml(*config).c_str(), stdout);
    long cpus = config->agent.cpus > 0 ? config->agent.cpus : ::sysconf(_SC_NPROCESSORS_ONLN);
    unsigned long long mem =
        config->agent.memory_bytes > 0
            ? config->agent.memory_bytes
            : static_cast<unsigned long long>(::sysconf(_SC_PHYS_PAGES)) *
                  static_cast<unsigned long long>(::sysconf(_SC_PAGESIZE));
    std::printf("# detected: cpus=%ld memory_bytes=%llu\n", cpus, mem);
    return 0;
  }
  std::fputs(app.help().c_str(), stdout);
  return 0;
}
