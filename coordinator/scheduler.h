// Gang scheduler: a priority queue of jobs and all-or-nothing placement of their ranks
// on nodes with {cpus, memory, gpus}.
//
// Promise: a job is placed whole (every rank on a node with room for it, concrete GPU
// indices assigned) or not at all: no partial allocation ever exists, so gangs cannot
// deadlock each other. Schedule() considers queued jobs by priority (higher first), then
// submission order, and stops at the first job that does not fit (no backfill: a large
// gang is never starved by a stream of small ones); a job held back only by its user's
// limit is passed over, not a blocker. A request no cluster state could satisfy (more
// GPUs per rank than any node has, more in total than the cluster has, a node layout no
// set of nodes offers, more than the user's limit) is rejected at Submit with an error
// naming the unmet need, never queued forever (with no node known yet, the cluster is
// still starting and the job is queued). Allocations are exact: used + free =
// capacity on every node at all times, and a GPU index belongs to at most one rank.
//
// Placement: with ranks_per_node (or nodes, which fixes ranks_per_node = ranks / nodes),
// the job takes that many nodes that each fit ranks_per_node ranks, preferring the
// fullest such nodes (best fit, against fragmentation); without either, ranks are packed
// onto the nodes that fit the most of them, so a job spans as few nodes as possible.
// Cost O(nodes) per placement attempt, plus O(k log k) for the k nodes used.
//
// Threading: single-threaded; owned by the coordinator's io_context.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace cairn::coord {

struct NodeCapacity {
  std::string id;
  int cpus = 0;
  int64_t memory_mb = 0;
  int gpus = 0;  // at most 64
};

struct JobRequest {
  std::string job_id;
  std::string user;
  int priority = 0;
  int ranks = 1;
  int cpus_per_rank = 1;
  int64_t memory_mb_per_rank = 0;
  int gpus_per_rank = 0;
  int nodes = 0;           // 0: any
  int ranks_per_node = 0;  // 0: any
};

struct RankPlacement {
  int rank = 0;
  std::string node_id;
  std::vector<int> gpus;  // concrete indices on that node (CUDA_VISIBLE_DEVICES)
};

struct Placement {
  std::string job_id;
  std::vector<RankPlacement> ranks;  // in rank order; ranks of one node are contiguous
};

struct UserLimit {
  int max_cpus = 0;  // 0: unlimited
  int max_gpus = 0;
};

struct NodeUsage {
  std::string id;
  int cpus_free = 0, cpus_total = 0;
  int64_t memory_free_mb = 0, memory_total_mb = 0;
  int gpus_free = 0, gpus_total = 0;
  bool schedulable = true;
};

class Scheduler {
 public:
  // Adds a node, or updates the capacity of a known node with no allocation on it.
  Status AddNode(const NodeCapacity& node);
  // Removes a node; its jobs must have been released first (kFailedPrecondition).
  Status RemoveNode(const std::string& id);
  // Unschedulable nodes (lost, quarantined) keep their allocations but get no new ones.
  Status SetSchedulable(const std::string& id, bool schedulable);
  void SetUserLimit(const std::string& user, UserLimit limit);

  // Validates and queues. Idempotent: the same job id again is a no-op if identical.
  Status Submit(const JobRequest& job);
  // The checks of Submit (shape, user limit, can it ever fit), without queueing.
  Status Check(const JobRequest& job);
  std::size_t node_count() const { return nodes_.size(); }
  // Removes a queued job (no-op if it is not queued).
  void Dequeue(const std::string& job_id);
  // Places as many queued jobs as possible (see the promise above) and returns them;
  // their resources stay allocated until Release.
  std::vector<Placement> Schedule();
  // Frees a placed job's resources (no-op if it holds none).
  void Release(const std::string& job_id);
  // Takes back a placement made before a coordinator restart (nodes must be known; the
  // ranks' resources must be free). The job must be neither queued nor placed.
  Status Restore(const JobRequest& job, const Placement& placement);

  std::size_t queued() const { return queue_.size(); }
  bool IsPlaced(const std::string& job_id) const { return placed_.contains(job_id); }
  std::vector<NodeUsage> Nodes() const;

 private:
  struct Node {
    NodeCapacity cap;
    int cpus_free = 0;
    int64_t mem_free = 0;
    uint64_t gpu_free_mask = 0;  // bit i set: GPU i free
    bool schedulable = true;
    int allocations = 0;
  };
  struct Queued {
    JobRequest job;
    uint64_t seq = 0;
  };
  struct Held {
    JobRequest job;
    Placement placement;
  };
  // How many ranks of `job` fit on `n` with its free resources (or its whole capacity).
  static int Fit(const Node& n, const JobRequest& job, bool whole);
  // Chooses nodes and rank counts for `job`; empty if it does not fit.
  std::vector<std::pair<Node*, int>> Choose(const JobRequest& job, bool whole);
  Status Feasible(const JobRequest& job);
  bool WithinUserLimit(const JobRequest& job) const;
  Placement Allocate(const JobRequest& job, const std::vector<std::pair<Node*, int>>& plan);

  std::vector<Node> nodes_;
  std::unordered_map<std::string, std::size_t> node_index_;
  std::map<std::pair<int, uint64_t>, std::string> order_;  // (-priority, seq) -> job id
  std::unordered_map<std::string, Queued> queue_;
  std::unordered_map<std::string, Held> placed_;
  std::unordered_map<std::string, UserLimit> limits_;
  std::unordered_map<std::string, std::pair<int, int>> user_usage_;  // cpus, gpus in use
  uint64_t next_seq_ = 0;
  std::vector<std::pair<int, Node*>> scratch_;  // (fit, node) candidates of one attempt
};

}  // namespace cairn::coord
