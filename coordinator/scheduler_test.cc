#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace cairn::coord {
namespace {

JobRequest Job(std::string id, int ranks, int cpus = 1, int gpus = 0) {
  JobRequest j;
  j.job_id = std::move(id);
  j.user = "alice";
  j.ranks = ranks;
  j.cpus_per_rank = cpus;
  j.gpus_per_rank = gpus;
  return j;
}

// Checks the accounting invariants against the placements the test holds.
void CheckInvariants(const Scheduler& s, const std::map<std::string, Placement>& held,
                     const std::map<std::string, JobRequest>& reqs) {
  std::map<std::string, int> cpus;
  std::map<std::string, int> gpus;
  std::set<std::pair<std::string, int>> gpu_owner;
  for (const auto& [id, p] : held) {
    for (const auto& r : p.ranks) {
      cpus[r.node_id] += reqs.at(id).cpus_per_rank;
      gpus[r.node_id] += static_cast<int>(r.gpus.size());
      for (int g : r.gpus) {
        ASSERT_TRUE(gpu_owner.insert({r.node_id, g}).second)
            << "GPU " << g << " of " << r.node_id << " given twice";
      }
    }
  }
  for (const auto& n : s.Nodes()) {
    EXPECT_EQ(n.cpus_total - n.cpus_free, cpus[n.id]) << n.id;
    EXPECT_EQ(n.gpus_total - n.gpus_free, gpus[n.id]) << n.id;
    EXPECT_GE(n.cpus_free, 0);
    EXPECT_GE(n.gpus_free, 0);
  }
}

TEST(Scheduler, PlacesAWholeGangWithConcreteGpus) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 8, 32000, 4}));
  ASSERT_TRUE(s.AddNode({"n2", 8, 32000, 4}));
  ASSERT_TRUE(s.Submit(Job("j1", 6, 1, 1)));
  auto placed = s.Schedule();
  ASSERT_EQ(placed.size(), 1u);
  const auto& p = placed[0];
  ASSERT_EQ(p.ranks.size(), 6u);
  std::set<std::pair<std::string, int>> gpus;
  for (int r = 0; r < 6; ++r) {
    EXPECT_EQ(p.ranks[static_cast<std::size_t>(r)].rank, r);
    ASSERT_EQ(p.ranks[static_cast<std::size_t>(r)].gpus.size(), 1u);
    gpus.insert({p.ranks[static_cast<std::size_t>(r)].node_id, p.ranks[static_cast<std::size_t>(r)].gpus[0]});
  }
  EXPECT_EQ(gpus.size(), 6u);
  // Packed: 4 ranks on one node (GPUs 0..3), 2 on the other (GPUs 0, 1).
  EXPECT_EQ(p.ranks[0].node_id, p.ranks[3].node_id);
  EXPECT_NE(p.ranks[3].node_id, p.ranks[4].node_id);
  EXPECT_EQ(p.ranks[4].gpus[0], 0);
  EXPECT_EQ(p.ranks[5].gpus[0], 1);
  s.Release("j1");
  for (const auto& n : s.Nodes()) EXPECT_EQ(n.gpus_free, 4);
}

TEST(Scheduler, AllOrNothingNeverPartiallyAllocates) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 4, 0, 2}));
  ASSERT_TRUE(s.AddNode({"n2", 4, 0, 2}));
  ASSERT_TRUE(s.Submit(Job("a", 3, 1, 1)));
  ASSERT_EQ(s.Schedule().size(), 1u);
  // 1 GPU left; a 2-GPU gang must wait whole, with nothing taken.
  ASSERT_TRUE(s.Submit(Job("b", 2, 1, 1)));
  EXPECT_TRUE(s.Schedule().empty());
  int free = 0;
  for (const auto& n : s.Nodes()) free += n.gpus_free;
  EXPECT_EQ(free, 1);
  s.Release("a");
  auto placed = s.Schedule();
  ASSERT_EQ(placed.size(), 1u);
  EXPECT_EQ(placed[0].job_id, "b");
}

TEST(Scheduler, TwoLargeGangsDoNotDeadlock) {
  // Each gang needs 3 of the 4 GPUs: with partial allocation both could hold 2 and wait
  // forever; here one runs, then the other.
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 8, 0, 2}));
  ASSERT_TRUE(s.AddNode({"n2", 8, 0, 2}));
  ASSERT_TRUE(s.Submit(Job("x", 3, 1, 1)));
  ASSERT_TRUE(s.Submit(Job("y", 3, 1, 1)));
  auto first = s.Schedule();
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].job_id, "x");
  s.Release("x");
  auto second = s.Schedule();
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].job_id, "y");
}

TEST(Scheduler, PriorityThenSubmissionOrderAndNoBackfill) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 4, 0, 0}));
  ASSERT_TRUE(s.Submit(Job("low", 1)));
  JobRequest big = Job("big", 4);
  big.priority = 5;
  ASSERT_TRUE(s.Submit(big));
  JobRequest mid = Job("mid", 1);
  mid.priority = 5;
  ASSERT_TRUE(s.Submit(mid));
  auto p = s.Schedule();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].job_id, "big");  // highest priority, earliest
  // Nothing else fits; "mid" (same priority, later) and "low" wait behind it.
  EXPECT_TRUE(s.Schedule().empty());
  s.Release("big");
  p = s.Schedule();
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].job_id, "mid");
  EXPECT_EQ(p[1].job_id, "low");
}

TEST(Scheduler, RanksPerNodeAndNodesLayouts) {
  Scheduler s;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s.AddNode({"n" + std::to_string(i), 4, 0, 0}));
  JobRequest rpn = Job("rpn", 4);
  rpn.ranks_per_node = 2;
  ASSERT_TRUE(s.Submit(rpn));
  JobRequest nodes = Job("nodes", 4);
  nodes.nodes = 4;
  ASSERT_TRUE(s.Submit(nodes));
  auto p = s.Schedule();
  ASSERT_EQ(p.size(), 2u);
  std::map<std::string, int> per_node;
  for (const auto& r : p[0].ranks) per_node[r.node_id]++;
  EXPECT_EQ(per_node.size(), 2u);
  for (auto [n, c] : per_node) EXPECT_EQ(c, 2) << n;
  per_node.clear();
  for (const auto& r : p[1].ranks) per_node[r.node_id]++;
  EXPECT_EQ(per_node.size(), 4u);
  for (auto [n, c] : per_node) EXPECT_EQ(c, 1) << n;
}

TEST(Scheduler, BestFitKeepsWholeNodesFree) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"big", 8, 0, 8}));
  ASSERT_TRUE(s.AddNode({"small", 2, 0, 2}));
  ASSERT_TRUE(s.Submit(Job("one", 2, 1, 1)));
  auto p = s.Schedule();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].ranks[0].node_id, "small");  // the 8-GPU node stays whole
  ASSERT_TRUE(s.Submit(Job("eight", 8, 1, 1)));
  ASSERT_EQ(s.Schedule().size(), 1u);
}

TEST(Scheduler, ImpossibleRequestsAreRejectedAtSubmitWithTheReason) {
  Scheduler s;
  // No node yet: the cluster is starting, the job waits in the queue.
  EXPECT_TRUE(s.Submit(Job("early", 1)));
  EXPECT_TRUE(s.Schedule().empty());
  s.Dequeue("early");
  ASSERT_TRUE(s.AddNode({"n1", 8, 16000, 2}));
  ASSERT_TRUE(s.AddNode({"n2", 8, 16000, 2}));
  struct Case {
    JobRequest job;
    std::string text;
  };
  JobRequest mem = Job("mem", 1);
  mem.memory_mb_per_rank = 20000;
  JobRequest layout = Job("layout", 6, 1, 1);
  layout.ranks_per_node = 3;
  JobRequest uneven = Job("uneven", 5);
  uneven.nodes = 2;
  std::vector<Case> cases = {
      {Job("g", 1, 1, 4), "asks 4 GPUs per rank, the largest node has 2"},
      {Job("c", 1, 16, 0), "asks 16 CPUs per rank, the largest node has 8"},
      {Job("t", 5, 1, 1), "asks 5 GPUs in total, the cluster has 4"},
      {Job("cc", 17, 1, 0), "asks 17 CPUs in total, the cluster has 16"},
      {mem, "asks 20000 MiB per rank, the largest node has 16000 MiB"},
      {layout, "asks 6 GPUs in total"},
      {uneven, "ranks 5 cannot be spread evenly over 2 nodes"},
      {Job("zero", 0), "ranks must be >= 1"},
  };
  for (const auto& c : cases) {
    auto st = s.Submit(c.job);
    ASSERT_FALSE(st) << c.job.job_id;
    EXPECT_EQ(st.error().code(), Code::kInvalidArgument);
    EXPECT_NE(st.error().ToString().find(c.text), std::string::npos) << st.error().ToString();
  }
  JobRequest rpn = Job("rpn", 6);
  rpn.ranks_per_node = 6;  // two nodes of 8 CPUs cannot each take... one node can: needs 1
  EXPECT_TRUE(s.Submit(rpn));
  JobRequest rpn3 = Job("rpn3", 18, 1, 0);
  rpn3.ranks_per_node = 9;
  auto st = s.Submit(rpn3);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().ToString().find("asks 18 CPUs in total"), std::string::npos)
      << st.error().ToString();
  EXPECT_EQ(s.queued(), 1u);  // only the feasible one
}

TEST(Scheduler, UserLimitsHoldJobsWithoutBlockingOthers) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 16, 0, 8}));
  s.SetUserLimit("alice", {0, 2});
  JobRequest too_big = Job("tb", 3, 1, 1);
  auto st = s.Submit(too_big);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().ToString().find("user alice may use at most 2"), std::string::npos);
  ASSERT_TRUE(s.Submit(Job("a1", 2, 1, 1)));
  ASSERT_TRUE(s.Submit(Job("a2", 1, 1, 1)));  // over alice's limit while a1 runs
  JobRequest bob = Job("b1", 2, 1, 1);
  bob.user = "bob";
  ASSERT_TRUE(s.Submit(bob));
  auto p = s.Schedule();
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].job_id, "a1");
  EXPECT_EQ(p[1].job_id, "b1");  // not blocked by a2
  s.Release("a1");
  p = s.Schedule();
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].job_id, "a2");
}

TEST(Scheduler, SubmitIsIdempotentAndConflictsAreNamed) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 4, 0, 0}));
  ASSERT_TRUE(s.Submit(Job("j", 2)));
  ASSERT_TRUE(s.Submit(Job("j", 2)));  // the retried submit
  EXPECT_EQ(s.queued(), 1u);
  auto st = s.Submit(Job("j", 3));
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().ToString().find("already submitted with other settings"),
            std::string::npos);
  ASSERT_EQ(s.Schedule().size(), 1u);
  ASSERT_TRUE(s.Submit(Job("j", 2)));  // placed already: still a no-op
  EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, UnschedulableAndRemovedNodes) {
  Scheduler s;
  ASSERT_TRUE(s.AddNode({"n1", 2, 0, 0}));
  ASSERT_TRUE(s.AddNode({"n2", 2, 0, 0}));
  ASSERT_TRUE(s.SetSchedulable("n1", false));
  ASSERT_TRUE(s.Submit(Job("j", 2)));
  auto p = s.Schedule();
  ASSERT_EQ(p.size(), 1u);
  for (const auto& r : p[0].ranks) EXPECT_EQ(r.node_id, "n2");
  EXPECT_EQ(s.RemoveNode("n2").error().code(), Code::kFailedPrecondition);
  s.Release("j");
  EXPECT_TRUE(s.RemoveNode("n2"));
  EXPECT_EQ(s.RemoveNode("n2").error().code(), Code::kNotFound);
  ASSERT_TRUE(s.Submit(Job("k", 2)));
  EXPECT_TRUE(s.Schedule().empty());  // n1 is quarantined
  ASSERT_TRUE(s.SetSchedulable("n1", true));
  EXPECT_EQ(s.Schedule().size(), 1u);
}

TEST(Scheduler, RandomWorkloadKeepsExactAccounting) {
  Scheduler s;
  std::mt19937 rng(12345);
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(s.AddNode({"n" + std::to_string(i), 8, 64000, i % 3 == 0 ? 0 : 4}));
  }
  std::map<std::string, Placement> held;
  std::map<std::string, JobRequest> reqs;
  int next = 0;
  for (int round = 0; round < 400; ++round) {
    if (rng() % 3 != 0) {
      JobRequest j = Job("j" + std::to_string(next++), 1 + static_cast<int>(rng() % 8),
                         1 + static_cast<int>(rng() % 2), static_cast<int>(rng() % 3));
      if (rng() % 4 == 0) j.ranks_per_node = 1 + static_cast<int>(rng() % 2);
      if (j.ranks_per_node > 0) j.ranks = j.ranks_per_node * (1 + static_cast<int>(rng() % 3));
      j.priority = static_cast<int>(rng() % 3);
      if (s.Submit(j)) reqs[j.job_id] = j;
    } else if (!held.empty()) {
      auto it = held.begin();
      std::advance(it, static_cast<long>(rng() % held.size()));
      s.Release(it->first);
      held.erase(it);
    }
    for (auto& p : s.Schedule()) {
      ASSERT_EQ(p.ranks.size(), static_cast<std::size_t>(reqs.at(p.job_id).ranks));
      held[p.job_id] = p;
    }
    CheckInvariants(s, held, reqs);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(next, 200);
}

}  // namespace
}  // namespace cairn::coord
