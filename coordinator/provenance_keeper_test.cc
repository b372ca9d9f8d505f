#include "coordinator/provenance_keeper.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace cairn::coord {
namespace {

namespace fs = std::filesystem;

// The environment of cairnd's host is described once per kEnvironmentTtl: a restart's
// record does not run nvidia-smi again; each record still names its own hosts.
TEST(ProvenanceKeeperTest, EnvironmentIsDescribedOncePerTtlAndHostsArePerRecord) {
  const fs::path dir = fs::path(::testing::TempDir()) / fmt::format("keeper-test-{}", ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  // A stand-in nvidia-smi that counts its runs and answers like the real one.
  const fs::path smi = dir / "nvidia-smi";
  const fs::path count = dir / "runs";
  std::ofstream(smi) << "#!/bin/sh\necho run >> '" << count.string()
                     << "'\necho '0, NVIDIA H200, 143771, GPU-1234, 580.159.04'\n";
  fs::permissions(smi, fs::perms::owner_all);

  std::mutex mu;
  std::vector<std::function<void()>> posted;
  auto keeper = ProvenanceKeeper::Open(dir.string(), "test-builder", [&](std::function<void()> f) {
    std::lock_guard lock(mu);
    posted.push_back(std::move(f));
  });
  ASSERT_TRUE(keeper.has_value()) << keeper.error().ToString();
  prov::EnvironmentOptions eo;
  eo.nvidia_smi = smi.string();
  (*keeper)->set_environment_options(eo);

  std::vector<PreparedRecord> records;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    PrepareRequest req;
    req.job_id = "job-000001";
    req.attempt = static_cast<uint32_t>(attempt);
    req.run_id = fmt::format("job-000001.{}", attempt);
    req.spec.add_command("/bin/true");
    req.hosts = {fmt::format("host-{}", attempt)};
    req.started_unix_ms = attempt;
    bool done = false;
    (*keeper)->Prepare(std::move(req), [&](Result<PreparedRecord> r) {
      ASSERT_TRUE(r.has_value()) << r.error().ToString();
      records.push_back(std::move(*r));
      done = true;
    });
    for (int i = 0; i < 600 && !done; ++i) {
      std::vector<std::function<void()>> run;
      {
        std::lock_guard lock(mu);
        run.swap(posted);
      }
      for (auto& f : run) f();
      if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_TRUE(done) << "attempt " << attempt << ": no record within 30 s";
  }
  std::ifstream in(count);
  int runs = 0;
  for (std::string line; std::getline(in, line);) ++runs;
  EXPECT_EQ(runs, 1) << "nvidia-smi ran once per attempt";
  ASSERT_EQ(records.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const auto& env = records[i].record.environment();
    ASSERT_EQ(env.hosts_size(), 1);
    EXPECT_EQ(env.hosts(0), fmt::format("host-{}", i + 1));
    ASSERT_EQ(env.gpus_size(), 1);
    EXPECT_EQ(env.driver_version(), "580.159.04");
  }
  EXPECT_NE(records[0].digest_hex, records[1].digest_hex);
  keeper->reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace cairn::coord
