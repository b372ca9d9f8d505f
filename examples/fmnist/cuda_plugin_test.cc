// The CUDA model plugin loads into a CUDA-enabled cairn-fmnist's process and answers:
// every symbol it needs resolves, and its interface version is this program's. Runs on
// any machine of a CUDA build; without a GPU, Create fails in CUDA, after the load.
#include <gtest/gtest.h>

#include <iostream>
#include <string>

#include "examples/fmnist/cuda_mlp.h"

namespace cairn::fmnist::cuda {
namespace {

TEST(CudaPluginTest, LoadsAndAnswersCreate) {
  constexpr std::size_t kW1 = 784 * 256, kB1 = 256, kW2 = 256 * 128, kB2 = 128, kW3 = 128 * 10;
  const LayerOffsets off{0,
                         kW1,
                         kW1 + kB1,
                         kW1 + kB1 + kW2,
                         kW1 + kB1 + kW2 + kB2,
                         kW1 + kB1 + kW2 + kB2 + kW3,
                         kW1 + kB1 + kW2 + kB2 + kW3 + 10};
  Mlp* mlp = nullptr;
  const std::string err = Create(0, off, /*adam=*/true, &mlp);
  EXPECT_EQ(err.find("cannot load the CUDA model plugin"), std::string::npos) << err;
  if (err.empty()) {
    EXPECT_NE(mlp, nullptr);
    Destroy(mlp);
  } else {
    std::cout << "[ info     ] plugin loaded; Create: " << err << "\n";
  }
}

}  // namespace
}  // namespace cairn::fmnist::cuda
