#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "common/io.h"
#include "proto/cairn.pb.h"
#include "runtime/launch.h"
#include "runtime/preemption.h"
#include "runtime/progress.h"
#include "runtime/rng.h"

namespace cairn::rt {
namespace {

// ---- Philox -----------------------------------------------------------------------

TEST(Philox, MatchesRandom123KnownAnswers) {
  using C = Philox4x32::Counter;
  using K = Philox4x32::Key;
  EXPECT_EQ(Philox4x32::Block(C{0, 0, 0, 0}, K{0, 0}),
            (C{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(Philox4x32::Block(C{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                              K{0xffffffff, 0xffffffff}),
            (C{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(Philox4x32::Block(C{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                              K{0xa4093822, 0x299f31d0}),
            (C{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, StreamIsTheBlockSequence) {
  Philox r(0, 0);
  auto b0 = Philox4x32::Block({0, 0, 0, 0}, {0, 0});
  auto b1 = Philox4x32::Block({1, 0, 0, 0}, {0, 0});
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r.NextU32(), b0[static_cast<std::size_t>(i)]);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(r.NextU32(), b1[static_cast<std::size_t>(i)]);
}

TEST(Philox, SerializedStateResumesExactlyAtEveryOffset) {
  for (int skip = 0; skip < 9; ++skip) {
    Philox a(0x1234567890abcdefULL, 7);
    for (int i = 0; i < skip; ++i) a.NextU32();
    auto state = a.Serialize();
    auto b = Philox::Deserialize(state);
    ASSERT_TRUE(b) << b.error().ToString();
    EXPECT_TRUE(*b == a);
    for (int i = 0; i < 100; ++i) ASSERT_EQ(a.NextU64(), b->NextU64()) << skip << " " << i;
  }
}

TEST(Philox, DeserializeRejectsDamagedState) {
  Philox a(42);
  a.NextU32();
  auto state = a.Serialize();
  EXPECT_EQ(Philox::Deserialize(std::span(state).first(10)).error().code(),
            Code::kInvalidArgument);
  for (std::size_t byte : {0u, 5u, 20u, 29u, 33u}) {
    auto bad = state;
    bad[byte] ^= std::byte{1};
    auto r = Philox::Deserialize(bad);
    EXPECT_FALSE(r) << "flip in byte " << byte;
  }
}

TEST(Philox, UniformAndBelowStayInRange) {
  Philox r(9);
  std::map<uint64_t, int> counts;
  for (int i = 0; i < 60000; ++i) {
    float u = r.NextUniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    counts[r.Below(6)]++;
  }
  ASSERT_EQ(counts.size(), 6u);
  for (auto [v, c] : counts) {
    EXPECT_LT(v, 6u);
    EXPECT_GT(c, 9000);  // 10000 expected each; far from any plausible deviation
    EXPECT_LT(c, 11000);
  }
}

TEST(EpochPermutation, PureFunctionOfSeedAndEpochAndAPermutation) {
  auto p = EpochPermutation(1000, 5, 3);
  EXPECT_EQ(p, EpochPermutation(1000, 5, 3));
  EXPECT_NE(p, EpochPermutation(1000, 5, 4));
  EXPECT_NE(p, EpochPermutation(1000, 6, 3));
  auto sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_TRUE(EpochPermutation(0, 1, 1).empty());
  EXPECT_EQ(EpochPermutation(1, 1, 1), std::vector<uint32_t>{0});
}

// ---- launch contract ----------------------------------------------------------------

EnvLookup Env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* k) -> const char* {
    auto it = shared->find(k);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

TEST(LaunchContract, DefaultsToASingleProcess) {
  auto info = ReadLaunchContract(Env({}));
  ASSERT_TRUE(info);
  EXPECT_EQ(info->rank, 0);
  EXPECT_EQ(info->world_size, 1);
  EXPECT_EQ(info->launcher, "single");
}

TEST(LaunchContract, EachLauncherAndPrecedence) {
  struct Case {
    std::map<std::string, std::string> env;
    std::string launcher;
    int rank, size, local;
  };
  std::vector<Case> cases = {
      {{{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}}, "torchrun", 3, 4, 1},
      {{{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "0"}}, "slurm", 2, 8, 0},
      {{{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
        {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}, "openmpi", 1, 2, 1},
      // srun --mpi=pmix sets both; Open MPI's own variables win over SLURM's, and
      // cairn's over everyone's.
      {{{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"},
        {"SLURM_NTASKS", "1"}}, "openmpi", 1, 2, 0},
      {{{"CAIRN_RANK", "5"}, {"CAIRN_WORLD_SIZE", "6"}, {"RANK", "0"}, {"WORLD_SIZE", "1"}},
       "cairn", 5, 6, 0},
  };
  for (const auto& c : cases) {
    auto info = ReadLaunchContract(Env(c.env));
    ASSERT_TRUE(info) << info.error().ToString();
    EXPECT_EQ(info->launcher, c.launcher);
    EXPECT_EQ(info->rank, c.rank);
    EXPECT_EQ(info->world_size, c.size);
    EXPECT_EQ(info->local_rank, c.local);
  }
}

TEST(LaunchContract, ErrorsNameTheVariable) {
  auto missing = ReadLaunchContract(Env({{"RANK", "0"}}));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().ToString().find("WORLD_SIZE is not set"), std::string::npos)
      << missing.error().ToString();
  auto junk = ReadLaunchContract(Env({{"SLURM_PROCID", "x1"}, {"SLURM_NTASKS", "2"}}));
  ASSERT_FALSE(junk);
  EXPECT_NE(junk.error().ToString().find("SLURM_PROCID='x1'"), std::string::npos);
  auto range = ReadLaunchContract(Env({{"CAIRN_RANK", "4"}, {"CAIRN_WORLD_SIZE", "4"}}));
  ASSERT_FALSE(range);
  EXPECT_EQ(range.error().code(), Code::kInvalidArgument);
  EXPECT_NE(range.error().ToString().find("CAIRN_RANK=4 is not below CAIRN_WORLD_SIZE=4"),
            std::string::npos);
  auto zero = ReadLaunchContract(Env({{"RANK", "0"}, {"WORLD_SIZE", "0"}}));
  ASSERT_FALSE(zero);
}

TEST(LaunchContract, CairnVariables) {
  auto info = ReadLaunchContract(Env({{"CAIRN_RUN_ID", "r1"},
                                      {"CAIRN_PROGRESS_SOCKET", "/tmp/p.sock"},
                                      {"CAIRN_CKPT_DIR", "/ck"}}));
  ASSERT_TRUE(info);
  EXPECT_EQ(info->run_id, "r1");
  EXPECT_EQ(info->progress_socket, "/tmp/p.sock");
  EXPECT_EQ(info->ckpt_dir, "/ck");
}

// ---- preemption -----------------------------------------------------------------------

TEST(Preemption, SignalSetsTheFlagOnly) {
  InstallPreemptionHandlers();
  RequestPreemption(0);
  EXPECT_FALSE(PreemptionRequested());
  ASSERT_EQ(raise(SIGUSR1), 0);
  EXPECT_TRUE(PreemptionRequested());
  EXPECT_EQ(PreemptionSignal(), SIGUSR1);
  RequestPreemption(0);
  ASSERT_EQ(raise(SIGTERM), 0);  // the process survives: the handler only records it
  EXPECT_EQ(PreemptionSignal(), SIGTERM);
  RequestPreemption(0);
}

// ---- progress ---------------------------------------------------------------------------

// A bound datagram socket at a fresh path, as an agent's progress socket (receives time
// out after 2 s); fd is -1 when it could not be made.
void BindProgressSocket(std::string* path, int* fd) {
  *path = (std::filesystem::temp_directory_path() /
           ("cairn_progress_" + io::RandomSuffix() + ".sock")).string();
  *fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(*fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path->c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(*fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval tv{2, 0};
  setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

TEST(Progress, DatagramsReachTheSocketAndAbsenceIsHarmless) {
  std::string path;
  int fd = -1;
  ASSERT_NO_FATAL_FAILURE(BindProgressSocket(&path, &fd));

  ProgressReporter rep(path, "run-7", 3);
  ASSERT_TRUE(rep.enabled());
  rep.Report(42, 0.5, 1234.0);
  char buf[1024];
  ssize_t n = recv(fd, buf, sizeof(buf), 0);
  ASSERT_GT(n, 0);
  cairn::proto::RankProgress msg;
  ASSERT_TRUE(msg.ParseFromArray(buf, static_cast<int>(n)));
  EXPECT_EQ(msg.run_id(), "run-7");
  EXPECT_EQ(msg.rank(), 3u);
  EXPECT_EQ(msg.step(), 42u);
  EXPECT_DOUBLE_EQ(msg.loss(), 0.5);
  EXPECT_EQ(msg.pid(), static_cast<uint32_t>(getpid()));
  EXPECT_GT(msg.unix_ms(), 0);
  EXPECT_EQ(rep.sent(), 1u);
  rep.Report(43, 0.4, 1.0);  // right after the last: coalesced
  EXPECT_EQ(rep.coalesced(), 1u);
  rep.ReportExit(0);  // always sent: the agent must see a rank exit on its own
  n = recv(fd, buf, sizeof(buf), 0);
  ASSERT_GT(n, 0);
  ASSERT_TRUE(msg.ParseFromArray(buf, static_cast<int>(n)));
  EXPECT_TRUE(msg.exiting());
  EXPECT_EQ(msg.exit_code(), 0);
  EXPECT_EQ(msg.step(), 43u);

  close(fd);
  unlink(path.c_str());
  std::this_thread::sleep_for(std::chrono::milliseconds(ProgressReporter::kMinIntervalMs + 10));
  rep.Report(44, 0.4, 1.0);  // receiver gone: dropped, not an error
  EXPECT_EQ(rep.dropped(), 1u);

  ProgressReporter off("", "run-7", 0);
  EXPECT_FALSE(off.enabled());
  off.Report(1, 1, 1);
  EXPECT_EQ(off.sent() + off.dropped(), 0u);
}

// A network destination (cairnd's, for ranks without an agent): every datagram is a
// ProgressDatagram naming the key's attempt, with a tag only the key's holder can make.
TEST(Progress, UdpDatagramsCarryTheKeyIdAndAnHmacTag) {
  const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const std::string key_hex(64, 'a');  // 32 bytes of 0xaa
  const std::string key(32, static_cast<char>(0xaa));
  ProgressReporter rep(
      "udp://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/job-000007.2?key=" + key_hex,
      "job-000007", 1);
  ASSERT_TRUE(rep.enabled());
  rep.Report(9, 0.25, 10.0);
  char buf[2048];
  const ssize_t n = recv(fd, buf, sizeof(buf), 0);
  ASSERT_GT(n, 0);
  cairn::proto::ProgressDatagram d;
  ASSERT_TRUE(d.ParseFromArray(buf, static_cast<int>(n)));
  EXPECT_EQ(d.key_id(), "job-000007.2");
  EXPECT_EQ(d.tag().size(), 32u);
  EXPECT_EQ(d.tag(), ProgressTag(key, "job-000007.2", d.progress()));
  EXPECT_NE(d.tag(), ProgressTag(std::string(32, 'b'), "job-000007.2", d.progress()));
  EXPECT_NE(d.tag(), ProgressTag(key, "job-000007.3", d.progress()));
  cairn::proto::RankProgress msg;
  ASSERT_TRUE(msg.ParseFromString(d.progress()));
  EXPECT_EQ(msg.run_id(), "job-000007");
  EXPECT_EQ(msg.rank(), 1u);
  EXPECT_EQ(msg.step(), 9u);
  close(fd);

  // Destinations that do not parse disable the reports instead of failing.
  const std::vector<std::string> bad_destinations = {"udp://127.0.0.1:1/run?key=abc",
                                                     "udp://127.0.0.1/run?key=" + key_hex,
                                                     "udp://127.0.0.1:1?key=" + key_hex};
  for (const std::string& bad : bad_destinations) {
    ProgressReporter off(bad, "run", 0);
    EXPECT_FALSE(off.enabled()) << bad;
  }
}

// Every report carries the last checkpoint heads, oldest first, so that heads committed
// between two of the agent's heartbeats all reach cairnd.
TEST(Progress, ReportsCarryTheRecentCheckpointHeads) {
  std::string path;
  int fd = -1;
  ASSERT_NO_FATAL_FAILURE(BindProgressSocket(&path, &fd));
  ProgressReporter rep(path, "run-8", 0);
  const std::size_t n_heads = ProgressReporter::kRecentHeads + 4;
  for (std::size_t i = 1; i <= n_heads; ++i) rep.SetCheckpoint(i * 10, "h" + std::to_string(i));
  rep.SetCheckpoint(n_heads * 10, "h-last");  // the same step again replaces, not adds
  rep.Report(n_heads * 10, 0.1, 1.0);
  char buf[8192];
  ssize_t n = recv(fd, buf, sizeof(buf), 0);
  ASSERT_GT(n, 0);
  cairn::proto::RankProgress msg;
  ASSERT_TRUE(msg.ParseFromArray(buf, static_cast<int>(n)));
  ASSERT_EQ(static_cast<std::size_t>(msg.recent_heads_size()), ProgressReporter::kRecentHeads);
  EXPECT_EQ(msg.recent_heads(0).step(), (n_heads - ProgressReporter::kRecentHeads + 1) * 10);
  for (int i = 1; i < msg.recent_heads_size(); ++i) {
    EXPECT_EQ(msg.recent_heads(i).step(), msg.recent_heads(i - 1).step() + 10);
  }
  EXPECT_EQ(msg.recent_heads(msg.recent_heads_size() - 1).head(), "h-last");
  EXPECT_EQ(msg.ckpt_step(), n_heads * 10);
  EXPECT_EQ(msg.ckpt_head(), "h-last");
  close(fd);
  unlink(path.c_str());
}

}  // namespace
}  // namespace cairn::rt
