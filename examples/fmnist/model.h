// The reference job's model: a 784-256-128-10 ReLU MLP with softmax cross-entropy, its
// gradients and its optimizers (Adam, SGD with momentum), on the CPU through OpenBLAS.
//
// Promise: every computation is deterministic for a given input: OpenBLAS runs
// single-threaded (set by main before any call), and nothing depends on timing or
// thread scheduling. Parameters, gradients and optimizer moments each live in one
// contiguous float vector with the same layout (Layout), so that a gradient is one
// allreduce and a checkpoint is a few tensors.
//
// Threading: one thread per object.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "examples/fmnist/idx.h"
#include "runtime/rng.h"

namespace cairn::fmnist {

struct Tensor {
  std::string name;  // "w1", "b1", ...
  std::size_t offset = 0;
  std::size_t rows = 0, cols = 0;  // a bias has rows == 1
  std::size_t size() const { return rows * cols; }
};

class Layout {
 public:
  Layout();
  const std::vector<Tensor>& tensors() const { return tensors_; }
  std::size_t total() const { return total_; }
  const Tensor& operator[](std::size_t i) const { return tensors_[i]; }

 private:
  std::vector<Tensor> tensors_;
  std::size_t total_ = 0;
};

// Normalised input rows for the samples `index` of `split` (flip: mirror left-right).
void GatherBatch(const Split& split, std::span<const uint32_t> index,
                 std::span<const uint8_t> flip, std::vector<float>* x, std::vector<uint8_t>* y);

class Mlp {
 public:
  explicit Mlp(const Layout& layout) : layout_(layout) {}

  // Kaiming-uniform weights and zero biases, drawn from rng in layout order.
  void Init(std::span<float> params, rt::Philox& rng) const;

  // Adds the gradient of the summed loss over the n samples to *grad (which must hold
  // layout.total() floats) and returns the summed loss.
  double Gradient(std::span<const float> params, const float* x, const uint8_t* y,
                  std::size_t n, std::span<float> grad);

  // Number of correct predictions among n samples.
  int64_t Correct(std::span<const float> params, const float* x, const uint8_t* y,
                  std::size_t n);

 private:
  void Forward(std::span<const float> params, const float* x, std::size_t n);
  const Layout& layout_;
  std::vector<float> h1_, h2_, z_, d2_, d1_;
};

enum class Optimizer { kAdam, kSgd };

struct OptimizerConfig {
  Optimizer kind = Optimizer::kAdam;
  float lr = 1e-3f;
  float momentum = 0.9f;  // SGD
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // Adam
};

// Optimizer state: Adam keeps m and v (and the step count), SGD keeps its velocity in m.
struct OptimizerState {
  std::vector<float> m, v;
  uint64_t t = 0;
};

// params -= update(grad); grad is the mean gradient.
void ApplyUpdate(const OptimizerConfig& cfg, std::span<float> params, std::span<const float> grad,
                 OptimizerState* state);

}  // namespace cairn::fmnist
