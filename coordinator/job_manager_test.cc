// The job manager driven through the Service exactly as agents and the CLI drive it:
// registrations, heartbeats with run reports, and the orders in the replies. Time is a
// fake clock; no process is started.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/io.h"
#include "coordinator/service.h"

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

}  // namespace
}  // namespace cairn::coord
