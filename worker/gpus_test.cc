// GPU discovery. GpuList.*: the CUDA_VISIBLE_DEVICES and position mapping rules (unit).
// GpuDriver.*: what NVML reports equals what nvidia-smi reports on this machine (label
// gpu; skips, saying why, without a driver or a GPU).
#include "worker/gpus.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

namespace cairn::worker {
namespace {

std::vector<GpuDevice> FourGpus() {
  return {{0, "A", 1, "GPU-aaaa1111"}, {1, "B", 2, "GPU-bbbb2222"}, {2, "C", 3, "GPU-cccc3333"},
          {3, "D", 4, "GPU-aaaa4444"}};
}

std::vector<uint32_t> Indices(const std::vector<GpuDevice>& v) {
  std::vector<uint32_t> out;
  for (const auto& g : v) out.push_back(g.index);
  return out;
}

TEST(GpuList, VisibleDevicesByIndexKeepTheirOrder) {
  EXPECT_EQ(Indices(FilterVisible(FourGpus(), "2,0")), (std::vector<uint32_t>{2, 0}));
  EXPECT_EQ(Indices(FilterVisible(FourGpus(), " 3 , 1 ")), (std::vector<uint32_t>{3, 1}));
  EXPECT_EQ(Indices(FilterVisible(FourGpus(), "1,1")), (std::vector<uint32_t>{1}));
}

TEST(GpuList, VisibleDevicesByUuidAndUnambiguousPrefix) {
  EXPECT_EQ(Indices(FilterVisible(FourGpus(), "GPU-cccc3333,GPU-bbbb")),
            (std::vector<uint32_t>{2, 1}));
  // "GPU-aaaa" names two devices: like CUDA, the list ends there.
  EXPECT_EQ(Indices(FilterVisible(FourGpus(), "1,GPU-aaaa,2")), (std::vector<uint32_t>{1}));
}

TEST(GpuList, TheListEndsAtTheFirstEntryNamingNoDevice) {
  EXPECT_TRUE(FilterVisible(FourGpus(), "").empty());
  EXPECT_TRUE(FilterVisible(FourGpus(), "-1").empty());
  EXPECT_TRUE(FilterVisible(FourGpus(), "NoDevFiles").empty());
  EXPECT_EQ(Indices(FilterVisible(FourGpus(), "0,7,1")), (std::vector<uint32_t>{0}));
}

TEST(GpuList, PositionsMapToTheNodesConcreteIndices) {
  std::vector<GpuDevice> node = FilterVisible(FourGpus(), "3,1");
  EXPECT_EQ(RankGpuList("0", node), "3");
  EXPECT_EQ(RankGpuList("1,0", node), "1,3");
  EXPECT_EQ(RankGpuList("2", node), std::nullopt);
  EXPECT_EQ(RankGpuList("x", node), std::nullopt);
  EXPECT_EQ(RankGpuList("", node), "");
}

TEST(GpuList, SimulatedNodesOnOneMachineShareItsGpus) {
  const auto all = FourGpus();
  EXPECT_EQ(Indices(ShareOf(all, 0, 2)), (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(Indices(ShareOf(all, 1, 2)), (std::vector<uint32_t>{2, 3}));
  // Three nodes: 1 + 1 + 2; every GPU in exactly one share.
  std::vector<uint32_t> seen;
  for (int i = 0; i < 3; ++i) {
    auto s = Indices(ShareOf(all, i, 3));
    EXPECT_GE(s.size(), 1u);
    seen.insert(seen.end(), s.begin(), s.end());
  }
  EXPECT_EQ(seen, (std::vector<uint32_t>{0, 1, 2, 3}));
  // More nodes than GPUs: some get none; bad arguments get none.
  std::vector<GpuDevice> one(all.begin(), all.begin() + 1);
  EXPECT_EQ(ShareOf(one, 0, 2).size() + ShareOf(one, 1, 2).size(), 1u);
  EXPECT_TRUE(ShareOf(all, 2, 2).empty());
  EXPECT_TRUE(ShareOf(all, 0, 0).empty());
}

TEST(GpuList, WithoutADriverNothingIsInvented) {
  // On any machine: what is found is consistent, and a filter naming nothing leaves none.
  GpuInventory inv = DiscoverGpus(std::string("-1"));
  EXPECT_TRUE(inv.devices.empty());
  EXPECT_FALSE(inv.source.empty());
}

struct SmiGpu {
  uint32_t index;
  std::string name, uuid;
  uint64_t mib;
};

// nvidia-smi's own view, or nullopt (with the reason) when it cannot be asked.
std::optional<std::vector<SmiGpu>> AskNvidiaSmi(std::string* why) {
  FILE* p = ::popen(
      "nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader,nounits "
      "2>&1",
      "r");
  if (p == nullptr) {
    *why = "popen failed";
    return std::nullopt;
  }
  std::string out;
  char buf[4096];
  for (int i = 0; i < 1024; ++i) {
    std::size_t n = std::fread(buf, 1, sizeof(buf), p);
    if (n == 0) break;
    out.append(buf, n);
  }
  const int rc = ::pclose(p);
  if (rc != 0) {
    *why = "nvidia-smi: " + out.substr(0, out.find('\n'));
    return std::nullopt;
  }
  std::vector<SmiGpu> gpus;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<std::string> f;
    std::istringstream fields(line);
    std::string x;
    while (std::getline(fields, x, ',')) {
      while (!x.empty() && x.front() == ' ') x.erase(0, 1);
      f.push_back(x);
    }
    if (f.size() != 4) continue;
    gpus.push_back(SmiGpu{static_cast<uint32_t>(std::stoul(f[0])), f[1], f[2], std::stoull(f[3])});
  }
  if (gpus.empty()) *why = "nvidia-smi lists no GPU";
  return gpus.empty() ? std::nullopt : std::optional(gpus);
}

TEST(GpuDriver, NvmlSeesWhatNvidiaSmiSees) {
  std::string why;
  auto smi = AskNvidiaSmi(&why);
  if (!smi) GTEST_SKIP() << "no usable GPU: " << why;
  GpuInventory inv = DiscoverGpus(std::nullopt);
  ASSERT_EQ(inv.source, "nvml") << inv.note;
  EXPECT_FALSE(inv.driver_version.empty());
  ASSERT_EQ(inv.devices.size(), smi->size()) << inv.note;
  for (std::size_t i = 0; i < smi->size(); ++i) {
    const auto& g = inv.devices[i];
    const auto& s = (*smi)[i];
    EXPECT_EQ(g.index, s.index);
    EXPECT_EQ(g.model, s.name);
    EXPECT_EQ(g.uuid, s.uuid);
    EXPECT_EQ(g.memory_bytes >> 20, s.mib);
    std::printf("GPU %u: %s, %llu MiB, %s, driver %s\n", g.index, g.model.c_str(),
                static_cast<unsigned long long>(g.memory_bytes >> 20), g.uuid.c_str(),
                inv.driver_version.c_str());
  }
  // The agent's own CUDA_VISIBLE_DEVICES, by UUID, keeps exactly that device.
  GpuInventory one = DiscoverGpus(smi->back().uuid);
  ASSERT_EQ(one.devices.size(), 1u);
  EXPECT_EQ(one.devices[0].index, smi->back().index);
}

}  // namespace
}  // namespace cairn::worker
