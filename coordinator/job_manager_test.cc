// The job manager driven through the Service exactly as agents and the CLI drive it:
// registrations, heartbeats with run reports, and the orders in the replies. Time is a
// fake clock; no process is started (but for SlurmProgressTest's stand-ins for SLURM's
// clients, small scripts).
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/io.h"
#include "coordinator/service.h"
#include "runtime/progress.h"

namespace cairn::coord {
namespace {

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cairn_jobs_" + io::RandomSuffix());
    std::filesystem::create_directories(dir_);
    Open();
  }
  void TearDown() override {
    service_.reset();
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // (Re)starts the coordinator on the same database, as after kill -9.
  void Open() {
    service_.reset();
    store_.reset();
    auto s = StateStore::Open((dir_ / "state.db").string());
    ASSERT_TRUE(s);
    store_ = std::move(*s);
    ServiceOptions o;
    o.node_timeout_ms = 5000;
    o.jobs.quarantine_ms = quarantine_ms_;
    service_ = std::make_unique<Service>(store_.get(), "t", [this] { return now_; }, o);
    ASSERT_TRUE(service_->Recover());
  }
  static proto::Envelope Envelope(const std::string& method,
                                  const google::protobuf::Message& payload,
                                  const std::string& client, uint64_t request_id) {
    proto::Envelope e;
    e.set_protocol_version(1);
    e.set_client_id(client);
    e.set_request_id(request_id);
    e.set_method(method);
    e.set_payload(payload.SerializeAsString());
    e.set_auth_token("t");
    return e;
  }
  template <typename Reply>
  Reply Call(const std::string& method, const google::protobuf::Message& payload,
             std::string client = "cli") {
    last_ = service_->Handle(Envelope(method, payload, client, ++id_));
    Reply r;
    EXPECT_FALSE(last_.has_error()) << method << ": " << last_.error().message();
    EXPECT_TRUE(r.ParseFromString(last_.payload()));
    return r;
  }
  void Register(const std::string& node, uint32_t cpus = 4, int64_t incarnation = 1) {
    proto::RegisterNodeRequest r;
    r.set_node_id(node);
    r.set_hostname(node);
    r.set_address("10.0.0." + node.substr(1));
    r.set_incarnation(incarnation);
    r.mutable_resources()->set_cpus(cpus);
    Call<proto::RegisterNodeReply>("RegisterNode", r, "agent-" + node);
  }
  std::string Submit(uint32_t ranks, uint32_t max_restarts = 3, const std::string& launcher = "env") {
    proto::SubmitJobRequest r;
    r.mutable_spec()->add_command("train");
    r.mutable_spec()->set_ranks(ranks);
    r.mutable_spec()->set_max_restarts(max_restarts);
    r.mutable_spec()->set_launcher(launcher);
    r.mutable_spec()->set_hang_timeout_ms(60'000);
    r.mutable_spec()->set_grace_period_ms(10'000);
    return Call<proto::SubmitJobReply>("SubmitJob", r).job_id();
  }
  // A heartbeat with the given run reports; returns the node's orders.
  proto::HeartbeatReply Beat(const std::string& node, std::vector<proto::RunReport> runs = {}) {
    proto::HeartbeatRequest hb;
    hb.set_node_id(node);
    hb.set_sequence(++seq_[node]);
    for (auto& r : runs) *hb.add_runs() = r;
    return Call<proto::HeartbeatReply>("Heartbeat", hb, "agent-" + node);
  }
  static proto::RunReport Report(const proto::LaunchOrder& o, bool running, int exit_code = 0,
                                 int signal = 0, uint64_t step = 0) {
    proto::RunReport r;
    r.set_run_id(o.run_id());
    r.set_active(running);
    for (uint32_t rank : o.ranks()) {
      auto* p = r.add_processes();
      p->set_name("rank " + std::to_string(rank));
      p->set_rank(static_cast<int>(rank));
      p->set_pid(static_cast<int>(100 + rank));
      p->set_primary(true);
      p->set_running(running);
      p->set_exit_code(exit_code);
      p->set_signal(signal);
      auto* pr = r.add_progress();
      pr->set_rank(rank);
      pr->set_step(step);
      pr->set_unix_ms(step + 1);
    }
    return r;
  }
  proto::JobStatus Job(const std::string& id) {
    proto::GetJobRequest g;
    g.set_job_id(id);
    return Call<proto::JobStatus>("GetJob", g);
  }
  proto::NodeInfo Node(const std::string& node) {
    auto reply = Call<proto::ListNodesReply>("ListNodes", proto::ListNodesRequest());
    for (const auto& n : reply.nodes()) {
      if (n.node_id() == node) return n;
    }
    ADD_FAILURE() << "no node " << node;
    return {};
  }
  // Cluster events (node-quarantined, node-released, ...) of this kind.
  std::vector<std::string> NodeEvents(const std::string& kind) {
    auto reply = Call<proto::GetEventsReply>("GetEvents", proto::GetEventsRequest());
    std::vector<std::string> out;
    for (const auto& e : reply.events()) {
      if (e.kind() == kind) out.push_back(e.message());
    }
    return out;
  }
  // The next `count` attempts placed on `node` cannot launch there (each with another
  // error, so the job keeps restarting); between them the restart backoff passes.
  void FailLaunches(const std::string& node, int count) {
    for (int i = 0; i < count; ++i) {
      if (i > 0) {
        now_ += 10'000;  // past the restart backoff (2 s at most here)
        Beat(node);
        service_->Tick();
      }
      auto orders = Beat(node);
      ASSERT_EQ(orders.runs_size(), 1) << "attempt " << i + 1;
      proto::RunReport r;
      r.set_run_id(orders.runs(0).run_id());
      r.set_launch_error("exec failed #" + std::to_string(++launch_failures_));
      Beat(node, {r});
    }
  }

  std::filesystem::path dir_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<Service> service_;
  int64_t now_ = 1'000'000;
  int64_t quarantine_ms_ = 10 * 60'000;
  int launch_failures_ = 0;
  uint64_t id_ = 0;
  std::map<std::string, uint64_t> seq_;
  proto::Envelope last_;
};

TEST_F(JobManagerTest, GangIsOrderedToItsNodesAndSucceedsWhenEveryRankExitsZero) {
  Register("n1", 2);
  Register("n2", 2);
  const std::string id = Submit(4);
  auto o1 = Beat("n1");
  auto o2 = Beat("n2");
  ASSERT_EQ(o1.runs_size(), 1);
  ASSERT_EQ(o2.runs_size(), 1);
  EXPECT_EQ(o1.runs(0).run_id(), id + ".1");
  EXPECT_EQ(o1.runs(0).ranks_size() + o2.runs(0).ranks_size(), 4);
  EXPECT_EQ(o1.runs(0).world_size(), 4u);
  EXPECT_EQ(o1.runs(0).master_addr(), o2.runs(0).master_addr());
  EXPECT_EQ(o1.runs(0).hosts_size(), 2);
  EXPECT_NE(o1.orders_version(), 0u);
  EXPECT_EQ(Job(id).state(), proto::JOB_RUNNING);
  // Running, then every rank exits 0.
  Beat("n1", {Report(o1.runs(0), true)});
  EXPECT_EQ(Job(id).runs(0).state(), proto::RUN_RUNNING);
  Beat("n1", {Report(o1.runs(0), false, 0)});
  EXPECT_EQ(Job(id).state(), proto::JOB_RUNNING);  // n2's ranks still run
  auto after = Beat("n2", {Report(o2.runs(0), false, 0)});
  auto js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_SUCCEEDED) << js.message();
  EXPECT_EQ(js.runs(0).state(), proto::RUN_SUCCEEDED);
  EXPECT_EQ(after.runs_size(), 0);  // the run left the orders
}

TEST_F(JobManagerTest, FailedRankStopsTheGangAtOnceAndTheJobRestartsFromItsHead) {
  Register("n1", 2);
  Register("n2", 2);
  const std::string id = Submit(4);
  auto o1 = Beat("n1").runs(0);
  auto o2 = Beat("n2").runs(0);
  // Rank 0 reports a checkpoint head; then a rank on n2 is killed.
  auto r1 = Report(o1, true, 0, 0, 40);
  r1.mutable_progress(0)->set_ckpt_step(40);
  r1.mutable_progress(0)->set_ckpt_head(std::string(64, 'a'));
  Beat("n1", {r1});
  Beat("n2", {Report(o2, false, -1, 9, 41)});
  auto stop1 = Beat("n1", {r1});
  ASSERT_EQ(stop1.runs_size(), 1);
  EXPECT_TRUE(stop1.runs(0).stop());
  EXPECT_EQ(stop1.runs(0).stop_grace_ms(), 0u);  // a failed attempt is killed at once
  EXPECT_EQ(Job(id).runs(0).state(), proto::RUN_RUNNING);  // n1 still has processes
  // n1's processes are gone: the next attempt is placed, handed the head.
  proto::RunReport gone;
  gone.set_run_id(o1.run_id());
  auto next = Beat("n1", {gone});
  auto js = Job(id);
  EXPECT_EQ(js.restarts(), 1u);
  EXPECT_EQ(js.runs(0).state(), proto::RUN_FAILED);
  EXPECT_NE(js.runs(0).failure().find("killed by signal 9"), std::string::npos)
      << js.runs(0).failure();
  ASSERT_EQ(js.runs_size(), 2);
  EXPECT_EQ(js.runs(1).resumed_from_step(), 40u);
  EXPECT_EQ(js.checkpoint_head(), std::string(64, 'a'));
  bool found = false;
  for (const auto& o : next.runs()) {
    if (o.run_id() == id + ".2") {
      found = true;
      EXPECT_EQ(o.expected_head(), std::string(64, 'a'));
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(JobManagerTest, SameFailureTwiceFailsTheJobAndResumeRequeuesIt) {
  Register("n1", 2);
  const std::string id = Submit(1, 10);
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto o = Beat("n1").runs(0);
    EXPECT_EQ(o.attempt(), static_cast<uint32_t>(attempt));
    Beat("n1", {Report(o, false, 3, 0, 7)});
  }
  auto js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_FAILED);
  EXPECT_NE(js.message().find("same error"), std::string::npos) << js.message();
  EXPECT_EQ(Beat("n1").runs_size(), 0);
  // Resume: back in the queue, restart count from zero; retried = one resume.
  proto::ResumeJobRequest r;
  r.set_job_id(id);
  proto::Envelope e = Envelope("ResumeJob", r, "cli", 999);
  auto first = service_->Handle(e);
  auto again = service_->Handle(e);
  ASSERT_FALSE(first.has_error()) << first.error().message();
  EXPECT_EQ(first.payload(), again.payload());
  EXPECT_EQ(Job(id).state(), proto::JOB_RUNNING);  // placed at once
  EXPECT_EQ(Job(id).restarts(), 0u);
  EXPECT_EQ(Beat("n1").runs(0).attempt(), 3u);
}

TEST_F(JobManagerTest, MaxRestartsBoundsRetriesAndBackoffGrows) {
  Register("n1", 2);
  const std::string id = Submit(1, 2);
  // Different failures each time (not the same bug twice).
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, false, 1, 0, 1)});
  EXPECT_EQ(Job(id).runs_size(), 2);  // first restart at once
  o = Beat("n1").runs(0);
  Beat("n1", {Report(o, false, 2, 0, 2)});
  auto js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_RESTARTING);
  EXPECT_EQ(js.next_attempt_unix_ms(), now_ + 1000);  // then backoff
  service_->Tick();
  EXPECT_EQ(Job(id).runs_size(), 2);
  now_ += 1001;
  service_->Tick();
  ASSERT_EQ(Job(id).runs_size(), 3);
  o = Beat("n1").runs(0);
  Beat("n1", {Report(o, false, 4, 0, 3)});
  js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_FAILED);
  EXPECT_NE(js.message().find("max_restarts 2"), std::string::npos) << js.message();
}

TEST_F(JobManagerTest, PreemptedAttemptIsRequeuedWithoutCountingAFailure) {
  Register("n1", 2);
  const std::string id = Submit(2, 0);
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, false, 75, 0, 30)});
  auto js = Job(id);
  EXPECT_EQ(js.restarts(), 0u);
  EXPECT_EQ(js.preemptions(), 1u);
  ASSERT_EQ(js.runs_size(), 2);
  EXPECT_EQ(js.runs(0).state(), proto::RUN_PREEMPTED);
  EXPECT_EQ(js.state(), proto::JOB_RUNNING);
}

TEST_F(JobManagerTest, HangIsDetectedAfterTheHangTimeout) {
  Register("n1", 2);
  const std::string id = Submit(1);
  auto o = Beat("n1").runs(0);
  // Heartbeats go on, but the rank's progress report stays the same (it is stuck).
  for (int s = 0; s < 59; ++s) {
    Beat("n1", {Report(o, true, 0, 0, 5)});
    now_ += 1000;
    service_->Tick();
  }
  EXPECT_EQ(Job(id).runs(0).state(), proto::RUN_RUNNING);
  for (int s = 0; s < 2; ++s) {
    Beat("n1", {Report(o, true, 0, 0, 5)});
    now_ += 1000;
    service_->Tick();
  }
  auto stop = Beat("n1", {Report(o, true, 0, 0, 5)});
  ASSERT_EQ(stop.runs_size(), 1);
  EXPECT_TRUE(stop.runs(0).stop());
  proto::RunReport gone;
  gone.set_run_id(o.run_id());
  Beat("n1", {gone});
  auto js = Job(id);
  EXPECT_NE(js.runs(0).failure().find("no progress"), std::string::npos) << js.runs(0).failure();
  EXPECT_EQ(js.runs_size(), 2);
}

TEST_F(JobManagerTest, LostNodeFailsItsAttemptsAndTheGangMovesToOtherNodes) {
  Register("n1", 2);
  Register("n2", 2);
  Register("n3", 2);
  const std::string id = Submit(4);
  std::map<std::string, proto::LaunchOrder> orders;
  for (const char* n : {"n1", "n2", "n3"}) {
    auto r = Beat(n);
    if (r.runs_size() > 0) orders[n] = r.runs(0);
  }
  ASSERT_EQ(orders.size(), 2u);
  const std::string lost = orders.rbegin()->first;
  const std::string kept = orders.begin()->first;
  // Everyone but `lost` keeps heartbeating.
  for (int i = 0; i < 7; ++i) {
    now_ += 1000;
    for (const char* n : {"n1", "n2", "n3"}) {
      if (n == lost) continue;
      if (orders.contains(n)) {
        Beat(n, {Report(orders[n], true)});
      } else {
        Beat(n);
      }
    }
    service_->Tick();
  }
  auto stop = Beat(kept, {Report(orders[kept], true)});
  ASSERT_GE(stop.runs_size(), 1);
  EXPECT_TRUE(stop.runs(0).stop());
  proto::RunReport gone;
  gone.set_run_id(orders[kept].run_id());
  Beat(kept, {gone});
  auto js = Job(id);
  EXPECT_NE(js.runs(0).failure().find(lost + " lost"), std::string::npos) << js.runs(0).failure();
  ASSERT_EQ(js.runs_size(), 2);
  for (const char* n : {"n1", "n2", "n3"}) {
    if (n == lost) continue;
    auto r = Beat(n);
    ASSERT_EQ(r.runs_size(), 1) << n;
    EXPECT_EQ(r.runs(0).attempt(), 2u);
  }
}

TEST_F(JobManagerTest, AnAgentThatForgetsARunningAttemptFailsIt) {
  Register("n1", 2);
  const std::string id = Submit(2);
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, true, 0, 0, 3)});
  Register("n1", 2, /*incarnation=*/2);  // the agent restarted: its processes died with it
  auto reply = Beat("n1");                // and it reports nothing of the attempt
  auto js = Job(id);
  EXPECT_NE(js.runs(0).failure().find("no longer has the attempt"), std::string::npos)
      << js.runs(0).failure();
  ASSERT_EQ(js.runs_size(), 2);  // restarted (the node is alive: it reports nothing left)
  EXPECT_EQ(js.runs(0).state(), proto::RUN_FAILED);
}

TEST_F(JobManagerTest, CancelStopsWithTheGracePeriodAndRetriedCancelIsOne) {
  Register("n1", 2);
  const std::string id = Submit(2);
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, true)});
  proto::CancelJobRequest c;
  c.set_job_id(id);
  proto::Envelope e = Envelope("CancelJob", c, "cli", 777);
  auto a = service_->Handle(e);
  auto b = service_->Handle(e);
  EXPECT_EQ(a.payload(), b.payload());
  auto stop = Beat("n1", {Report(o, true)});
  ASSERT_EQ(stop.runs_size(), 1);
  EXPECT_TRUE(stop.runs(0).stop());
  EXPECT_EQ(stop.runs(0).stop_grace_ms(), 10'000u);
  EXPECT_EQ(Job(id).runs(0).state(), proto::RUN_RUNNING);  // until its processes are gone
  Beat("n1", {Report(o, false, 75)});
  auto js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_CANCELLED);
  EXPECT_EQ(js.runs(0).state(), proto::RUN_CANCELLED);
  EXPECT_EQ(js.runs_size(), 1);
}

TEST_F(JobManagerTest, RestartedCoordinatorTakesRunningAttemptsBack) {
  Register("n1", 2);
  const std::string id = Submit(2);
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, true, 0, 0, 10)});
  Open();  // kill -9 and restart: the attempt is still running on n1
  auto again = Beat("n1", {Report(o, true, 0, 0, 11)});
  ASSERT_EQ(again.runs_size(), 1);
  EXPECT_EQ(again.runs(0).run_id(), o.run_id());
  EXPECT_FALSE(again.runs(0).stop());
  Beat("n1", {Report(o, false, 0, 0, 20)});
  auto js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_SUCCEEDED);
  EXPECT_EQ(js.runs_size(), 1);
  EXPECT_EQ(js.restarts(), 0u);
}

TEST_F(JobManagerTest, ExecAddsADaemonToTheNodesOrderOnceAndStaleReportsAreIgnored) {
  Register("n1", 1);
  Register("n2", 1);
  const std::string id = Submit(2, 3, "mpi");
  auto o1 = Beat("n1").runs(0);
  proto::ExecRequest x;
  x.set_run_id(o1.run_id());
  x.set_node_id("n2");
  x.set_command("orted -mca ess env");
  Call<proto::ExecReply>("Exec", x, "rsh");
  Call<proto::ExecReply>("Exec", x, "rsh");  // a retry: no second daemon
  auto o2 = Beat("n2");
  ASSERT_EQ(o2.runs_size(), 1);
  ASSERT_EQ(o2.runs(0).execs_size(), 1);
  EXPECT_EQ(o2.runs(0).execs(0), "orted -mca ess env");
  x.set_node_id("n9");
  proto::Envelope e = Envelope("Exec", x, "rsh", 5000);
  EXPECT_TRUE(service_->Handle(e).has_error());
  // A report older than one already seen (sequence) changes nothing.
  proto::HeartbeatRequest stale;
  stale.set_node_id("n1");
  stale.set_sequence(1);
  *stale.add_runs() = Report(o1, false, 1);
  Call<proto::HeartbeatReply>("Heartbeat", stale, "agent-n1");
  EXPECT_EQ(Job(id).state(), proto::JOB_RUNNING);
}

TEST_F(JobManagerTest, LongPollHoldsOnlyWhileTheOrdersAreUnchanged) {
  Register("n1", 2);
  proto::HeartbeatRequest hb;
  hb.set_node_id("n1");
  hb.set_sequence(1);
  hb.set_wait_ms(1000);
  hb.set_orders_version(0);
  proto::Envelope e = Envelope("Heartbeat", hb, "agent-n1", 1);
  EXPECT_EQ(service_->HoldMs(e), 1000);  // nothing new for n1
  Submit(1);
  EXPECT_EQ(service_->HoldMs(e), 0);  // a new order: answer now
  auto reply = service_->OrdersReply(e);
  proto::HeartbeatReply r;
  ASSERT_TRUE(r.ParseFromString(reply.payload()));
  EXPECT_EQ(r.runs_size(), 1);
  hb.set_orders_version(r.orders_version());
  e.set_payload(hb.SerializeAsString());
  EXPECT_EQ(service_->HoldMs(e), 1000);
  e.set_auth_token("wrong");
  EXPECT_EQ(service_->HoldMs(e), 0);  // never hold an unauthenticated request
}

TEST_F(JobManagerTest, FinishedAttemptsKeepTheirLastStep) {
  Register("n1", 2);
  const std::string id = Submit(1);
  // Attempt 1 reaches step 41 and fails.
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, true, 0, 0, 41)});
  Beat("n1", {Report(o, false, 1, 0, 41)});
  // Attempt 2 reports step 15 (live), then succeeds at step 20.
  o = Beat("n1").runs(0);
  ASSERT_EQ(o.attempt(), 2u);
  Beat("n1", {Report(o, true, 0, 0, 15)});
  auto js = Job(id);
  ASSERT_EQ(js.runs_size(), 2);
  EXPECT_EQ(js.runs(0).last_step(), 41u);
  EXPECT_EQ(js.runs(1).last_step(), 15u);  // the live attempt's progress
  EXPECT_EQ(js.step(), 15u);
  Beat("n1", {Report(o, false, 0, 0, 20)});
  js = Job(id);
  EXPECT_EQ(js.state(), proto::JOB_SUCCEEDED) << js.message();
  EXPECT_EQ(js.step(), 20u);
  EXPECT_EQ(js.runs(0).last_step(), 41u);
  EXPECT_EQ(js.runs(1).last_step(), 20u);
  // Stored: a restarted coordinator (nothing of the job in memory) says the same.
  Open();
  js = Job(id);
  EXPECT_EQ(js.step(), 20u);
  EXPECT_EQ(js.runs(0).last_step(), 41u);
  EXPECT_EQ(js.runs(1).last_step(), 20u);
  auto list = Call<proto::ListJobsReply>("ListJobs", [] {
    proto::ListJobsRequest r;
    r.set_include_finished(true);
    return r;
  }());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_EQ(list.jobs(0).step(), 20u);
}

TEST_F(JobManagerTest, QuarantineEndsAfterTheQuarantineTime) {
  Register("n1", 2);
  const std::string id = Submit(1, 10);
  FailLaunches("n1", 3);
  const int64_t until = now_ + 10 * 60'000;
  auto n = Node("n1");
  EXPECT_TRUE(n.quarantined());
  EXPECT_EQ(n.quarantined_until_unix_ms(), until);
  ASSERT_EQ(NodeEvents("node-quarantined").size(), 1u);
  EXPECT_NE(NodeEvents("node-quarantined")[0].find("for 10m"), std::string::npos)
      << NodeEvents("node-quarantined")[0];
  // The job waits: its only node takes no new placements until the quarantine ends.
  now_ = until - 1;
  Beat("n1");
  service_->Tick();
  EXPECT_EQ(Beat("n1").runs_size(), 0);
  EXPECT_TRUE(Node("n1").quarantined());
  EXPECT_EQ(Job(id).runs_size(), 3);
  now_ = until;
  Beat("n1");
  service_->Tick();
  n = Node("n1");
  EXPECT_FALSE(n.quarantined());
  EXPECT_EQ(n.quarantined_until_unix_ms(), 0);
  auto released = NodeEvents("node-released");
  ASSERT_EQ(released.size(), 1u);
  EXPECT_NE(released[0].find("n1: quarantine over"), std::string::npos) << released[0];
  auto orders = Beat("n1");
  ASSERT_EQ(orders.runs_size(), 1);  // back in service: the job is placed again
  EXPECT_EQ(orders.runs(0).attempt(), 4u);
  // Its failure count started over: one more failure does not quarantine it again.
  proto::RunReport r;
  r.set_run_id(orders.runs(0).run_id());
  r.set_launch_error("exec failed #4");
  Beat("n1", {r});
  EXPECT_FALSE(Node("n1").quarantined());
  EXPECT_EQ(NodeEvents("node-quarantined").size(), 1u);
  now_ += 10'000;  // past the backoff: the next attempt goes to n1 again
  Beat("n1");
  service_->Tick();
  orders = Beat("n1");
  ASSERT_EQ(orders.runs_size(), 1);
  EXPECT_EQ(orders.runs(0).attempt(), 5u);
}

TEST_F(JobManagerTest, RestartedCoordinatorKeepsTheQuarantineAndItsEnd) {
  Register("n1", 2);
  const std::string id = Submit(1, 10);
  FailLaunches("n1", 3);
  const int64_t until = now_ + 10 * 60'000;
  ASSERT_TRUE(Node("n1").quarantined());
  now_ += 5 * 60'000;
  Open();  // kill -9 and restart halfway through the quarantine
  Beat("n1");
  service_->Tick();
  auto n = Node("n1");
  EXPECT_TRUE(n.quarantined());
  EXPECT_EQ(n.quarantined_until_unix_ms(), until);
  EXPECT_EQ(Beat("n1").runs_size(), 0);
  now_ = until - 1;
  Beat("n1");
  service_->Tick();
  EXPECT_TRUE(Node("n1").quarantined());
  EXPECT_EQ(Beat("n1").runs_size(), 0);
  now_ = until;
  Beat("n1");
  service_->Tick();
  EXPECT_FALSE(Node("n1").quarantined());
  EXPECT_EQ(NodeEvents("node-released").size(), 1u);
  ASSERT_EQ(Beat("n1").runs_size(), 1);
  EXPECT_EQ(Job(id).runs_size(), 4);
  // Released for good: another restart does not bring the quarantine back.
  Open();
  Beat("n1");
  service_->Tick();
  EXPECT_FALSE(Node("n1").quarantined());
}

TEST_F(JobManagerTest, QuarantineTimeZeroLastsUntilTheAgentRegistersAgain) {
  quarantine_ms_ = 0;
  Open();
  Register("n1", 2);
  Submit(1, 10);
  FailLaunches("n1", 3);
  auto n = Node("n1");
  EXPECT_TRUE(n.quarantined());
  EXPECT_EQ(n.quarantined_until_unix_ms(), 0);
  now_ += 24 * 3'600'000;  // a day later
  Beat("n1");
  service_->Tick();
  EXPECT_TRUE(Node("n1").quarantined());
  EXPECT_EQ(Beat("n1").runs_size(), 0);
  Register("n1", 2, /*incarnation=*/2);  // a new agent process
  EXPECT_FALSE(Node("n1").quarantined());
  auto released = NodeEvents("node-released");
  ASSERT_EQ(released.size(), 1u);
  EXPECT_NE(released[0].find("registered again"), std::string::npos) << released[0];
  EXPECT_EQ(Beat("n1").runs_size(), 1);
}

// Progress datagrams of SLURM-executor ranks (JobManager::OnNetworkProgress), as the
// server's UDP socket hands them over. The attempts are real slurm-executor attempts:
// SlurmExecutor runs sbatch, squeue, scontrol and scancel, here small scripts in the test's
// directory that keep each job's state in a file (no SLURM cluster; tests/slurm_test runs
// the same path against a real one). Their blocking calls run on a BlockingWorker whose
// continuations the test runs on its own thread (Pump), as cairnd's io_context would.
class SlurmProgressTest : public JobManagerTest {
 protected:
  static constexpr int64_t kHangMs = 5000;

  void SetUp() override {
    JobManagerTest::SetUp();
    bin_ = dir_ / "bin";
    std::filesystem::create_directories(bin_);
    // sbatch --parsable ... SCRIPT: a new job id.
    Script("sbatch",
           "n=$(cat \"$d/next\" 2>/dev/null || echo 100)\n"
           "echo $((n + 1)) > \"$d/next\"\n"
           "echo \"$n\"\n");
    // squeue --noheader --states=all --jobs=ID,... --format=%i|%T|%r
    Script("squeue",
           "for a in \"$@\"; do case \"$a\" in --jobs=*) ids=\"${a#--jobs=}\";; esac; done\n"
           "for id in $(echo \"$ids\" | tr , ' '); do\n"
           "  echo \"$id|$(cat \"$d/state.$id\" 2>/dev/null || echo RUNNING)|None\"\n"
           "done\n");
    // scontrol -o show job ID
    Script("scontrol",
           "echo \"JobId=$4 JobState=$(cat \"$d/state.$4\" 2>/dev/null || echo RUNNING) "
           "Reason=None ExitCode=0:15\"\n");
    // scancel -v [--signal=N] ID
    Script("scancel", "for id; do :; done\necho CANCELLED > \"$d/state.$id\"\n");
    service_.reset();
    ServiceOptions o;
    o.node_timeout_ms = 5000;
    o.jobs.state_dir = dir_.string();
    o.jobs.slurm_poll_ms = 1000;
    service_ = std::make_unique<Service>(
        store_.get(), "t", [this] { return now_; }, o);
    SlurmExecutorOptions so;
    so.bin_dir = bin_.string();
    so.timeout = std::chrono::milliseconds(10'000);
    executor_ = std::make_unique<SlurmExecutor>(so);
    worker_ = std::make_unique<BlockingWorker>([this](std::function<void()> fn) {
      std::lock_guard lock(mu_);
      posted_.push_back(std::move(fn));
    });
    service_->jobs().set_slurm(executor_.get(), worker_.get());
    // Where the ranks would send their reports (nothing listens: the test hands them over).
    service_->set_progress_endpoint("127.0.0.1", 9);
    ASSERT_TRUE(service_->Recover());
  }
  void TearDown() override {
    worker_.reset();  // waits for a SLURM client in flight; drops the rest
    posted_.clear();
    JobManagerTest::TearDown();
  }
  void Script(const std::string& name, const std::string& body) {
    const auto path = bin_ / name;
    std::ofstream(path) << "#!/bin/sh\nd='" << bin_.string() << "'\n" << body;
    std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  }
  // Runs the SLURM calls' continuations until `done` (at most 10 s).
  bool Pump(const std::function<bool()>& done) {
    for (int i = 0; i < 2000; ++i) {
      std::deque<std::function<void()>> ready;
      {
        std::lock_guard lock(mu_);
        ready.swap(posted_);
      }
      for (auto& fn : ready) fn();
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done();
  }
  std::string SubmitSlurm(uint32_t ranks) {
    proto::SubmitJobRequest r;
    r.mutable_spec()->add_command("/bin/true");
    r.mutable_spec()->set_ranks(ranks);
    r.mutable_spec()->set_max_restarts(3);
    r.mutable_spec()->set_executor("slurm");
    r.mutable_spec()->set_hang_timeout_ms(kHangMs);
    return Call<proto::SubmitJobReply>("SubmitJob", r).job_id();
  }
  // Waits until attempt `attempt` of the job has its SLURM job and SLURM says it runs.
  void WaitRunning(const std::string& id, uint32_t attempt) {
    ASSERT_TRUE(Pump([&] {
      auto js = Job(id);
      return js.runs_size() >= static_cast<int>(attempt) &&
             !js.runs(static_cast<int>(attempt) - 1).executor_job_id().empty();
    })) << "sbatch";
    now_ += 1000;  // the next SLURM poll is due
    service_->Tick();
    ASSERT_TRUE(Pump([&] {
      return Job(id).runs(static_cast<int>(attempt) - 1).state() == proto::RUN_RUNNING;
    })) << "squeue";
  }
  // The progress key cairnd handed the attempt (CAIRN_PROGRESS_SOCKET in its batch script).
  std::string HandedKey(const std::string& id, uint32_t attempt) {
    const auto script = dir_ / "logs" / id / ("attempt-" + std::to_string(attempt)) / "job.sbatch";
    auto text = io::ReadWholeFile(io::DefaultFileSystem(), script.string());
    EXPECT_TRUE(text) << script;
    if (!text) return "";
    const std::string marker = fmt::format("udp://127.0.0.1:9/{}.{}?key=", id, attempt);
    const auto at = text->find(marker);
    EXPECT_NE(at, std::string::npos) << *text;
    if (at == std::string::npos) return "";
    std::string key;
    for (std::size_t i = at + marker.size(); i + 1 < text->size() && key.size() < 32; i += 2) {
      key.push_back(static_cast<char>(std::stoi(text->substr(i, 2), nullptr, 16)));
    }
    return key;
  }
  // HMAC-SHA256(secret, "cairn.progress-key.v1" NUL run id): an attempt's key.
  static std::string Key(const std::string& secret, const std::string& run_id) {
    std::string data = "cairn.progress-key.v1";
    data.push_back('\0');
    data += run_id;
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
         reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
    return std::string(reinterpret_cast<const char*>(out), len);
  }
  static std::string Progress(const std::string& job_id, uint32_t rank, uint64_t step,
                              int64_t unix_ms) {
    proto::RankProgress p;
    p.set_run_id(job_id);
    p.set_rank(rank);
    p.set_step(step);
    p.set_unix_ms(unix_ms);
    p.set_pid(4242);
    return p.SerializeAsString();
  }
  static std::string Datagram(const std::string& key_id, const std::string& progress,
                              const std::string& tag) {
    proto::ProgressDatagram d;
    d.set_key_id(key_id);
    d.set_progress(progress);
    d.set_tag(tag);
    return d.SerializeAsString();
  }
  // What a rank holding `key` sends.
  static std::string Signed(const std::string& key, const std::string& key_id,
                            const std::string& progress) {
    return Datagram(key_id, progress, rt::ProgressTag(key, key_id, progress));
  }
  // Datagrams that must not count for the live attempt `run_id` of job `id` (with `ranks`
  // ranks, handed `key`), each claiming step 999 at a time later than any report so far.
  static std::vector<std::pair<std::string, std::string>> Forgeries(const std::string& id,
                                                                    const std::string& run_id,
                                                                    const std::string& key,
                                                                    uint32_t ranks) {
    const int64_t late = 9'000'000;
    const std::string p = Progress(id, 0, 999, late);
    const std::string tag = rt::ProgressTag(key, run_id, p);
    std::vector<std::pair<std::string, std::string>> out;
    out.emplace_back("garbage", std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01garbage"));
    out.emplace_back("empty", std::string());
    out.emplace_back("oversized garbage", std::string(1 << 20, '\xff'));
    // A genuine datagram too long for the server's 64 KiB receive buffer, cut there.
    proto::RankProgress big;
    big.ParseFromString(p);
    big.set_ckpt_dir(std::string(70'000, 'x'));
    out.emplace_back("oversized, cut at 64 KiB",
                     Signed(key, run_id, big.SerializeAsString()).substr(0, 65536));
    out.emplace_back("unknown job", Signed(Key("t", "job-999999.1"), "job-999999.1", p));
    out.emplace_back("unknown attempt of the job", Signed(Key("t", id + ".7"), id + ".7", p));
    out.emplace_back("no dot in the key id", Signed(Key("t", id), id, p));
    out.emplace_back("key of another run id", Signed(Key("t", id + ".7"), run_id, p));
    out.emplace_back("key from another secret", Signed(Key("u", run_id), run_id, p));
    out.emplace_back("tag bound to another key id",
                     Datagram(run_id, p, rt::ProgressTag(key, id + ".7", p)));
    out.emplace_back("tampered payload (tag of other progress)",
                     Datagram(run_id, p, rt::ProgressTag(key, run_id, Progress(id, 0, 998, late))));
    out.emplace_back("truncated tag", Datagram(run_id, p, tag.substr(0, 16)));
    out.emplace_back("no tag", Datagram(run_id, p, ""));
    out.emplace_back("tag with a byte more", Datagram(run_id, p, tag + "x"));
    out.emplace_back("rank == ranks", Signed(key, run_id, Progress(id, ranks, 999, late)));
    out.emplace_back("rank 2^32-1", Signed(key, run_id, Progress(id, 0xffffffffu, 999, late)));
    out.emplace_back(
        "tagged bytes that are no RankProgress",
        Signed(key, run_id, std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")));
    return out;
  }
  uint64_t Step(const std::string& id) { return Job(id).step(); }
  // Why the job's attempts failed ("attempt-failed" events: written when cairnd ends an
  // attempt, before SLURM has ended its job and the attempt's state is stored).
  std::vector<std::string> Failures(const std::string& id) {
    proto::GetEventsRequest r;
    r.set_job_id(id);
    auto reply = Call<proto::GetEventsReply>("GetEvents", r);
    std::vector<std::string> out;
    for (const auto& e : reply.events()) {
      if (e.kind() == "attempt-failed") out.push_back(e.message());
    }
    return out;
  }

  std::filesystem::path bin_;
  std::unique_ptr<SlurmExecutor> executor_;
  std::mutex mu_;
  std::deque<std::function<void()>> posted_;
  std::unique_ptr<BlockingWorker> worker_;  // last: stopped first
};

TEST_F(SlurmProgressTest, ForgedOrReplayedDatagramsNeitherMoveTheAttemptNorKeepItAlive) {
  const std::string id = SubmitSlurm(2);
  ASSERT_NO_FATAL_FAILURE(WaitRunning(id, 1));
  const std::string run_id = id + ".1";
  const std::string key = HandedKey(id, 1);
  ASSERT_EQ(key.size(), 32u);
  ASSERT_EQ(key, Key("t", run_id));  // the derivation the forgeries below vary
  // Genuine reports move the attempt, and a genuine report keeps it alive.
  const std::string first = Signed(key, run_id, Progress(id, 0, 10, 1000));
  service_->OnProgressDatagram(first);
  EXPECT_EQ(Step(id), 10u);
  now_ += kHangMs - 1000;
  const std::string latest = Signed(key, run_id, Progress(id, 1, 11, 2000));
  service_->OnProgressDatagram(latest);
  EXPECT_EQ(Step(id), 11u);
  const int64_t last_genuine = now_;
  now_ += 2000;  // past hang_timeout after the first report, not after the latest
  service_->Tick();
  ASSERT_TRUE(Failures(id).empty()) << Failures(id)[0];
  // Forgeries and replays, just before the attempt would be hung: none counts.
  now_ = last_genuine + kHangMs - 1000;
  auto bad = Forgeries(id, run_id, key, 2);
  bad.emplace_back("replay of an older report", first);
  bad.emplace_back("replay of the latest report", latest);
  for (const auto& [what, bytes] : bad) {
    service_->OnProgressDatagram(bytes);
    EXPECT_EQ(Step(id), 11u) << what;
  }
  service_->Tick();
  ASSERT_TRUE(Failures(id).empty()) << Failures(id)[0];
  // hang_timeout after the last genuine report, it is hung: nothing since counted.
  now_ = last_genuine + kHangMs + 1;
  service_->Tick();
  auto failed = Failures(id);
  ASSERT_EQ(failed.size(), 1u) << "not hung: a datagram after the last genuine one counted";
  EXPECT_NE(failed[0].find("no progress for 5.0 s"), std::string::npos) << failed[0];
  // Until SLURM says its job is over, the attempt is stopping: a genuine report now does
  // not count either.
  service_->OnProgressDatagram(Signed(key, run_id, Progress(id, 0, 500, 3000)));
  EXPECT_EQ(Step(id), 11u);
  ASSERT_TRUE(Pump([&] {
    now_ += 1000;
    service_->Tick();
    return Job(id).runs(0).state() == proto::RUN_FAILED;
  })) << "scancel, then squeue";
  auto js = Job(id);
  EXPECT_NE(js.runs(0).failure().find("no progress for 5.0 s"), std::string::npos)
      << js.runs(0).failure();
  EXPECT_EQ(js.runs(0).last_step(), 11u);
  EXPECT_TRUE(std::ifstream(bin_ / ("state." + js.runs(0).executor_job_id())).good())
      << "scancel was not run";
}

TEST_F(SlurmProgressTest, ForgedDatagramsBeforeTheFirstReportDoNotStartHangDetection) {
  const std::string id = SubmitSlurm(2);
  ASSERT_NO_FATAL_FAILURE(WaitRunning(id, 1));
  const std::string run_id = id + ".1";
  const std::string key = HandedKey(id, 1);
  ASSERT_EQ(key.size(), 32u);
  for (const auto& [what, bytes] : Forgeries(id, run_id, key, 2)) {
    service_->OnProgressDatagram(bytes);
    EXPECT_EQ(Step(id), 0u) << what;
  }
  // Ranks that never reached cairnd are not hung: had a forgery counted as their first
  // report, hang_timeout would now end the attempt.
  now_ += 10 * kStartupAllowanceMs;
  service_->Tick();
  EXPECT_TRUE(Failures(id).empty()) << Failures(id)[0];
  // The first genuine report is taken.
  service_->OnProgressDatagram(Signed(key, run_id, Progress(id, 1, 3, 100)));
  EXPECT_EQ(Step(id), 3u);
}

TEST_F(SlurmProgressTest, AnEndedAttemptsKeyDoesNotReportForTheNextAttempt) {
  const std::string id = SubmitSlurm(1);
  ASSERT_NO_FATAL_FAILURE(WaitRunning(id, 1));
  const std::string key1 = HandedKey(id, 1);
  ASSERT_EQ(key1.size(), 32u);
  service_->OnProgressDatagram(Signed(key1, id + ".1", Progress(id, 0, 20, 1000)));
  ASSERT_EQ(Step(id), 20u);
  // SLURM ends the attempt (cancelled outside cairn); the job restarts.
  ASSERT_TRUE(std::ofstream(bin_ / ("state." + Job(id).runs(0).executor_job_id()))
              << "CANCELLED\n");
  ASSERT_TRUE(Pump([&] {
    now_ += 1000;
    service_->Tick();
    return Job(id).runs_size() == 2;
  })) << "restart";
  ASSERT_EQ(Job(id).runs(0).state(), proto::RUN_FAILED);
  ASSERT_NO_FATAL_FAILURE(WaitRunning(id, 2));
  const std::string key2 = HandedKey(id, 2);
  ASSERT_EQ(key2.size(), 32u);
  EXPECT_NE(key1, key2);
  const int64_t started = now_;
  // The ended attempt's ranks (or a replay of them) with its key: for the ended attempt,
  // or claiming the new one.
  const std::string p = Progress(id, 0, 999, 9'000'000);
  service_->OnProgressDatagram(Signed(key1, id + ".1", p));
  EXPECT_EQ(Step(id), 0u) << "the ended attempt's run id";
  service_->OnProgressDatagram(Signed(key1, id + ".2", p));
  EXPECT_EQ(Step(id), 0u) << "the ended attempt's key for the new attempt";
  service_->OnProgressDatagram(Datagram(id + ".2", p, rt::ProgressTag(key1, id + ".1", p)));
  EXPECT_EQ(Step(id), 0u) << "the ended attempt's tag under the new attempt's id";
  now_ = started + 10 * kStartupAllowanceMs;
  service_->Tick();
  ASSERT_EQ(Failures(id).size(), 1u) << "attempt 2 hung: a datagram of attempt 1 counted";
  // The new attempt's own key counts.
  service_->OnProgressDatagram(Signed(key2, id + ".2", Progress(id, 0, 21, 2000)));
  EXPECT_EQ(Step(id), 21u);
}

TEST_F(SlurmProgressTest, DatagramsDoNotReportForAnAgentsAttempt) {
  Register("n1", 2);
  const std::string id = Submit(1);
  auto o = Beat("n1").runs(0);
  Beat("n1", {Report(o, true, 0, 0, 5)});
  ASSERT_EQ(Step(id), 5u);
  // Even tagged with the key cairnd would derive for it: its progress comes from its agent.
  service_->OnProgressDatagram(
      Signed(Key("t", o.run_id()), o.run_id(), Progress(id, 0, 999, 9'000'000)));
  EXPECT_EQ(Step(id), 5u);
}

}  // namespace
}  // namespace cairn::coord
