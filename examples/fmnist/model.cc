#include "examples/fmnist/model.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace cairn::fmnist {
namespace {

constexpr std::size_t kH1 = 256;
constexpr std::size_t kH2 = 128;
// Fashion-MNIST pixel statistics (training set), for input normalisation.
constexpr float kMean = 0.2860f;
constexpr float kInvStd = 1.0f / 0.3530f;

}  // namespace

Layout::Layout() {
  auto add = [&](const char* name, std::size_t rows, std::size_t cols) {
    tensors_.push_back({name, total_, rows, cols});
    total_ += rows * cols;
  };
  add("w1", kPixels, kH1);
  add("b1", 1, kH1);
  add("w2", kH1, kH2);
  add("b2", 1, kH2);
  add("w3", kH2, kClasses);
  add("b3", 1, kClasses);
}

void GatherBatch(const Split& split, std::span<const uint32_t> index,
                 std::span<const uint8_t> flip, std::vector<float>* x, std::vector<uint8_t>* y) {
  x->resize(index.size() * kPixels);
  y->resize(index.size());
  for (std::size_t i = 0; i < index.size(); ++i) {
    const uint8_t* src = split.pixels.data() + std::size_t{index[i]} * kPixels;
    float* dst = x->data() + i * kPixels;
    const bool mirror = !flip.empty() && flip[i] != 0;
    for (int r = 0; r < kRows; ++r) {
      for (int c = 0; c < kCols; ++c) {
        const uint8_t v = src[r * kCols + (mirror ? kCols - 1 - c : c)];
        dst[r * kCols + c] = (static_cast<float>(v) * (1.0f / 255.0f) - kMean) * kInvStd;
      }
    }
    (*y)[i] = split.labels[index[i]];
  }
}

void Mlp::Init(std::span<float> params, rt::Philox& rng) const {
  for (const Tensor& t : layout_.tensors()) {
    float* p = params.data() + t.offset;
    if (t.rows == 1) {
      std::fill(p, p + t.size(), 0.0f);
      continue;
    }
    const float bound = std::sqrt(6.0f / static_cast<float>(t.rows));  // fan_in = rows
    for (std::size_t i = 0; i < t.size(); ++i) p[i] = (2.0f * rng.NextUniform() - 1.0f) * bound;
  }
}

void Mlp::Forward(std::span<const float> params, const float* x, std::size_t n) {
  const auto& L = layout_;
  const float* w1 = params.data() + L[0].offset;
  const float* b1 = params.data() + L[1].offset;
  const float* w2 = params.data() + L[2].offset;
  const float* b2 = params.data() + L[3].offset;
  const float* w3 = params.data() + L[4].offset;
  const float* b3 = params.data() + L[5].offset;
  const int ni = static_cast<int>(n);
  h1_.resize(n * kH1);
  h2_.resize(n * kH2);
  z_.resize(n * kClasses);
  for (std::size_t i = 0; i < n; ++i) std::copy(b1, b1 + kH1, h1_.data() + i * kH1);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, kH1, kPixels, 1.0f, x, kPixels, w1,
              kH1, 1.0f, h1_.data(), kH1);
  for (float& v : h1_) v = std::max(v, 0.0f);
  for (std::size_t i = 0; i < n; ++i) std::copy(b2, b2 + kH2, h2_.data() + i * kH2);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, kH2, kH1, 1.0f, h1_.data(), kH1, w2,
              kH2, 1.0f, h2_.data(), kH2);
  for (float& v : h2_) v = std::max(v, 0.0f);
  for (std::size_t i = 0; i < n; ++i) std::copy(b3, b3 + kClasses, z_.data() + i * kClasses);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, ni, kClasses, kH2, 1.0f, h2_.data(), kH2,
              w3, kClasses, 1.0f, z_.data(), kClasses);
}

double Mlp::Gradient(std::span<const float> params, const float* x, const uint8_t* y,
                     std::size_t n, std::span<float> grad) {
  if (n == 0) return 0.0;
  Forward(params, x, n);
  const auto& L = layout_;
  const int ni = static_cast<int>(n);
  // Softmax cross-entropy; z_ becomes dL/dz = softmax - onehot.
  double loss = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    float* z = z_.data() + i * kClasses;
    const float zmax = *std::max_element(z, z + kClasses);
    float sum = 0.0f;
    for (int c = 0; c < kClasses; ++c) {
      z[c] = std::exp(z[c] - zmax);
      sum += z[c];
    }
    const float inv = 1.0f / sum;
    for (int c = 0; c < kClasses; ++c) z[c] *= inv;
    loss -= std::log(std::max(z[y[i]], 1e-30f));
    z[y[i]] -= 1.0f;
  }
  float* gw1 = grad.data() + L[0].offset;
  float* gb1 = grad.data() + L[1].offset;
  float* gw2 = grad.data() + L[2].offset;
  float* gb2 = grad.data() + L[3].offset;
  float* gw3 = grad.data() + L[4].offset;
  float* gb3 = grad.data() + L[5].offset;
  const float* w2 = params.data() + L[2].offset;
  const float* w3 = params.data() + L[4].offset;
  // Layer 3.
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kH2, kClasses, ni, 1.0f, h2_.data(), kH2,
              z_.data(), kClasses, 1.0f, gw3, kClasses);
  for (std::size_t i = 0; i < n; ++i) {
    for (int c = 0; c < kClasses; ++c) gb3[c] += z_[i * kClasses + static_cast<std::size_t>(c)];
  }
  d2_.assign(n * kH2, 0.0f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, kH2, kClasses, 1.0f, z_.data(),
              kClasses, w3, kClasses, 0.0f, d2_.data(), kH2);
  for (std::size_t i = 0; i < n * kH2; ++i) {
    if (h2_[i] <= 0.0f) d2_[i] = 0.0f;
  }
  // Layer 2.
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kH1, kH2, ni, 1.0f, h1_.data(), kH1,
              d2_.data(), kH2, 1.0f, gw2, kH2);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t c = 0; c < kH2; ++c) gb2[c] += d2_[i * kH2 + c];
  }
  d1_.assign(n * kH1, 0.0f);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, ni, kH1, kH2, 1.0f, d2_.data(), kH2, w2,
              kH2, 0.0f, d1_.data(), kH1);
  for (std::size_t i = 0; i < n * kH1; ++i) {
    if (h1_[i] <= 0.0f) d1_[i] = 0.0f;
  }
  // Layer 1.
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kPixels, kH1, ni, 1.0f, x, kPixels,
              d1_.data(), kH1, 1.0f, gw1, kH1);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t c = 0; c < kH1; ++c) gb1[c] += d1_[i * kH1 + c];
  }
  return loss;
}

int64_t Mlp::Correct(std::span<const float> params, const float* x, const uint8_t* y,
                     std::size_t n) {
  if (n == 0) return 0;
  Forward(params, x, n);
  int64_t correct = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float* z = z_.data() + i * kClasses;
    if (std::max_element(z, z + kClasses) - z == y[i]) ++correct;
  }
  return correct;
}

void ApplyUpdate(const OptimizerConfig& cfg, std::span<float> params, std::span<const float> grad,
                 OptimizerState* st) {
  const std::size_t n = params.size();
  st->m.resize(n, 0.0f);
  ++st->t;
  if (cfg.kind == Optimizer::kSgd) {
    for (std::size_t i = 0; i < n; ++i) {
      st->m[i] = cfg.momentum * st->m[i] + grad[i];
      params[i] -= cfg.lr * st->m[i];
    }
    return;
  }
  st->v.resize(n, 0.0f);
  const double t = static_cast<double>(st->t);
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(cfg.beta1), t)));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(cfg.beta2), t)));
  for (std::size_t i = 0; i < n; ++i) {
    const float g = grad[i];
    st->m[i] = cfg.beta1 * st->m[i] + (1.0f - cfg.beta1) * g;
    st->v[i] = cfg.beta2 * st->v[i] + (1.0f - cfg.beta2) * g * g;
    const float mhat = st->m[i] * c1;
    const float vhat = st->v[i] * c2;
    params[i] -= cfg.lr * mhat / (std::sqrt(vhat) + cfg.eps);
  }
}

}  // namespace cairn::fmnist
