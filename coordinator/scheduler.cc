#include "coordinator/scheduler.h"

#include <algorithm>
#include <bit>
#include <climits>

namespace cairn::coord {
namespace {

uint64_t FullMask(int gpus) { return gpus >= 64 ? ~uint64_t{0} : (uint64_t{1} << gpus) - 1; }

bool SameRequest(const JobRequest& a, const JobRequest& b) {
  return a.user == b.user && a.priority == b.priority && a.ranks == b.ranks &&
         a.cpus_per_rank == b.cpus_per_rank && a.memory_mb_per_rank == b.memory_mb_per_rank &&
         a.gpus_per_rank == b.gpus_per_rank && a.nodes == b.nodes &&
         a.ranks_per_node == b.ranks_per_node;
}

// Ranks per node the job demands (0: any).
int RanksPerNode(const JobRequest& j) {
  if (j.ranks_per_node > 0) return j.ranks_per_node;
  if (j.nodes > 0) return j.ranks / j.nodes;
  return 0;
}

}  // namespace

Status Scheduler::AddNode(const NodeCapacity& cap) {
  if (cap.id.empty()) return MakeError(Code::kInvalidArgument, "node id is empty");
  if (cap.cpus < 0 || cap.memory_mb < 0 || cap.gpus < 0 || cap.gpus > 64) {
    return MakeError(Code::kInvalidArgument,
                     "node {}: cpus {}, memory {} MiB, gpus {} (0..64) are not valid", cap.id,
                     cap.cpus, cap.memory_mb, cap.gpus);
  }
  if (auto it = node_index_.find(cap.id); it != node_index_.end()) {
    Node& n = nodes_[it->second];
    if (n.allocations > 0) {
      return MakeError(Code::kFailedPrecondition,
                       "node {} has ranks placed on it; its capacity cannot change now", cap.id);
    }
    n.cap = cap;
    n.cpus_free = cap.cpus;
    n.mem_free = cap.memory_mb;
    n.gpu_free_mask = FullMask(cap.gpus);
    return OkStatus();
  }
  Node n;
  n.cap = cap;
  n.cpus_free = cap.cpus;
  n.mem_free = cap.memory_mb;
  n.gpu_free_mask = FullMask(cap.gpus);
  node_index_[cap.id] = nodes_.size();
  nodes_.push_back(std::move(n));
  return OkStatus();
}

Status Scheduler::RemoveNode(const std::string& id) {
  auto it = node_index_.find(id);
  if (it == node_index_.end()) return MakeError(Code::kNotFound, "no node {}", id);
  if (nodes_[it->second].allocations > 0) {
    return MakeError(Code::kFailedPrecondition,
                     "node {} still has ranks placed on it; release their jobs first", id);
  }
  nodes_.erase(nodes_.begin() + static_cast<std::ptrdiff_t>(it->second));
  node_index_.clear();
  for (std::size_t i = 0; i < nodes_.size(); ++i) node_index_[nodes_[i].cap.id] = i;
  return OkStatus();
}

Status Scheduler::SetSchedulable(const std::string& id, bool schedulable) {
  auto it = node_index_.find(id);
  if (it == node_index_.end()) return MakeError(Code::kNotFound, "no node {}", id);
  nodes_[it->second].schedulable = schedulable;
  return OkStatus();
}

void Scheduler::SetUserLimit(const std::string& user, UserLimit limit) { limits_[user] = limit; }

int Scheduler::Fit(const Node& n, const JobRequest& j, bool whole) {
  if (!whole && !n.schedulable) return 0;
  const int cpus = whole ? n.cap.cpus : n.cpus_free;
  const int64_t mem = whole ? n.cap.memory_mb : n.mem_free;
  const int gpus = whole ? n.cap.gpus : std::popcount(n.gpu_free_mask);
  // Uncapped (how many ranks of this shape the node could take), so that best fit can
  // tell a nearly full node from an empty one.
  int64_t fit = INT_MAX;
  if (j.cpus_per_rank > 0) fit = std::min<int64_t>(fit, cpus / j.cpus_per_rank);
  if (j.memory_mb_per_rank > 0) fit = std::min<int64_t>(fit, mem / j.memory_mb_per_rank);
  if (j.gpus_per_rank > 0) fit = std::min<int64_t>(fit, gpus / j.gpus_per_rank);
  return static_cast<int>(fit);
}

std::vector<std::pair<Scheduler::Node*, int>> Scheduler::Choose(const JobRequest& j, bool whole) {
  std::vector<std::pair<Node*, int>> plan;
  scratch_.clear();
  const int rpn = RanksPerNode(j);
  if (rpn > 0) {
    const std::size_t need = static_cast<std::size_t>(j.ranks / rpn);
    for (Node& n : nodes_) {
      const int f = Fit(n, j, whole);
      if (f >= rpn) scratch_.emplace_back(f, &n);
    }
    if (scratch_.size() < need) return plan;
    // Best fit: the nodes with the least room that still hold rpn ranks.
    auto by_fit = [](const std::pair<int, Node*>& a, const std::pair<int, Node*>& b) {
      return a.first != b.first ? a.first < b.first : a.second < b.second;
    };
    std::nth_element(scratch_.begin(), scratch_.begin() + static_cast<std::ptrdiff_t>(need - 1),
                     scratch_.end(), by_fit);
    scratch_.resize(need);
    std::sort(scratch_.begin(), scratch_.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    for (const auto& [f, n] : scratch_) plan.emplace_back(n, rpn);
    return plan;
  }
  // Any layout: one node if one can hold the whole gang (the fullest such node), else
  // the nodes that hold the most ranks first.
  int64_t total = 0;
  std::pair<int, Node*> single{INT_MAX, nullptr};
  for (Node& n : nodes_) {
    const int f = Fit(n, j, whole);
    if (f <= 0) continue;
    total += std::min(f, j.ranks);
    scratch_.emplace_back(f, &n);
    if (f >= j.ranks && f < single.first) single = {f, &n};
  }
  if (single.second != nullptr) {
    plan.emplace_back(single.second, j.ranks);
    return plan;
  }
  if (total < j.ranks) return plan;
  std::sort(scratch_.begin(), scratch_.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  int left = j.ranks;
  for (const auto& [f, n] : scratch_) {
    const int take = std::min(f, left);
    plan.emplace_back(n, take);
    left -= take;
    if (left == 0) break;
  }
  return plan;
}

Status Scheduler::Feasible(const JobRequest& j) {
  if (nodes_.empty()) return OkStatus();  // the cluster is still starting: queue it
  if (!Choose(j, /*whole=*/true).empty()) return OkStatus();
  int max_cpus = 0, max_gpus = 0;
  int64_t max_mem = 0, total_gpus = 0, total_cpus = 0;
  for (const Node& n : nodes_) {
    max_cpus = std::max(max_cpus, n.cap.cpus);
    max_gpus = std::max(max_gpus, n.cap.gpus);
    max_mem = std::max(max_mem, n.cap.memory_mb);
    total_gpus += n.cap.gpus;
    total_cpus += n.cap.cpus;
  }
  const std::string what = fmt::format("job {} can never run on this cluster", j.job_id);
  if (j.gpus_per_rank > max_gpus) {
    return MakeError(Code::kInvalidArgument, "{}: it asks {} GPUs per rank, the largest node has {}",
                     what, j.gpus_per_rank, max_gpus);
  }
  if (j.cpus_per_rank > max_cpus) {
    return MakeError(Code::kInvalidArgument, "{}: it asks {} CPUs per rank, the largest node has {}",
                     what, j.cpus_per_rank, max_cpus);
  }
  if (j.memory_mb_per_rank > max_mem) {
    return MakeError(Code::kInvalidArgument,
                     "{}: it asks {} MiB per rank, the largest node has {} MiB", what,
                     j.memory_mb_per_rank, max_mem);
  }
  if (int64_t{j.gpus_per_rank} * j.ranks > total_gpus) {
    return MakeError(Code::kInvalidArgument, "{}: it asks {} GPUs in total, the cluster has {}",
                     what, int64_t{j.gpus_per_rank} * j.ranks, total_gpus);
  }
  if (int64_t{j.cpus_per_rank} * j.ranks > total_cpus) {
    return MakeError(Code::kInvalidArgument, "{}: it asks {} CPUs in total, the cluster has {}",
                     what, int64_t{j.cpus_per_rank} * j.ranks, total_cpus);
  }
  if (const int rpn = RanksPerNode(j); rpn > 0) {
    return MakeError(Code::kInvalidArgument,
                     "{}: it needs {} nodes that each hold {} ranks ({} CPUs, {} GPUs, {} MiB "
                     "each); fewer nodes are that large",
                     what, j.ranks / rpn, rpn, j.cpus_per_rank, j.gpus_per_rank,
                     j.memory_mb_per_rank);
  }
  return MakeError(Code::kInvalidArgument, "{}: the nodes cannot hold {} ranks of {} CPUs, {} "
                   "GPUs, {} MiB",
                   what, j.ranks, j.cpus_per_rank, j.gpus_per_rank, j.memory_mb_per_rank);
}

bool Scheduler::WithinUserLimit(const JobRequest& j) const {
  auto lim = limits_.find(j.user);
  if (lim == limits_.end()) return true;
  auto use = user_usage_.find(j.user);
  const int cpus = use == user_usage_.end() ? 0 : use->second.first;
  const int gpus = use == user_usage_.end() ? 0 : use->second.second;
  if (lim->second.max_cpus > 0 && cpus + j.cpus_per_rank * j.ranks > lim->second.max_cpus) {
    return false;
  }
  if (lim->second.max_gpus > 0 && gpus + j.gpus_per_rank * j.ranks > lim->second.max_gpus) {
    return false;
  }
  return true;
}

Status Scheduler::Submit(const JobRequest& j) {
  if (auto q = queue_.find(j.job_id); q != queue_.end()) {
    if (SameRequest(q->second.job, j)) return OkStatus();
    return MakeError(Code::kInvalidArgument, "job {} was already submitted with other settings",
                     j.job_id);
  }
  if (auto p = placed_.find(j.job_id); p != placed_.end()) {
    if (SameRequest(p->second.job, j)) return OkStatus();
    return MakeError(Code::kInvalidArgument, "job {} was already submitted with other settings",
                     j.job_id);
  }
  CAIRN_RETURN_IF_ERROR(Check(j));
  const uint64_t seq = next_seq_++;
  queue_[j.job_id] = Queued{j, seq};
  order_[{-j.priority, seq}] = j.job_id;
  return OkStatus();
}

Status Scheduler::Check(const JobRequest& j) {
  if (j.job_id.empty()) return MakeError(Code::kInvalidArgument, "job id is empty");
  if (j.ranks < 1) return MakeError(Code::kInvalidArgument, "job {}: ranks must be >= 1", j.job_id);
  if (j.cpus_per_rank < 0 || j.gpus_per_rank < 0 || j.memory_mb_per_rank < 0 || j.nodes < 0 ||
      j.ranks_per_node < 0) {
    return MakeError(Code::kInvalidArgument, "job {}: negative resource request", j.job_id);
  }
  if (j.ranks_per_node > 0 && j.ranks % j.ranks_per_node != 0) {
    return MakeError(Code::kInvalidArgument,
                     "job {}: ranks {} is not a multiple of ranks_per_node {}", j.job_id,
                     j.ranks, j.ranks_per_node);
  }
  if (j.nodes > 0 && j.ranks % j.nodes != 0) {
    return MakeError(Code::kInvalidArgument, "job {}: ranks {} cannot be spread evenly over {} nodes",
                     j.job_id, j.ranks, j.nodes);
  }
  if (j.nodes > 0 && j.ranks_per_node > 0 && j.nodes * j.ranks_per_node != j.ranks) {
    return MakeError(Code::kInvalidArgument,
                     "job {}: nodes {} x ranks_per_node {} is not ranks {}", j.job_id, j.nodes,
                     j.ranks_per_node, j.ranks);
  }
  if (auto lim = limits_.find(j.user); lim != limits_.end()) {
    const auto& l = lim->second;
    if (l.max_cpus > 0 && j.cpus_per_rank * j.ranks > l.max_cpus) {
      return MakeError(Code::kInvalidArgument, "job {}: asks {} CPUs, user {} may use at most {}",
                       j.job_id, j.cpus_per_rank * j.ranks, j.user, l.max_cpus);
    }
    if (l.max_gpus > 0 && j.gpus_per_rank * j.ranks > l.max_gpus) {
      return MakeError(Code::kInvalidArgument, "job {}: asks {} GPUs, user {} may use at most {}",
                       j.job_id, j.gpus_per_rank * j.ranks, j.user, l.max_gpus);
    }
  }
  return Feasible(j);
}

void Scheduler::Dequeue(const std::string& job_id) {
  auto it = queue_.find(job_id);
  if (it == queue_.end()) return;
  order_.erase({-it->second.job.priority, it->second.seq});
  queue_.erase(it);
}

Placement Scheduler::Allocate(const JobRequest& j, const std::vector<std::pair<Node*, int>>& plan) {
  Placement p;
  p.job_id = j.job_id;
  p.ranks.reserve(static_cast<std::size_t>(j.ranks));
  int rank = 0;
  for (const auto& [n, k] : plan) {
    for (int i = 0; i < k; ++i) {
      RankPlacement rp;
      rp.rank = rank++;
      rp.node_id = n->cap.id;
      n->cpus_free -= j.cpus_per_rank;
      n->mem_free -= j.memory_mb_per_rank;
      for (int g = 0; g < j.gpus_per_rank; ++g) {
        const int idx = std::countr_zero(n->gpu_free_mask);
        n->gpu_free_mask &= ~(uint64_t{1} << idx);
        rp.gpus.push_back(idx);
      }
      ++n->allocations;
      p.ranks.push_back(std::move(rp));
    }
  }
  auto& use = user_usage_[j.user];
  use.first += j.cpus_per_rank * j.ranks;
  use.second += j.gpus_per_rank * j.ranks;
  return p;
}

std::vector<Placement> Scheduler::Schedule() {
  std::vector<Placement> out;
  for (auto it = order_.begin(); it != order_.end();) {
    const Queued& q = queue_.at(it->second);
    if (!WithinUserLimit(q.job)) {
      ++it;  // held by its user's limit only: not a blocker for others
      continue;
    }
    auto plan = Choose(q.job, /*whole=*/false);
    if (plan.empty()) break;  // no backfill: the head of the queue waits for room
    Placement p = Allocate(q.job, plan);
    placed_[q.job.job_id] = Held{q.job, p};
    out.push_back(std::move(p));
    queue_.erase(it->second);
    it = order_.erase(it);
  }
  return out;
}

void Scheduler::Release(const std::string& job_id) {
  auto it = placed_.find(job_id);
  if (it == placed_.end()) return;
  const JobRequest& j = it->second.job;
  for (const RankPlacement& rp : it->second.placement.ranks) {
    auto ni = node_index_.find(rp.node_id);
    if (ni == node_index_.end()) continue;
    Node& n = nodes_[ni->second];
    n.cpus_free += j.cpus_per_rank;
    n.mem_free += j.memory_mb_per_rank;
    for (int g : rp.gpus) n.gpu_free_mask |= uint64_t{1} << g;
    --n.allocations;
  }
  auto& use = user_usage_[j.user];
  use.first -= j.cpus_per_rank * j.ranks;
  use.second -= j.gpus_per_rank * j.ranks;
  placed_.erase(it);
}

Status Scheduler::Restore(const JobRequest& j, const Placement& p) {
  if (queue_.contains(j.job_id) || placed_.contains(j.job_id)) {
    return MakeError(Code::kFailedPrecondition, "job {} is already queued or placed", j.job_id);
  }
  if (p.ranks.size() != static_cast<std::size_t>(j.ranks)) {
    return MakeError(Code::kInvalidArgument, "job {}: placement has {} ranks, job has {}",
                     j.job_id, p.ranks.size(), j.ranks);
  }
  // Check everything first, so a refused placement changes nothing.
  std::unordered_map<std::size_t, std::pair<int, uint64_t>> need;  // node -> cpus, gpu mask
  for (const RankPlacement& rp : p.ranks) {
    auto ni = node_index_.find(rp.node_id);
    if (ni == node_index_.end()) {
      return MakeError(Code::kFailedPrecondition, "job {}: rank {} is on unknown node {}",
                       j.job_id, rp.rank, rp.node_id);
    }
    auto& [cpus, mask] = need[ni->second];
    cpus += j.cpus_per_rank;
    for (int g : rp.gpus) {
      if (g < 0 || g >= 64 || (mask & (uint64_t{1} << g)) != 0) {
        return MakeError(Code::kInvalidArgument, "job {}: GPU {} of node {} given twice", j.job_id,
                         g, rp.node_id);
      }
      mask |= uint64_t{1} << g;
    }
  }
  for (const auto& [idx, use] : need) {
    const Node& n = nodes_[idx];
    if (n.cpus_free < use.first || (n.gpu_free_mask & use.second) != use.second) {
      return MakeError(Code::kFailedPrecondition, "job {}: node {} has no room for its ranks",
                       j.job_id, n.cap.id);
    }
  }
  for (const RankPlacement& rp : p.ranks) {
    Node& n = nodes_[node_index_.at(rp.node_id)];
    n.cpus_free -= j.cpus_per_rank;
    n.mem_free -= j.memory_mb_per_rank;
    for (int g : rp.gpus) n.gpu_free_mask &= ~(uint64_t{1} << g);
    ++n.allocations;
  }
  auto& use = user_usage_[j.user];
  use.first += j.cpus_per_rank * j.ranks;
  use.second += j.gpus_per_rank * j.ranks;
  placed_[j.job_id] = Held{j, p};
  return OkStatus();
}

std::vector<NodeUsage> Scheduler::Nodes() const {
  std::vector<NodeUsage> out;
  out.reserve(nodes_.size());
  for (const Node& n : nodes_) {
    out.push_back({n.cap.id, n.cpus_free, n.cap.cpus, n.mem_free, n.cap.memory_mb,
                   std::popcount(n.gpu_free_mask), n.cap.gpus, n.schedulable});
  }
  return out;
}

}  // namespace cairn::coord
