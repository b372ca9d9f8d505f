// Communicator (MPI backend) under mpirun with 1, 2 and 4 ranks: every result is checked
// against a serial reference each rank computes by itself. Values are chosen so that
// float sums are exact in any order (small multiples of 1/4), so equality is exact.
#include <gtest/gtest.h>
#include <mpi.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <thread>

#include "checkpoint/reader.h"
#include "checkpoint/test_util.h"
#include "checkpoint/writer.h"
#include "collectives/agreement.h"
#include "collectives/mpi_communicator.h"
#include "collectives/mpi_test_main.h"

namespace cairn::coll {
namespace {

MpiCommunicator* g_world = nullptr;

template <typename T>
T Value(int rank, std::size_t i) {
  return static_cast<T>(static_cast<double>((i * 7 + static_cast<std::size_t>(rank) * 13) % 1024) *
                        0.25);
}

template <typename T>
void CheckAllReduce(std::size_t count, MpiCommunicator* comm = nullptr) {
  auto& c = comm != nullptr ? *comm : *g_world;
  std::vector<T> data(count);
  for (std::size_t i = 0; i < count; ++i) data[i] = Value<T>(c.rank(), i);
  ASSERT_TRUE(c.AllReduceSum(std::span<T>(data))) << "count " << count;
  for (std::size_t i = 0; i < count; ++i) {
    T expect = 0;
    for (int r = 0; r < c.size(); ++r) expect += Value<T>(r, i);
    ASSERT_EQ(data[i], expect) << "element " << i << " of " << count;
  }
}

TEST(Collectives, RankAndSize) {
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  EXPECT_EQ(g_world->rank(), world_rank);
  EXPECT_EQ(g_world->size(), world_size);
  EXPECT_EQ(g_world->backend(), "mpi");
  EXPECT_EQ(g_world->memory_space(), MemorySpace::kHost);
}

TEST(Collectives, AllReduceMatchesSerialReferenceAllTypesAndOddLengths) {
  for (std::size_t n : {0u, 1u, 3u, 17u, 1023u, 4097u, 100003u}) {
    CheckAllReduce<float>(n);
    CheckAllReduce<double>(n);
    CheckAllReduce<int64_t>(n);
  }
}

// Every algorithm (small_bytes 0 forces the large-buffer ones even for one element; 2^30
// the small-buffer ones for every size tested) gives the serial reference exactly.
TEST(Collectives, AllReduceEveryAlgorithmMatchesSerialReference) {
  auto dup = g_world->Duplicate();
  ASSERT_TRUE(dup) << dup.error().ToString();
  for (std::size_t small : {std::size_t{0}, std::size_t{1} << 30}) {
    (*dup)->set_allreduce_tuning({small});
    for (std::size_t n : {1u, 2u, 3u, 5u, 17u, 1023u, 4097u, 100003u}) {
      SCOPED_TRACE(::testing::Message() << "small_bytes " << small << " count " << n);
      CheckAllReduce<float>(n, dup->get());
      CheckAllReduce<double>(n, dup->get());
      CheckAllReduce<int64_t>(n, dup->get());
    }
  }
}

TEST(Collectives, AllReduceLargeBuffer) {
  CheckAllReduce<float>(std::size_t{16} << 20);  // 64 MiB
}

TEST(Collectives, AllReduceInPiecesWhenCountExceedsPieceSize) {
  auto dup = g_world->Duplicate();
  ASSERT_TRUE(dup) << dup.error().ToString();
  (*dup)->set_piece_elements(1000);
  std::vector<int64_t> data(4097);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = Value<int64_t>((*dup)->rank(), i);
  ASSERT_TRUE((*dup)->AllReduceSum(std::span<int64_t>(data)));
  for (std::size_t i = 0; i < data.size(); ++i) {
    int64_t expect = 0;
    for (int r = 0; r < (*dup)->size(); ++r) expect += Value<int64_t>(r, i);
    ASSERT_EQ(data[i], expect) << i;
  }
  std::string bytes(2500, '\0');
  if ((*dup)->rank() == 0) {
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 31);
  }
  ASSERT_TRUE((*dup)->Broadcast(bytes.data(), bytes.size(), 0));
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    ASSERT_EQ(bytes[i], static_cast<char>(i * 31)) << i;
  }
}

TEST(Collectives, BroadcastFromEveryRoot) {
  auto& c = *g_world;
  for (int root = 0; root < c.size(); ++root) {
    std::vector<uint8_t> buf(777);
    for (std::size_t i = 0; i < buf.size(); ++i) {
      buf[i] = c.rank() == root ? static_cast<uint8_t>(i + root) : 0xEE;
    }
    ASSERT_TRUE(c.Broadcast(buf.data(), buf.size(), root));
    for (std::size_t i = 0; i < buf.size(); ++i) {
      ASSERT_EQ(buf[i], static_cast<uint8_t>(i + root)) << "root " << root << " byte " << i;
    }
  }
  ASSERT_TRUE(c.Broadcast(nullptr, 0, 0));  // zero bytes is a valid collective
}

TEST(Collectives, BroadcastRejectsBadRootWithoutPoisoning) {
  auto& c = *g_world;
  std::array<char, 4> b{};
  auto s = c.Broadcast(b.data(), b.size(), c.size());
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), Code::kInvalidArgument);
  EXPECT_TRUE(c.Barrier());  // still usable
}

TEST(Collectives, AllGatherVariableLengthsIncludingEmpty) {
  auto& c = *g_world;
  // Rank r contributes r*5 bytes (rank 0: empty).
  std::string mine(static_cast<std::size_t>(c.rank()) * 5, static_cast<char>('a' + c.rank()));
  auto all = c.AllGather(mine);
  ASSERT_TRUE(all) << all.error().ToString();
  ASSERT_EQ(all->size(), static_cast<std::size_t>(c.size()));
  for (int r = 0; r < c.size(); ++r) {
    EXPECT_EQ((*all)[static_cast<std::size_t>(r)],
              std::string(static_cast<std::size_t>(r) * 5, static_cast<char>('a' + r)));
  }
}

TEST(Collectives, BarrierAndRepeatedCalls) {
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(g_world->Barrier());
}

TEST(Collectives, StuckPeerIsADeadlineErrorOnEveryRankNotAHang) {
  auto& c = *g_world;
  if (c.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  auto dup = c.Duplicate();
  ASSERT_TRUE(dup);
  std::vector<double> v(8, 1.0);
  auto t0 = std::chrono::steady_clock::now();
  Status s;
  if (c.rank() == 1) {
    // Rank 1 is "stuck" past rank 0's deadline, then joins late: rank 0 has given up by
    // then, so rank 1 cannot complete either and must fail at its own deadline.
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    (*dup)->set_timeout(std::chrono::milliseconds(1500));
    s = (*dup)->AllReduceSum(std::span<double>(v));
  } else {
    (*dup)->set_timeout(std::chrono::milliseconds(c.rank() == 0 ? 300 : 1500));
    s = (*dup)->AllReduceSum(std::span<double>(v));
  }
  auto waited = std::chrono::steady_clock::now() - t0;
  // Nobody hangs: every rank returns within its deadline (plus scheduling slack).
  EXPECT_LT(waited, std::chrono::seconds(5)) << "rank " << c.rank();
  if (c.rank() == 0) {
    EXPECT_LT(waited, std::chrono::milliseconds(1000));
    EXPECT_FALSE(s);
    if (!s) {
      EXPECT_EQ(s.error().code(), Code::kDeadlineExceeded) << s.error().ToString();
      EXPECT_NE(s.error().ToString().find("did not complete within 300 ms"), std::string::npos)
          << s.error().ToString();
      // Poisoned: later calls fail at once, naming the first error.
      auto again = (*dup)->Barrier();
      EXPECT_FALSE(again);
      if (!again) {
        EXPECT_EQ(again.error().code(), Code::kFailedPrecondition);
        EXPECT_NE(again.error().ToString().find("did not complete"), std::string::npos);
      }
    }
  } else if (!s) {
    // The others fail at their own deadline, unless small eager messages already carried
    // everything they needed before rank 0 gave up.
    EXPECT_EQ(s.error().code(), Code::kDeadlineExceeded) << s.error().ToString();
  }
  // Other communicators are unaffected.
  ASSERT_TRUE(c.Barrier());
  MpiSession::ForgetAbandonedOperations();
}

TEST(Collectives, ShardedCheckpointCommitsThroughCommunicatorAgreement) {
  auto& c = *g_world;
  // Rank 0 names a shared directory and generates the master key; everyone gets both.
  std::array<char, 256> dir{};
  std::array<uint8_t, ckpt::SecretKey::kSize> key_bytes{};
  std::unique_ptr<ckpt::testing::TempDir> tmp;
  if (c.rank() == 0) {
    tmp = std::make_unique<ckpt::testing::TempDir>();
    std::snprintf(dir.data(), dir.size(), "%s", tmp->path().c_str());
    auto k = ckpt::SecretKey::Random();
    ASSERT_TRUE(k);
    std::copy(k->bytes().begin(), k->bytes().end(), key_bytes.begin());
  }
  ASSERT_TRUE(c.Broadcast(dir.data(), dir.size(), 0));
  ASSERT_TRUE(c.Broadcast(key_bytes.data(), key_bytes.size(), 0));
  auto secret = ckpt::SecretKey::FromBytes(key_bytes);
  auto key = std::make_shared<const ckpt::MasterKey>(
      ckpt::MasterKey{secret, ckpt::KeyId(secret), "broadcast test key"});

  auto agreement_comm = c.Duplicate();
  ASSERT_TRUE(agreement_comm);
  CommunicatorAgreement agreement(agreement_comm->get());
  ckpt::WriterOptions opts;
  opts.dir = dir.data();
  opts.run_id = "collectives-test";
  opts.key = key;
  opts.agreement = &agreement;
  auto writer = ckpt::CheckpointWriter::Open(opts);
  ASSERT_TRUE(writer) << writer.error().ToString();
  std::vector<float> mine(1000, static_cast<float>(c.rank()));
  ckpt::TensorRef t{"w", ckpt::DType::kF32, {1000}, std::as_bytes(std::span<const float>(mine))};
  for (uint64_t step : {10u, 20u}) {
    auto info = (*writer)->Save(step, std::span<const ckpt::TensorRef>(&t, 1));
    ASSERT_TRUE(info) << info.error().ToString();
  }
  ASSERT_TRUE(c.Barrier());
  if (c.rank() == 0) {
    ckpt::ReaderOptions ro;
    ro.key = key;
    auto reader = ckpt::CheckpointReader::Open(dir.data(), ro);
    ASSERT_TRUE(reader) << reader.error().ToString();
    EXPECT_EQ((*reader)->step(), 20u);
    EXPECT_EQ((*reader)->world_size(), static_cast<uint32_t>(c.size()));
    for (int r = 0; r < c.size(); ++r) {
      auto shard = (*reader)->Shard(static_cast<uint32_t>(r));
      ASSERT_TRUE(shard) << shard.error().ToString();
      std::vector<float> back(1000);
      ASSERT_TRUE((*shard)->ReadTensor("w", std::as_writable_bytes(std::span<float>(back))));
      EXPECT_EQ(back[999], static_cast<float>(r));
    }
  }
  ASSERT_TRUE(c.Barrier());
}

}  // namespace
}  // namespace cairn::coll

int main(int argc, char** argv) { return cairn::coll::RunMpiTests(argc, argv, &cairn::coll::g_world); }
