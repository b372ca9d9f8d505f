#include "coordinator/state_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/io.h"

namespace cairn::coord {
namespace {

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cairn_state_" + io::RandomSuffix());
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "state.db").string();
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::unique_ptr<StateStore> OpenOrDie() {
    auto s = StateStore::Open(path_);
    EXPECT_TRUE(s) << s.error().ToString();
    return s ? std::move(*s) : nullptr;
  }
  proto::JobSpec Spec(const std::string& name) {
    proto::JobSpec spec;
    spec.set_name(name);
    spec.add_command("train");
    spec.set_ranks(4);
    return spec;
  }

  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(StateStoreTest, DurabilitySettings) {
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  auto pragma = [&](const char* sql) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, sql, -1, &st, nullptr);
    sqlite3_step(st);
    std::string v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return v;
  };
  EXPECT_EQ(pragma("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(pragma("PRAGMA user_version"), "3");
  sqlite3_close(db);
}

TEST_F(StateStoreTest, JobsRunsEventsAndNodesRoundTrip) {
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  auto id = s->CreateJob(Spec("a"), 1000);
  ASSERT_TRUE(id);
  EXPECT_EQ(*id, "job-000001");
  auto id2 = s->CreateJob(Spec("b"), 1001);
  ASSERT_TRUE(id2);
  EXPECT_EQ(*id2, "job-000002");

  ASSERT_TRUE(s->SetJobState(*id, proto::JOB_RUNNING, "placed", 1100));
  auto a1 = s->BeginRun(*id, "placement-1", "", 0, 1100);
  ASSERT_TRUE(a1);
  EXPECT_EQ(*a1, 1u);
  ASSERT_TRUE(s->FinishRun(*id, 1, proto::RUN_FAILED, "rank 2 exited 137", 437, 1200));
  ASSERT_TRUE(s->AddRestart(*id));
  ASSERT_TRUE(s->SetCheckpointHead(*id, 400, "ab12"));
  auto a2 = s->BeginRun(*id, "placement-2", "ab12", 400, 1300);
  ASSERT_TRUE(a2);
  EXPECT_EQ(*a2, 2u);
  EXPECT_EQ(*s->RunPlacement(*id, 2), "placement-2");
  ASSERT_TRUE(s->AppendEvent(*id, "failed", "rank 2 exited 137", 1200));
  ASSERT_TRUE(s->AppendEvent(*id, "restarted", "attempt 2 from step 400", 1300));

  auto js = s->GetJob(*id);
  ASSERT_TRUE(js) << js.error().ToString();
  EXPECT_EQ(js->spec().name(), "a");
  EXPECT_EQ(js->state(), proto::JOB_RUNNING);
  EXPECT_EQ(js->restarts(), 1u);
  EXPECT_EQ(js->checkpoint_step(), 400u);
  ASSERT_EQ(js->runs_size(), 2);
  EXPECT_EQ(js->runs(0).state(), proto::RUN_FAILED);
  EXPECT_EQ(js->runs(0).failure(), "rank 2 exited 137");
  EXPECT_EQ(js->runs(0).last_step(), 437u);
  EXPECT_EQ(js->runs(1).resumed_from_manifest(), "ab12");
  EXPECT_EQ(js->runs(1).resumed_from_step(), 400u);
  EXPECT_EQ(js->runs(1).last_step(), 0u);  // still running: nothing stored yet
  EXPECT_EQ(js->step(), 0u);               // the last attempt's
  ASSERT_TRUE(s->FinishRun(*id, 2, proto::RUN_SUCCEEDED, "", 900, 1400));
  EXPECT_EQ(s->GetJob(*id)->runs(1).last_step(), 900u);
  EXPECT_EQ(s->GetJob(*id)->step(), 900u);
  EXPECT_EQ(s->GetJob(*id2)->step(), 0u);  // no attempt
  auto ev = s->Events(*id);
  ASSERT_TRUE(ev);
  ASSERT_EQ(ev->size(), 2u);
  EXPECT_EQ((*ev)[1].kind, "restarted");

  ASSERT_TRUE(s->SetJobState(*id2, proto::JOB_SUCCEEDED, "", 1500));
  EXPECT_EQ(s->ListJobs(false)->size(), 1u);
  EXPECT_EQ(s->ListJobs(true)->size(), 2u);

  NodeRecord n;
  n.id = "node-a";
  n.resources.set_cpus(8);
  n.address = "198.18.0.11";
  n.last_seen_ms = 5;
  ASSERT_TRUE(s->UpsertNode(n));
  ASSERT_TRUE(s->TouchNode("node-a", 9));
  ASSERT_TRUE(s->SetNodeHealth("node-a", true, 3, 600'009));
  auto nodes = s->ListNodes();
  ASSERT_TRUE(nodes);
  ASSERT_EQ(nodes->size(), 1u);
  EXPECT_EQ((*nodes)[0].resources.cpus(), 8u);
  EXPECT_EQ((*nodes)[0].last_seen_ms, 9);
  EXPECT_TRUE((*nodes)[0].quarantined);
  EXPECT_EQ((*nodes)[0].failures, 3u);
  EXPECT_EQ((*nodes)[0].quarantined_until_ms, 600'009);
  // A registration again keeps the node's health; a release clears the end too.
  ASSERT_TRUE(s->UpsertNode(n));
  EXPECT_EQ((*s->ListNodes())[0].quarantined_until_ms, 600'009);
  ASSERT_TRUE(s->SetNodeHealth("node-a", false, 0, 600'009));
  nodes = s->ListNodes();
  EXPECT_FALSE((*nodes)[0].quarantined);
  EXPECT_EQ((*nodes)[0].failures, 0u);
  EXPECT_EQ((*nodes)[0].quarantined_until_ms, 0);

  EXPECT_EQ(s->GetJob("job-999999").error().code(), Code::kNotFound);
  EXPECT_EQ(s->SetJobState("nope", proto::JOB_FAILED, "", 1).error().code(), Code::kNotFound);
  EXPECT_EQ(s->TouchNode("nope", 1).error().code(), Code::kNotFound);
}

TEST_F(StateStoreTest, RetriedRequestGetsTheFirstReplyAndNoSecondEffect) {
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  // What the coordinator does for SubmitJob, twice with the same request id.
  auto submit = [&]() -> Result<std::string> {
    std::string reply;
    auto st = s->InTransaction([&]() -> Status {
      CAIRN_ASSIGN_OR_RETURN(auto prior, s->FindReply("cli-1", 7, "SubmitJob"));
      if (prior) {
        reply = *prior;
        return OkStatus();
      }
      CAIRN_ASSIGN_OR_RETURN(reply, s->CreateJob(Spec("x"), 10));
      return s->SaveReply("cli-1", 7, "SubmitJob", reply, 10);
    });
    if (!st) return std::unexpected(st.error());
    return reply;
  };
  auto first = submit();
  auto second = submit();
  ASSERT_TRUE(first);
  ASSERT_TRUE(second);
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(s->ListJobs(true)->size(), 1u);
  auto other = s->FindReply("cli-1", 7, "CancelJob");
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().ToString().find("already used for SubmitJob"), std::string::npos);
  ASSERT_TRUE(s->PruneReplies(11));
  EXPECT_FALSE(s->FindReply("cli-1", 7, "SubmitJob")->has_value());
}

TEST_F(StateStoreTest, FailedTransactionLeavesNothing) {
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  auto st = s->InTransaction([&]() -> Status {
    CAIRN_RETURN_IF_ERROR(s->CreateJob(Spec("doomed"), 1));
    CAIRN_RETURN_IF_ERROR(s->AppendEvent("job-000001", "submitted", "", 1));
    return MakeError(Code::kInvalidArgument, "validation failed after the insert");
  });
  ASSERT_FALSE(st);
  EXPECT_TRUE(s->ListJobs(true)->empty());
  EXPECT_TRUE(s->Events("job-000001")->empty());
  // Ids are not burnt by a rollback, and the store is usable afterwards.
  EXPECT_EQ(*s->CreateJob(Spec("ok"), 2), "job-000001");
}

// A group: writes of several requests share one commit; a failing request inside it
// undoes only its own writes; nothing is visible to another connection before the commit.
TEST_F(StateStoreTest, GroupCommitsTogetherAndFailedMembersLeaveNothing) {
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  ASSERT_TRUE(s->BeginGroup());
  EXPECT_TRUE(s->group_open());
  ASSERT_TRUE(s->InTransaction([&]() -> Status {
    CAIRN_RETURN_IF_ERROR(s->CreateJob(Spec("first"), 1));
    return s->AppendEvent("job-000001", "submitted", "", 1);
  }));
  auto failed = s->InTransaction([&]() -> Status {
    CAIRN_RETURN_IF_ERROR(s->CreateJob(Spec("doomed"), 2));
    CAIRN_RETURN_IF_ERROR(s->AppendEvent("job-000002", "submitted", "", 2));
    return MakeError(Code::kInvalidArgument, "rejected after its insert");
  });
  ASSERT_FALSE(failed);
  ASSERT_TRUE(s->AppendEvent("", "single-statement", "joins the group", 3));
  ASSERT_TRUE(s->CreateJob(Spec("third"), 4));  // its own InTransaction: a savepoint

  // Another connection sees nothing yet.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  auto count = [&](const char* sql) {
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, sql, -1, &st, nullptr);
    sqlite3_step(st);
    const int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
  };
  EXPECT_EQ(count("SELECT count(*) FROM jobs"), 0);
  ASSERT_TRUE(s->CommitGroup());
  EXPECT_FALSE(s->group_open());
  EXPECT_EQ(count("SELECT count(*) FROM jobs"), 2);
  EXPECT_EQ(count("SELECT count(*) FROM events"), 2);
  sqlite3_close(db);

  auto jobs = s->ListJobs(true);
  ASSERT_TRUE(jobs);
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].spec().name(), "first");
  EXPECT_EQ((*jobs)[1].spec().name(), "third");
  EXPECT_EQ((*jobs)[1].job_id(), "job-000002");  // the failed member's id was not burnt
  // Committing with no group open is a no-op; a new group works.
  EXPECT_TRUE(s->CommitGroup());
  ASSERT_TRUE(s->BeginGroup());
  ASSERT_TRUE(s->CreateJob(Spec("fourth"), 5));
  ASSERT_TRUE(s->CommitGroup());
  EXPECT_EQ(s->ListJobs(true)->size(), 3u);
}

// kill -9 of the writing process: committed state is there after reopening; a
// transaction in flight is not there at all.
TEST_F(StateStoreTest, SurvivesKillNineOfTheWriter) {
  int to_parent[2];
  ASSERT_EQ(pipe(to_parent), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto s = StateStore::Open(path_);
    if (!s) _exit(10);
    for (int i = 0; i < 20; ++i) {
      if (!(*s)->CreateJob(Spec("committed"), i)) _exit(11);
    }
    // A transaction left open when the kill comes.
    auto st = (*s)->InTransaction([&]() -> Status {
      for (int i = 0; i < 5; ++i) CAIRN_RETURN_IF_ERROR((*s)->CreateJob(Spec("in-flight"), 99));
      char c = 'r';
      if (write(to_parent[1], &c, 1) != 1) _exit(12);
      pause();  // killed here
      return OkStatus();
    });
    _exit(st ? 0 : 13);
  }
  close(to_parent[1]);
  char c = 0;
  ASSERT_EQ(read(to_parent[0], &c, 1), 1);
  close(to_parent[0]);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));

  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  auto jobs = s->ListJobs(true);
  ASSERT_TRUE(jobs) << jobs.error().ToString();
  ASSERT_EQ(jobs->size(), 20u);
  for (const auto& j : *jobs) EXPECT_EQ(j.spec().name(), "committed");
  EXPECT_EQ(*s->CreateJob(Spec("next"), 100), "job-000021");
}

// A version-1 database (before provenance) is migrated in place and keeps its jobs.
TEST_F(StateStoreTest, VersionOneDatabaseIsMigrated) {
  {
    auto s = OpenOrDie();
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->CreateJob(Spec("old"), 1));
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP TABLE provenance; DROP TABLE job_code; DROP TABLE attestations; "
                         "DROP TABLE job_links; ALTER TABLE runs DROP COLUMN resumed_loaded; "
                         "ALTER TABLE runs DROP COLUMN executor_id; "
                         "ALTER TABLE runs DROP COLUMN last_step; "
                         "ALTER TABLE nodes DROP COLUMN quarantined_until_ms; "
                         "PRAGMA user_version = 1;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->ListJobs(true)->size(), 1u);
  ASSERT_TRUE(s->SaveProvenance("job-000001", 1, "ab", "record"));
  auto p = s->Provenance("job-000001");
  ASSERT_TRUE(p) << p.error().ToString();
  ASSERT_EQ(p->size(), 1u);
  EXPECT_EQ((*p)[0].digest_hex, "ab");
}

// A version-2 database (before last steps and quarantine ends) is migrated in place:
// its jobs, runs and quarantined nodes stay, the new columns start at 0 and then work.
TEST_F(StateStoreTest, VersionTwoDatabaseIsMigrated) {
  {
    auto s = OpenOrDie();
    ASSERT_TRUE(s);
    ASSERT_TRUE(s->CreateJob(Spec("old"), 1));
    ASSERT_TRUE(s->BeginRun("job-000001", "placement-1", "cd34", 200, 2));
    ASSERT_TRUE(s->FinishRun("job-000001", 1, proto::RUN_FAILED, "node n1 lost", 0, 3));
    ASSERT_TRUE(s->BeginRun("job-000001", "placement-2", "cd34", 200, 4));
    ASSERT_TRUE(s->SaveProvenance("job-000001", 2, "ef", "record"));
    NodeRecord n;
    n.id = "n1";
    n.resources.set_cpus(2);
    n.address = "198.18.0.1";
    n.last_seen_ms = 5;
    ASSERT_TRUE(s->UpsertNode(n));
    ASSERT_TRUE(s->SetNodeHealth("n1", true, 3, 0));
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "ALTER TABLE runs DROP COLUMN last_step; "
                         "ALTER TABLE nodes DROP COLUMN quarantined_until_ms; "
                         "PRAGMA user_version = 2;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);

  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  auto js = s->GetJob("job-000001");
  ASSERT_TRUE(js) << js.error().ToString();
  EXPECT_EQ(js->spec().name(), "old");
  ASSERT_EQ(js->runs_size(), 2);
  EXPECT_EQ(js->runs(0).state(), proto::RUN_FAILED);
  EXPECT_EQ(js->runs(0).failure(), "node n1 lost");
  EXPECT_EQ(js->runs(0).last_step(), 0u);
  EXPECT_EQ(js->runs(1).resumed_from_manifest(), "cd34");
  EXPECT_EQ(*s->RunPlacement("job-000001", 2), "placement-2");
  EXPECT_EQ(s->Provenance("job-000001")->size(), 1u);
  auto nodes = s->ListNodes();
  ASSERT_TRUE(nodes) << nodes.error().ToString();
  ASSERT_EQ(nodes->size(), 1u);
  EXPECT_TRUE((*nodes)[0].quarantined);  // as it was: without a time limit
  EXPECT_EQ((*nodes)[0].failures, 3u);
  EXPECT_EQ((*nodes)[0].quarantined_until_ms, 0);
  // The new columns work, and survive another open.
  ASSERT_TRUE(s->FinishRun("job-000001", 2, proto::RUN_SUCCEEDED, "", 1234, 6));
  ASSERT_TRUE(s->SetNodeHealth("n1", true, 3, 7000));
  s.reset();
  s = OpenOrDie();
  ASSERT_TRUE(s);
  EXPECT_EQ(s->GetJob("job-000001")->runs(1).last_step(), 1234u);
  EXPECT_EQ(s->GetJob("job-000001")->step(), 1234u);
  EXPECT_EQ((*s->ListNodes())[0].quarantined_until_ms, 7000);
  db = nullptr;
  ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 3);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_F(StateStoreTest, ProvenanceAttestationsAndLinksRoundTrip) {
  auto s = OpenOrDie();
  ASSERT_TRUE(s);
  ASSERT_TRUE(s->CreateJob(Spec("parent"), 1));
  ASSERT_TRUE(s->CreateJob(Spec("child"), 2));
  ASSERT_TRUE(s->SaveJobCode("job-000002", "code-bytes"));
  EXPECT_EQ(**s->JobCode("job-000002"), "code-bytes");
  EXPECT_FALSE(s->JobCode("job-000001")->has_value());
  ASSERT_TRUE(s->BeginRun("job-000002", "p", "", 0, 3));
  ASSERT_TRUE(s->SaveProvenance("job-000002", 1, "d1", "r1"));
  ASSERT_TRUE(s->SetResumedLoaded("job-000002", 1, "m0"));
  auto p = s->Provenance("job-000002");
  ASSERT_TRUE(p);
  ASSERT_EQ(p->size(), 1u);
  EXPECT_EQ((*p)[0].resumed_loaded, "m0");
  AttestationRow a{.job_id = "job-000001", .attempt = 1, .step = 100, .subject_hex = "aa",
                   .name = "checkpoint step 100", .path = "/x", .at_ms = 4};
  EXPECT_TRUE(*s->AddAttestation(a));
  EXPECT_FALSE(*s->AddAttestation(a));  // the same one twice: recorded once
  EXPECT_EQ(s->Attestations("job-000001")->size(), 1u);
  EXPECT_EQ(*s->JobsWithSubject("aa"), std::vector<std::string>{"job-000001"});
  ASSERT_TRUE(s->AddLink("job-000002", "job-000001", "model input /x"));
  ASSERT_TRUE(s->AddLink("job-000002", "job-000001", "model input /x"));
  auto links = s->Links("job-000002");
  ASSERT_TRUE(links);
  ASSERT_EQ(links->size(), 1u);
  EXPECT_EQ((*links)[0].first, "job-000001");
}

TEST_F(StateStoreTest, ForeignCorruptAndNewerFilesAreRefusedByName) {
  {
    std::ofstream(path_, std::ios::binary) << std::string(8192, 'x');
    auto s = StateStore::Open(path_);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().ToString().find(path_), std::string::npos) << s.error().ToString();
    std::filesystem::remove(path_);
  }
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "CREATE TABLE other(x)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
    auto s = StateStore::Open(path_);
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().ToString().find("not a cairn state database"), std::string::npos)
        << s.error().ToString();
    std::filesystem::remove(path_);
  }
  {
    auto s = OpenOrDie();
    ASSERT_TRUE(s);
    s.reset();
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "PRAGMA user_version = 9", nullptr, nullptr, nullptr);
    sqlite3_close(db);
    auto again = StateStore::Open(path_);
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().code(), Code::kFailedPrecondition);
    EXPECT_NE(again.error().ToString().find("schema version 9 is newer"), std::string::npos);
  }
  auto missing_dir = StateStore::Open((dir_ / "no" / "such" / "state.db").string());
  ASSERT_FALSE(missing_dir);
  EXPECT_NE(missing_dir.error().ToString().find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace cairn::coord
