// A one-node SLURM cluster of a test's own (scripts/slurm/local-cluster: munged, slurmctld,
// slurmd), so that SLURM tests of different build directories can run at the same time.
//
// Promise: Start() makes a fresh directory with mkdtemp (/tmp/cairn-slurm-test-XXXXXX),
// records the owning test process in it (`owner`: pid and start time), picks a free TCP
// port for slurmctld and another for slurmd, and starts the cluster there; if a daemon
// could not bind its port (another process took it between the pick and the start), the
// cluster is stopped and started again on new ports, at most 3 times. Before that it
// stops and removes every cluster directory of that form whose owner is gone (a test
// killed before it could clean up); a directory of a live test is never touched. Stop()
// cancels every job and stops the daemons and every job process (local-cluster stop);
// the destructor stops the cluster and removes its directory, also after a failure.
// No fixed path or port is used, so a cluster someone started by hand (default
// /tmp/cairn-slurm, port 6817) is not touched either.
//
// Several nodes: SetNetnsNodes() before Start() gives the cluster one node per network
// namespace (local-cluster's CAIRN_SLURM_NODES: each slurmd in its namespace, with its
// own hostname, spool, pid file and log); the caller creates and removes the namespaces
// and the network that connects them to slurmctld's address.
//
// Threading: one thread (a test suite's); not copyable.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tests/process_util.h"

namespace cairn::testing {

class LocalSlurmCluster {
 public:
  LocalSlurmCluster() = default;
  ~LocalSlurmCluster();
  LocalSlurmCluster(const LocalSlurmCluster&) = delete;
  LocalSlurmCluster& operator=(const LocalSlurmCluster&) = delete;

  // One node of a multi-node cluster: slurmd `name` at `address` in /run/netns/`netns`.
  struct NetnsNode {
    std::string name, address, netns;
  };
  // Before Start(): the nodes, and slurmctld's address (in the root namespace) that they
  // reach.
  void SetNetnsNodes(std::string ctld_address, std::vector<NetnsNode> nodes) {
    ctld_address_ = std::move(ctld_address);
    nodes_ = std::move(nodes);
  }

  // Why a SLURM cluster cannot run here ("" when it can): not root, or a tool is missing.
  static std::string Unavailable();
  // Unsets every SLURM_* variable of this process, so that clients and jobs see only this
  // cluster's settings (e.g. when the tests themselves run inside a SLURM job).
  static void ClearSlurmEnvironment();

  // Removes what killed earlier tests left, creates the directory, picks the ports and
  // runs `local-cluster start` (the result of the last try).
  CommandResult Start();
  // `local-cluster stop` (safe when stopped or never started).
  CommandResult Stop();
  // `local-cluster VERB` for this cluster.
  CommandResult Ctl(const std::string& verb) const;

  // Empty before Start().
  const std::string& dir() const { return dir_; }
  std::string conf() const { return dir_ + "/slurm.conf"; }
  int ctld_port() const { return ctld_port_; }
  int slurmd_port() const { return slurmd_port_; }
  // CAIRN_SLURM_DIR, CAIRN_SLURM_PORT, CAIRN_SLURMD_PORT and SLURM_CONF of this cluster
  // (and CAIRN_SLURM_CTLD_ADDR, CAIRN_SLURM_NODES with several nodes).
  std::map<std::string, std::string> Env() const;

 private:
  std::string dir_;
  int ctld_port_ = 0;
  int slurmd_port_ = 0;
  std::string ctld_address_;
  std::vector<NetnsNode> nodes_;
};

// The path of scripts/slurm/local-cluster ($CAIRN_SOURCE_DIR, else the working directory).
std::string LocalClusterScript();

// `count` distinct TCP ports that nothing was bound to a moment ago (0 where the kernel
// gave none).
std::vector<int> FreeTcpPorts(int count);

}  // namespace cairn::testing
