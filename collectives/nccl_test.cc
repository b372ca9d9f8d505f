// NcclCommunicator under mpirun (label gpu): device buffers reduced by NCCL equal a
// serial reference. Skips, saying why, when this machine has fewer GPUs than ranks.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "collectives/mpi_communicator.h"
#include "collectives/mpi_test_main.h"
#include "collectives/nccl_communicator.h"

namespace cairn::coll {
namespace {

MpiCommunicator* g_host = nullptr;

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int devices = NcclCommunicator::VisibleDevices();
    // Every rank must decide alike, so the decision is on the minimum over ranks.
    std::vector<int64_t> v{devices < g_host->size() ? 1 : 0};
    ASSERT_TRUE(g_host->AllReduceSum(std::span<int64_t>(v)));
    if (v[0] > 0) {
      GTEST_SKIP() << "needs one CUDA device per rank: " << devices << " visible, "
                   << g_host->size() << " ranks";
    }
    auto c = NcclCommunicator::Create(g_host, g_host->rank() % devices, std::chrono::seconds(60));
    ASSERT_TRUE(c) << c.error().ToString();
    comm_ = std::move(*c);
  }
  std::unique_ptr<NcclCommunicator> comm_;
};

template <typename T>
T Value(int rank, std::size_t i) {
  return static_cast<T>(static_cast<double>((i * 7 + static_cast<std::size_t>(rank) * 13) % 1024) *
                        0.25);
}

template <typename T>
void Check(NcclCommunicator& c, std::size_t count) {
  std::vector<T> host(count);
  for (std::size_t i = 0; i < count; ++i) host[i] = Value<T>(c.rank(), i);
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, std::max<std::size_t>(count, 1) * sizeof(T)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), count * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  DataType type = sizeof(T) == 4 ? DataType::kF32
                  : std::is_floating_point_v<T> ? DataType::kF64
                                                : DataType::kI64;
  auto s = c.AllReduceSum(dev, count, type);
  ASSERT_TRUE(s) << s.error().ToString();
  ASSERT_EQ(cudaMemcpy(host.data(), dev, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dev);
  for (std::size_t i = 0; i < count; ++i) {
    T expect = 0;
    for (int r = 0; r < c.size(); ++r) expect += Value<T>(r, i);
    ASSERT_EQ(host[i], expect) << "element " << i << " of " << count;
  }
}

TEST_F(NcclTest, AllReduceMatchesSerialReference) {
  for (std::size_t n : {0u, 1u, 3u, 1023u, 100003u, 16u << 20}) {
    Check<float>(*comm_, n);
    Check<double>(*comm_, n);
    Check<int64_t>(*comm_, n);
  }
}

TEST_F(NcclTest, BroadcastAndBarrier) {
  std::vector<uint8_t> host(4099);
  for (std::size_t i = 0; i < host.size(); ++i) {
    host[i] = comm_->rank() == 0 ? static_cast<uint8_t>(i * 3) : 0;
  }
  void* dev = nullptr;
  ASSERT_EQ(cudaMalloc(&dev, host.size()), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_TRUE(comm_->Broadcast(dev, host.size(), 0));
  ASSERT_EQ(cudaMemcpy(host.data(), dev, host.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dev);
  for (std::size_t i = 0; i < host.size(); ++i) ASSERT_EQ(host[i], static_cast<uint8_t>(i * 3));
  ASSERT_TRUE(comm_->Barrier());
  auto all = comm_->AllGather(std::to_string(comm_->rank()));
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), static_cast<std::size_t>(comm_->size()));
}

}  // namespace
}  // namespace cairn::coll

int main(int argc, char** argv) { return cairn::coll::RunMpiTests(argc, argv, &cairn::coll::g_host); }
