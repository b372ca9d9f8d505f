// cairn-rsh: Open MPI's remote shell under cairn (mpirun --mca plm_rsh_agent cairn-rsh).
//
//   cairn-rsh [ssh-style options] NODE COMMAND...
//
// Instead of logging in to NODE, asks cairnd to have NODE's agent run COMMAND (an Open
// MPI daemon) for the run in CAIRN_RSH_RUN, so the daemon and the ranks under it are
// supervised and stopped by that agent like any rank. mpirun asks a remote shell it does
// not know for a daemon that detaches itself (--daemonize); cairn-rsh drops that flag, so
// the daemon stays a child of its agent. Exits 0 once the order is placed; the daemon
// reports back to mpirun by itself. Needs CAIRN_STATE_DIR and CAIRN_RSH_RUN
// (the agent that runs mpirun sets both).
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/app.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"

int main(int argc, char** argv) {
  using namespace cairn;
  int i = 1;
  while (i < argc && argv[i][0] == '-') ++i;  // ssh options mpirun may add
  if (argc - i < 2) {
    std::fprintf(stderr, "usage: cairn-rsh NODE COMMAND...\n");
    return 2;
  }
  const char* run = std::getenv("CAIRN_RSH_RUN");
  if (run == nullptr || *run == '\0') {
    return ReportError("cairn-rsh", Error(Code::kInvalidArgument,
                                          "CAIRN_RSH_RUN is not set (cairn-rsh is started by "
                                          "mpirun under cairn-agent)"));
  }
  proto::ExecRequest req;
  req.set_run_id(run);
  req.set_node_id(argv[i]);
  std::string cmd;
  for (int k = i + 1; k < argc; ++k) {
    // The command comes as one string (or several words) for a shell; drop --daemonize.
    std::string word = argv[k];
    for (auto pos = word.find("--daemonize"); pos != std::string::npos;
         pos = word.find("--daemonize")) {
      word.erase(pos, std::string_view("--daemonize").size());
    }
    if (!cmd.empty()) cmd += ' ';
    cmd += word;
  }
  req.set_command(cmd);
  auto client = coord::Client::Connect(coord::DefaultStateDir(""), std::string("rsh-") + run);
  if (!client) return ReportError("cairn-rsh", client.error());
  auto r = (*client)->Call("Exec", req.SerializeAsString(), std::chrono::seconds(30));
  if (!r) return ReportError("cairn-rsh", r.error().With(fmt::format("start a daemon on {}", argv[i])));
  return 0;
}
