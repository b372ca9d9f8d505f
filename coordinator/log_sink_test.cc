// LogSink: chunks shipped by agents land below the attempt's log directory, only from
// the node the attempt was placed on, at their offset; bad chunks are refused whole.
#include "coordinator/log_sink.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>

namespace cairn::coord {
namespace {
namespace fs = std::filesystem;

class LogSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_logsink_{}_{}", ::getpid(),
                                                   std::random_device{}());
    fs::create_directories(dir_);
    auto s = StateStore::Open((dir_ / "state.db").string());
    ASSERT_TRUE(s) << s.error().ToString();
    store_ = std::move(*s);
    proto::JobSpec spec;
    spec.add_command("true");
    spec.set_ranks(2);
    auto job = store_->CreateJob(spec, 1000);
    ASSERT_TRUE(job) << job.error().ToString();
    job_ = *job;
    proto::PlacementRecord placement;  // rank 0 on n1, rank 1 on n2
    for (const char* node : {"n1", "n2"}) {
      auto* r = placement.add_ranks();
      r->set_rank(static_cast<uint32_t>(placement.ranks_size() - 1));
      r->set_node_id(node);
    }
    auto run = store_->BeginRun(job_, placement.SerializeAsString(), "", 0, 2000);
    ASSERT_TRUE(run) << run.error().ToString();
    attempt_ = *run;
    sink_ = std::make_unique<LogSink>(dir_.string(), store_.get());
  }
  void TearDown() override {
    sink_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }
  proto::LogChunk Chunk(const std::string& path, uint64_t offset, const std::string& data) {
    proto::LogChunk c;
    c.set_job_id(job_);
    c.set_attempt(attempt_);
    c.set_path(path);
    c.set_offset(offset);
    c.set_data(data);
    return c;
  }
  std::string Read(const std::string& path) {
    std::ifstream f(dir_ / "logs" / job_ / fmt::format("attempt-{}", attempt_) / path);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }

  fs::path dir_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<LogSink> sink_;
  std::string job_;
  uint32_t attempt_ = 0;
};

TEST_F(LogSinkTest, ChunksLandAtTheirOffsetAndARepeatIsHarmless) {
  ASSERT_TRUE(sink_->Write("n1", Chunk("rank-0.log", 0, "hello ")));
  ASSERT_TRUE(sink_->Write("n1", Chunk("rank-0.log", 6, "world\n")));
  ASSERT_TRUE(sink_->Write("n1", Chunk("rank-0.log", 6, "world\n")));  // a resent heartbeat
  EXPECT_EQ(Read("rank-0.log"), "hello world\n");
  // Subdirectories (mpirun's output files) are created.
  ASSERT_TRUE(sink_->Write("n2", Chunk("1/rank.1/stdout", 0, "x")));
  EXPECT_EQ(Read("1/rank.1/stdout"), "x");
}

TEST_F(LogSinkTest, OnlyTheNodesOfTheAttemptMayWriteItsLogs) {
  auto w = sink_->Write("n3", Chunk("rank-0.log", 0, "forged"));
  ASSERT_FALSE(w);
  EXPECT_NE(w.error().ToString().find("not placed on this node"), std::string::npos)
      << w.error().ToString();
  auto unknown = Chunk("rank-0.log", 0, "x");
  unknown.set_attempt(attempt_ + 5);
  auto u = sink_->Write("n1", unknown);
  ASSERT_FALSE(u);
  EXPECT_NE(u.error().ToString().find("no such attempt"), std::string::npos) << u.error().ToString();
  EXPECT_FALSE(fs::exists(dir_ / "logs"));
}

TEST_F(LogSinkTest, PathsThatLeaveTheAttemptsDirectoryAreRefused) {
  for (const std::string& bad : {std::string("../../state.db"), std::string("/etc/passwd"),
                                 std::string("a//b"), std::string("./x"), std::string(""),
                                 std::string("a/../../b"), std::string(600, 'x'),
                                 std::string("a/b/c/d/e/f/g/h/i")}) {
    auto w = sink_->Write("n1", Chunk(bad, 0, "x"));
    EXPECT_FALSE(w) << "accepted '" << bad << "'";
    if (!w) {
      EXPECT_EQ(w.error().code(), Code::kInvalidArgument);
    }
  }
  EXPECT_FALSE(fs::exists(dir_ / "logs"));
  EXPECT_TRUE(fs::exists(dir_ / "state.db"));
}

TEST_F(LogSinkTest, OversizedChunksAndOffsetsAreRefused) {
  EXPECT_FALSE(sink_->Write("n1", Chunk("rank-0.log", 0, std::string((1 << 20) + 1, 'x'))));
  EXPECT_FALSE(sink_->Write("n1", Chunk("rank-0.log", uint64_t{65} << 30, "x")));
  EXPECT_FALSE(fs::exists(dir_ / "logs"));
}

TEST_F(LogSinkTest, AProbeTellsWhetherAnAgentSharesTheStateDirectory) {
  fs::create_directories(dir_ / "agents" / "n1");
  std::ofstream(dir_ / "agents" / "n1" / "probe") << "abc123";
  EXPECT_TRUE(sink_->SharesStateDir("n1", "abc123"));
  EXPECT_FALSE(sink_->SharesStateDir("n1", "other"));
  EXPECT_FALSE(sink_->SharesStateDir("n2", "abc123"));  // no probe of its own here
  EXPECT_FALSE(sink_->SharesStateDir("n1", ""));
  EXPECT_FALSE(sink_->SharesStateDir("../agents/n1", "abc123"));
}

}  // namespace
}  // namespace cairn::coord
