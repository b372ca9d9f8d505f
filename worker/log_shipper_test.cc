// LogShipper: new bytes of a tracked attempt's log files go out with heartbeats, are
// sent again until delivered, respect the per-heartbeat budget, and an ended attempt is
// forgotten once everything of it was delivered.
#include "worker/log_shipper.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <fmt/format.h>

namespace cairn::worker {
namespace {
namespace fs = std::filesystem;

class LogShipperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / fmt::format("cairn_shipper_{}_{}", ::getpid(),
                                                    std::random_device{}());
    fs::create_directories(root_ / "job-1" / "attempt-2" / "1" / "rank.0");
    shipper_ = std::make_unique<LogShipper>(root_.string());
    shipper_->set_enabled(true);
  }
  void TearDown() override { fs::remove_all(root_); }
  void Append(const std::string& path, const std::string& text) {
    std::ofstream(root_ / "job-1" / "attempt-2" / path, std::ios::app) << text;
  }
  // path -> the bytes the heartbeat carries, at their offsets.
  static std::map<std::string, std::string> Carried(const proto::HeartbeatRequest& hb) {
    std::map<std::string, std::string> out;
    for (const auto& c : hb.logs()) {
      EXPECT_EQ(c.job_id(), "job-1");
      EXPECT_EQ(c.attempt(), 2u);
      std::string& s = out[c.path()];
      if (s.size() < c.offset() + c.data().size()) s.resize(c.offset() + c.data().size());
      s.replace(c.offset(), c.data().size(), c.data());
    }
    return out;
  }

  fs::path root_;
  std::unique_ptr<LogShipper> shipper_;
};

TEST_F(LogShipperTest, NewBytesAreSentUntilDeliveredThenOnlyWhatIsNew) {
  Append("rank-0.log", "one\n");
  Append("1/rank.0/stdout", "out\n");
  EXPECT_FALSE(shipper_->Backlog());  // nothing tracked yet
  shipper_->Track("job-1", 2);
  EXPECT_TRUE(shipper_->Backlog());
  proto::HeartbeatRequest a;
  shipper_->Collect(&a);
  EXPECT_EQ(Carried(a), (std::map<std::string, std::string>{{"1/rank.0/stdout", "out\n"},
                                                            {"rank-0.log", "one\n"}}));
  proto::HeartbeatRequest lost;  // `a` was never answered: the same bytes again
  shipper_->Collect(&lost);
  EXPECT_EQ(Carried(lost), Carried(a));
  shipper_->Delivered(a);
  EXPECT_FALSE(shipper_->Backlog());
  Append("rank-0.log", "two\n");
  proto::HeartbeatRequest b;
  shipper_->Collect(&b);
  ASSERT_EQ(b.logs_size(), 1);
  EXPECT_EQ(b.logs(0).path(), "rank-0.log");
  EXPECT_EQ(b.logs(0).offset(), 4u);
  EXPECT_EQ(b.logs(0).data(), "two\n");
}

TEST_F(LogShipperTest, AHeartbeatCarriesAtMostItsBudgetInBoundedChunks) {
  Append("rank-0.log", std::string(LogShipper::kMaxChunkBytes * 2 + 10, 'x'));
  shipper_->Track("job-1", 2);
  proto::HeartbeatRequest a;
  shipper_->Collect(&a, LogShipper::kMaxChunkBytes + 5);
  ASSERT_EQ(a.logs_size(), 2);
  EXPECT_EQ(a.logs(0).data().size(), LogShipper::kMaxChunkBytes);
  EXPECT_EQ(a.logs(1).data().size(), 5u);
  shipper_->Delivered(a);
  uint64_t total = LogShipper::kMaxChunkBytes + 5;
  for (int i = 0; i < 10 && shipper_->Backlog(); ++i) {
    proto::HeartbeatRequest more;
    shipper_->Collect(&more);
    for (const auto& c : more.logs()) {
      EXPECT_EQ(c.offset(), total);
      EXPECT_LE(c.data().size(), LogShipper::kMaxChunkBytes);
      total += c.data().size();
    }
    shipper_->Delivered(more);
  }
  EXPECT_EQ(total, LogShipper::kMaxChunkBytes * 2 + 10);
}

TEST_F(LogShipperTest, AnEndedAttemptIsForgottenOnlyOnceAllOfItWasDelivered) {
  Append("rank-0.log", "last words\n");
  shipper_->Track("job-1", 2);
  shipper_->Untrack("job-1", 2);
  proto::HeartbeatRequest a;
  shipper_->Collect(&a);
  ASSERT_EQ(a.logs_size(), 1);  // ended, but not delivered yet: still sent
  shipper_->Delivered(a);
  Append("rank-0.log", "after the end\n");
  proto::HeartbeatRequest b;
  shipper_->Collect(&b);
  EXPECT_EQ(b.logs_size(), 0);  // forgotten
  EXPECT_FALSE(shipper_->Backlog());
}

TEST_F(LogShipperTest, NothingIsSentWhileShippingIsOff) {
  Append("rank-0.log", "x");
  shipper_->Track("job-1", 2);
  shipper_->set_enabled(false);
  proto::HeartbeatRequest a;
  shipper_->Collect(&a);
  EXPECT_EQ(a.logs_size(), 0);
  EXPECT_FALSE(shipper_->Backlog());
}

}  // namespace
}  // namespace cairn::worker
