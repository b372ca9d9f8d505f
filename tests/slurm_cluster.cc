#include "tests/slurm_cluster.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace cairn::testing {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPrefix = "cairn-slurm-test-";
constexpr int kStartTries = 3;

// Field 22 of /proc/PID/stat (start time in clock ticks since boot); "" if none.
std::string StartTimeOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), {});
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return "";
  std::istringstream rest(stat.substr(paren + 2));
  std::string field;
  for (int i = 3; i <= 22 && (rest >> field); ++i) {
    if (i == 22) return field;
  }
  return "";
}

// True when `dir`'s owner file names a live process with the same start time.
bool OwnerAlive(const fs::path& dir) {
  std::ifstream in(dir / "owner");
  long pid = 0;
  std::string start;
  if (!(in >> pid >> start) || pid <= 0) return false;
  return StartTimeOf(static_cast<pid_t>(pid)) == start;
}

CommandResult RunScript(const std::string& verb, const std::map<std::string, std::string>& env) {
  return RunCommand({LocalClusterScript(), verb}, env, std::chrono::seconds(90));
}

}  // namespace

std::string LocalClusterScript() {
  const char* d = std::getenv("CAIRN_SOURCE_DIR");
  return std::string(d ? d : ".") + "/scripts/slurm/local-cluster";
}

std::vector<int> FreeTcpPorts(int count) {
  // All sockets stay bound until every port is known, so the ports differ.
  std::vector<int> fds, ports;
  for (int i = 0; i < count; ++i) {
    int port = 0;
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_ANY);  // the daemons bind every address
      a.sin_port = 0;
      socklen_t len = sizeof a;
      if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
          ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
        port = ntohs(a.sin_port);
      }
      fds.push_back(fd);
    }
    ports.push_back(port);
  }
  for (int fd : fds) ::close(fd);
  return ports;
}

std::string LocalSlurmCluster::Unavailable() {
  if (::geteuid() != 0) return "needs root (slurmd runs jobs, munged and slurmctld run as root here)";
  for (const char* p : {"/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged",
                        "/usr/bin/sbatch", "/usr/bin/squeue", "/usr/bin/scontrol",
                        "/usr/bin/scancel"}) {
    if (::access(p, X_OK) != 0) {
      return std::string(p) +
             " is not installed (apt-get install slurmctld slurmd slurm-client munge)";
    }
  }
  return "";
}

std::map<std::string, std::string> LocalSlurmCluster::Env() const {
  std::map<std::string, std::string> env = {{"CAIRN_SLURM_DIR", dir_},
                                            {"CAIRN_SLURM_PORT", std::to_string(ctld_port_)},
                                            {"CAIRN_SLURMD_PORT", std::to_string(slurmd_port_)},
                                            {"SLURM_CONF", conf()}};
  if (!nodes_.empty()) {
    std::string spec;
    for (const auto& n : nodes_) {
      spec += (spec.empty() ? "" : " ") + n.name + ":" + n.address + ":" + n.netns;
    }
    env["CAIRN_SLURM_CTLD_ADDR"] = ctld_address_;
    env["CAIRN_SLURM_NODES"] = spec;
  }
  return env;
}

CommandResult LocalSlurmCluster::Ctl(const std::string& verb) const { return RunScript(verb, Env()); }

CommandResult LocalSlurmCluster::Start() {
  const fs::path tmp = fs::temp_directory_path();
  // Clusters of tests that were killed: their owner is gone (bounded by the directory).
  std::error_code ec;
  int seen = 0;
  for (const auto& e : fs::directory_iterator(tmp, ec)) {
    if (++seen > 100000) break;
    const std::string name = e.path().filename().string();
    if (!name.starts_with(kPrefix) || !e.is_directory(ec) || OwnerAlive(e.path())) continue;
    auto r = RunScript("stop", {{"CAIRN_SLURM_DIR", e.path().string()},
                                {"SLURM_CONF", (e.path() / "slurm.conf").string()}});
    if (r.exit_code == 0) {
      fs::remove_all(e.path(), ec);
    } else {
      std::fprintf(stderr, "left cluster %s: %s\n", e.path().c_str(), r.output.c_str());
    }
  }

  std::string templ = (tmp / (std::string(kPrefix) + "XXXXXX")).string();
  if (::mkdtemp(templ.data()) == nullptr) {
    return CommandResult{-1, "mkdtemp " + templ + " failed"};
  }
  dir_ = templ;
  std::ofstream(fs::path(dir_) / "owner") << ::getpid() << " " << StartTimeOf(::getpid()) << "\n";
  CommandResult r;
  for (int attempt = 1; attempt <= kStartTries; ++attempt) {
    const auto ports = FreeTcpPorts(2);
    ctld_port_ = ports[0];
    slurmd_port_ = ports[1];
    if (ctld_port_ == 0 || slurmd_port_ == 0) return CommandResult{-1, "no free TCP port"};
    r = Ctl("start");
    if (r.exit_code == 0 || r.output.find("Address already in use") == std::string::npos) {
      return r;
    }
    std::fprintf(stderr, "local-cluster start: a port was taken (try %d of %d)\n", attempt,
                 kStartTries);
    Stop();
  }
  return r;
}

CommandResult LocalSlurmCluster::Stop() {
  if (dir_.empty()) return CommandResult{0, ""};
  return Ctl("stop");
}

LocalSlurmCluster::~LocalSlurmCluster() {
  if (dir_.empty()) return;
  auto r = Stop();
  if (r.exit_code != 0) {
    // Something still runs there: keep the directory (its logs say what).
    std::fprintf(stderr, "local-cluster stop (%s): %s\n", dir_.c_str(), r.output.c_str());
    return;
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void LocalSlurmCluster::ClearSlurmEnvironment() {
  for (char** e = environ; *e != nullptr;) {
    const std::string kv(*e);
    if (kv.starts_with("SLURM_")) {
      ::unsetenv(kv.substr(0, kv.find('=')).c_str());  // shifts the rest down
    } else {
      ++e;
    }
  }
}

}  // namespace cairn::testing
