// cairn inside a SLURM allocation over two nodes, on a real two-node SLURM cluster on this
// machine: slurmctld and munged in the root network namespace, each node's slurmd in a
// network namespace of its own (198.18.0.211 and .212/28 behind a bridge at .209, which
// this test creates) with its own hostname (scripts/slurm/local-cluster with
// CAIRN_SLURM_NODES, tests/slurm_cluster.h). `sbatch -N 2 cairn-agents.sbatch` starts
// cairnd on the first node and one cairn-agent per node (srun), and a 4-rank mpi job of
// the reference program runs to success with two ranks in each namespace (each rank
// records its hostname and address before it starts cairn-fmnist), with the weights of
// the same job run by one mpirun on this host.
//
// Skips without root, the SLURM packages, `ip`, `nsenter` or `unshare`. Everything is
// removed after the test, also after a failure: the cluster (daemons and every job
// process, then its directory), the namespaces, veths and the bridge. Namespaces, veths
// and bridges that a killed run of this test left (named csl<pid>..., pid gone) are
// deleted first. Not beside the other SLURM or network tests (ctest RESOURCE_LOCK).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/io.h"
#include "tests/process_util.h"
#include "tests/slurm_cluster.h"

namespace cairn::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

constexpr const char* kBridgeAddress = "198.18.0.209";
constexpr int kPrefix = 28;  // 198.18.0.208/28: clear of the other tests' 198.18.0.1x

std::string FindTool(const std::string& name) {
  for (const char* d : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) {
    const fs::path p = fs::path(d) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return "";
}

std::string SourceDir() {
  const char* d = std::getenv("CAIRN_SOURCE_DIR");
  return d ? d : ".";
}

class SlurmMultiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = LocalSlurmCluster::Unavailable(); !why.empty()) GTEST_SKIP() << why;
    ip_ = FindTool("ip");
    for (const char* t : {"ip", "nsenter", "unshare"}) {
      if (FindTool(t).empty()) GTEST_SKIP() << "no `" << t << "` command";
    }
    if (auto r = Ip({"netns", "list"}); r.exit_code != 0) {
      GTEST_SKIP() << "`ip netns` is unusable here: " << r.output;
    }
    bin_ = fs::absolute(BinDir()).lexically_normal().string();
    for (const char* b : {"cairn", "cairnd", "cairn-agent", "cairn-rsh", "cairn-fmnist"}) {
      ASSERT_EQ(::access((bin_ + "/" + b).c_str(), X_OK), 0) << "missing " << bin_ << "/" << b;
    }
    // Clients and jobs: only this cluster's SLURM_* settings.
    LocalSlurmCluster::ClearSlurmEnvironment();
    RemoveLeftNetworks();

    // The network: a bridge in the root namespace, one namespace per node behind it.
    auto taken =
        RunCommand({"/bin/sh", "-c", ip_ + " -o -4 addr show | grep -wF " + kBridgeAddress});
    ASSERT_NE(taken.exit_code, 0) << kBridgeAddress << " is already configured (another run of "
                                  << "this test?):\n"
                                  << taken.output;
    const std::string tag = fmt::format("csl{}", ::getpid());  // at most 10 characters
    bridge_ = tag;
    ASSERT_TRUE(IpOk({"link", "add", bridge_, "type", "bridge"}));
    bridge_created_ = true;
    ASSERT_TRUE(
        IpOk({"addr", "add", fmt::format("{}/{}", kBridgeAddress, kPrefix), "dev", bridge_}));
    ASSERT_TRUE(IpOk({"link", "set", bridge_, "up"}));
    std::vector<LocalSlurmCluster::NetnsNode> nodes;
    for (int k = 1; k <= 2; ++k) {
      const std::string ns = fmt::format("{}n{}", tag, k);
      const std::string host_end = fmt::format("{}v{}", tag, k);
      const std::string ns_end = fmt::format("{}p{}", tag, k);
      const std::string addr = fmt::format("198.18.0.21{}", k);
      ASSERT_TRUE(IpOk({"netns", "add", ns}));
      netns_.push_back(ns);
      ASSERT_TRUE(IpOk({"link", "add", host_end, "type", "veth", "peer", "name", ns_end}));
      veths_.push_back(host_end);
      ASSERT_TRUE(IpOk({"link", "set", ns_end, "netns", ns}));
      ASSERT_TRUE(IpOk({"-n", ns, "link", "set", ns_end, "name", "eth0"}));
      ASSERT_TRUE(
          IpOk({"-n", ns, "addr", "add", fmt::format("{}/{}", addr, kPrefix), "dev", "eth0"}));
      ASSERT_TRUE(IpOk({"-n", ns, "link", "set", "eth0", "up"}));
      ASSERT_TRUE(IpOk({"-n", ns, "link", "set", "lo", "up"}));
      ASSERT_TRUE(IpOk({"link", "set", host_end, "master", bridge_}));
      ASSERT_TRUE(IpOk({"link", "set", host_end, "up"}));
      nodes.push_back({fmt::format("node{}", k), addr, ns});
    }

    cluster_ = std::make_unique<LocalSlurmCluster>();
    cluster_->SetNetnsNodes(kBridgeAddress, nodes);
    auto start = cluster_->Start();
    ASSERT_EQ(start.exit_code, 0) << "local-cluster start failed:\n" << start.output;
    ::setenv("SLURM_CONF", cluster_->conf().c_str(), 1);

    dir_ = fs::temp_directory_path() / ("cairn_slurm_mn_" + io::RandomSuffix());
    fs::create_directories(dir_);
  }

  void TearDown() override {
    // 1. The cluster: every job, the daemons, every job process; then its directory.
    if (cluster_) {
      auto r = cluster_->Stop();
      EXPECT_EQ(r.exit_code, 0) << r.output;
      cluster_.reset();
    }
    // 2. The network: veths (deleting one end deletes the pair), namespaces, bridge.
    for (const auto& v : veths_) {
      if (Ip({"link", "show", v}).exit_code == 0) {
        EXPECT_TRUE(IpOk({"link", "del", v}));
      }
    }
    for (const auto& ns : netns_) EXPECT_TRUE(IpOk({"netns", "del", ns}));
    if (bridge_created_) {
      EXPECT_TRUE(IpOk({"link", "del", bridge_}));
    }
    for (const auto& ns : netns_) {
      EXPECT_FALSE(fs::exists("/run/netns/" + ns)) << "namespace " << ns << " left";
    }
    if (!dir_.empty()) {
      std::error_code ec;
      if (HasFailure()) {
        std::fprintf(stderr, "kept %s for inspection\n", dir_.c_str());
      } else {
        fs::remove_all(dir_, ec);
      }
    }
  }

  CommandResult Ip(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {ip_};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, {}, seconds(20));
  }
  bool IpOk(const std::vector<std::string>& args) {
    auto r = Ip(args);
    if (r.exit_code != 0) {
      std::string cmd = "ip";
      for (const auto& a : args) cmd += " " + a;
      ADD_FAILURE() << cmd << ": " << r.output;
    }
    return r.exit_code == 0;
  }

  // Namespaces and links named csl<pid>... whose test process is gone.
  void RemoveLeftNetworks() {
    const std::regex re(R"(csl(\d+)(?:[nvp]\d)?)");
    auto gone = [&](const std::string& name) {
      std::smatch m;
      if (!std::regex_match(name, m, re)) return false;
      const long pid = std::stol(m[1]);
      return pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
    };
    std::error_code ec;
    int seen = 0;
    for (const auto& e : fs::directory_iterator("/run/netns", ec)) {
      if (++seen > 1000) break;
      const std::string name = e.path().filename().string();
      if (gone(name)) Ip({"netns", "del", name});
    }
    std::istringstream links(Ip({"-o", "link", "show"}).output);
    std::string line;
    for (int i = 0; i < 10000 && std::getline(links, line); ++i) {
      // "12: cslNNNv1@if11: <...>": the name, without @peer.
      std::smatch m;
      if (!std::regex_search(line, m, std::regex(R"(^\d+: ([^:@]+))"))) continue;
      if (gone(m[1])) Ip({"link", "del", m[1]});
    }
  }

  CommandResult Slurm(const std::string& tool, std::vector<std::string> args,
                      const std::map<std::string, std::string>& extra = {}) {
    args.insert(args.begin(), FindTool(tool));
    auto env = cluster_->Env();
    env.insert(extra.begin(), extra.end());
    return RunCommand(args, env, seconds(30));
  }

  std::string JobState(const std::string& id, std::string* raw) {
    auto r = Slurm("scontrol", {"show", "job", id});
    *raw = r.output;
    std::smatch m;
    if (std::regex_search(r.output, m, std::regex(R"(JobState=(\S+))"))) return m[1];
    return "";
  }

  std::string ip_, bin_, bridge_;
  bool bridge_created_ = false;
  std::vector<std::string> netns_, veths_;
  std::unique_ptr<LocalSlurmCluster> cluster_;
  fs::path dir_;
};

TEST_F(SlurmMultiNodeTest, AgentsOnTwoNodesRunAFourRankJobAcrossBoth) {
  // Two nodes, each its own namespace and hostname.
  auto hosts = Slurm("srun", {"-N2", "-n2", "/bin/sh", "-c", "echo $(hostname) $(hostname -I)"});
  ASSERT_EQ(hosts.exit_code, 0) << hosts.output;
  EXPECT_NE(hosts.output.find("node1 198.18.0.211"), std::string::npos) << hosts.output;
  EXPECT_NE(hosts.output.find("node2 198.18.0.212"), std::string::npos) << hosts.output;

  const fs::path run = dir_ / "run";
  const std::string key = (dir_ / "master.key").string();
  auto kg = RunCommand({bin_ + "/cairn", "ckpt", "keygen", "--out", key});
  ASSERT_EQ(kg.exit_code, 0) << kg.output;
  const fs::path ranks = dir_ / "ranks.txt";
  // Each rank appends "<rank> <hostname> <address>" and becomes cairn-fmnist.
  const std::string rank_cmd = "echo \"$OMPI_COMM_WORLD_RANK $(hostname) $(hostname -I)\" >> '" +
                               ranks.string() + "' && exec '" + bin_ + "/cairn-fmnist' \"$@\"";
  const std::vector<std::string> submit = {"--name",
                                           "fmnist",
                                           "--ranks",
                                           "4",
                                           "--launcher",
                                           "mpi",
                                           "--",
                                           "/bin/bash",
                                           "-c",
                                           rank_cmd,
                                           "cairn-fmnist",
                                           "--steps",
                                           "300",
                                           "--ckpt-every",
                                           "100",
                                           "--ckpt-dir",
                                           (run / "ckpt").string(),
                                           "--key-file",
                                           key};
  std::vector<std::string> args = {"--parsable", "-N", "2",
                                   "--output=" + (dir_ / "job.out").string(),
                                   SourceDir() + "/scripts/slurm/cairn-agents.sbatch"};
  args.insert(args.end(), submit.begin(), submit.end());
  auto sb = Slurm(
      "sbatch", args,
      {{"CAIRN_BIN_DIR", bin_}, {"CAIRN_RUN_DIR", run.string()}, {"CAIRN_WAIT_TIMEOUT", "420"}});
  ASSERT_EQ(sb.exit_code, 0) << sb.output;
  const std::string id = sb.output.substr(0, sb.output.find_first_of(";\n"));

  std::string state, raw;
  const auto deadline = std::chrono::steady_clock::now() + seconds(480);
  static const std::set<std::string> kFinal = {"COMPLETED", "FAILED",        "CANCELLED", "TIMEOUT",
                                               "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"};
  while (std::chrono::steady_clock::now() < deadline) {
    state = JobState(id, &raw);
    if (kFinal.contains(state)) break;
    std::this_thread::sleep_for(seconds(1));
  }
  const std::string log = ReadFile(dir_ / "job.out");
  const std::string ranks_seen = ReadFile(ranks);
  ASSERT_EQ(state, "COMPLETED") << raw << log << ReadFile(run / "agents.log")
                                << ReadFile(run / "cairnd.log") << ranks_seen;
  std::printf("--- the batch job's output\n%s--- ranks (rank hostname address)\n%s", log.c_str(),
              ranks_seen.c_str());
  EXPECT_NE(raw.find("ExitCode=0:0"), std::string::npos) << raw;
  EXPECT_NE(raw.find("NodeList=node[1-2]"), std::string::npos) << raw;
  EXPECT_NE(log.find("2 agent(s) alive"), std::string::npos) << log;
  EXPECT_NE(log.find("agent-node1"), std::string::npos) << log;
  EXPECT_NE(log.find("agent-node2"), std::string::npos) << log;
  EXPECT_NE(log.find("SUCCEEDED: succeeded at step 300"), std::string::npos) << log;
  EXPECT_EQ(OutputValue(log, "weights_sha256").size(), 64u) << log;
  EXPECT_NE(log.find("stopping the agents"), std::string::npos) << log;

  // Every rank started once (one attempt), two in each node's namespace.
  std::map<std::string, std::set<std::string>> by_host;
  std::istringstream in(ranks_seen);
  std::string rank, host, addr;
  int lines = 0;
  while (in >> rank >> host >> addr) {
    ++lines;
    by_host[host + " " + addr].insert(rank);
  }
  EXPECT_EQ(lines, 4) << ranks_seen;
  EXPECT_EQ(by_host["node1 198.18.0.211"].size(), 2u) << ranks_seen;
  EXPECT_EQ(by_host["node2 198.18.0.212"].size(), 2u) << ranks_seen;
  std::set<std::string> all;
  for (const auto& [h, r] : by_host) all.insert(r.begin(), r.end());
  EXPECT_EQ(all, (std::set<std::string>{"0", "1", "2", "3"})) << ranks_seen;

  // The same weights as 4 ranks of one mpirun on this host (the allreduce across the
  // namespaces changes nothing).
  std::vector<std::string> ref = {CAIRN_TEST_MPIEXEC,
                                  "-np",
                                  "4",
                                  "--oversubscribe",
                                  "--allow-run-as-root",
                                  bin_ + "/cairn-fmnist",
                                  "--steps",
                                  "300",
                                  "--ckpt-every",
                                  "100",
                                  "--ckpt-dir",
                                  (dir_ / "reference").string(),
                                  "--key-file",
                                  key};
  auto r = RunCommand(ref, {}, seconds(300));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(OutputValue(log, "weights_sha256"), OutputValue(r.output, "weights_sha256"))
      << log << r.output;
}

}  // namespace
}  // namespace cairn::testing
