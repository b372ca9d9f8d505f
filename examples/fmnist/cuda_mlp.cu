#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <vector>

#include "examples/fmnist/cuda_mlp.h"

namespace cairn::fmnist::cuda {
namespace {

constexpr int kIn = 784, kH1 = 256, kH2 = 128, kOut = 10;

std::string CudaErr(cudaError_t e, const char* what) {
  return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}
std::string BlasErr(cublasStatus_t s, const char* what) {
  return std::string(what) + ": cuBLAS status " + std::to_string(static_cast<int>(s));
}

#define CAIRN_CUDA(expr)                                \
  do {                                                  \
    cudaError_t e_ = (expr);                            \
    if (e_ != cudaSuccess) return CudaErr(e_, #expr);   \
  } while (0)
#define CAIRN_CUBLAS(expr)                                       \
  do {                                                           \
    cublasStatus_t s_ = (expr);                                  \
    if (s_ != CUBLAS_STATUS_SUCCESS) return BlasErr(s_, #expr);  \
  } while (0)

__global__ void AddBias(float* h, const float* b, int n, int cols, bool relu) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * cols) return;
  float v = h[i] + b[i % cols];
  h[i] = relu ? fmaxf(v, 0.0f) : v;
}

// One thread per sample: softmax, loss, and dL/dz = p - onehot in place.
__global__ void SoftmaxXent(float* z, const uint8_t* y, int n, float* loss) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float* r = z + i * kOut;
  float m = r[0];
  for (int c = 1; c < kOut; ++c) m = fmaxf(m, r[c]);
  float sum = 0.0f;
  for (int c = 0; c < kOut; ++c) {
    r[c] = expf(r[c] - m);
    sum += r[c];
  }
  float inv = 1.0f / sum;
  for (int c = 0; c < kOut; ++c) r[c] *= inv;
  loss[i] = -logf(fmaxf(r[y[i]], 1e-30f));
  r[y[i]] -= 1.0f;
}

__global__ void ReluBackward(float* d, const float* h, int count) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count && h[i] <= 0.0f) d[i] = 0.0f;
}

// One thread per column, rows in order: deterministic.
__global__ void ColumnSumAdd(const float* d, int n, int cols, float* out) {
  int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.0f;
  for (int i = 0; i < n; ++i) s += d[i * cols + c];
  out[c] += s;
}

__global__ void Argmax(const float* z, const uint8_t* y, int n, int* hit) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float* r = z + i * kOut;
  int best = 0;
  for (int c = 1; c < kOut; ++c) {
    if (r[c] > r[best]) best = c;
  }
  hit[i] = best == y[i] ? 1 : 0;
}

__global__ void AdamKernel(float* p, float* m, float* v, const float* g, std::size_t count,
                           float lr, float b1, float b2, float eps, float c1, float c2,
                           float scale) {
  std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float gi = g[i] * scale;
  m[i] = b1 * m[i] + (1.0f - b1) * gi;
  v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
  p[i] -= lr * (m[i] * c1) / (sqrtf(v[i] * c2) + eps);
}

__global__ void SgdKernel(float* p, float* m, const float* g, std::size_t count, float lr,
                          float mu, float scale) {
  std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  m[i] = mu * m[i] + g[i] * scale;
  p[i] -= lr * m[i];
}

int Blocks(std::size_t n, int threads = 256) {
  return static_cast<int>((n + static_cast<std::size_t>(threads) - 1) / static_cast<std::size_t>(threads));
}

}  // namespace

struct Mlp {
  int device = 0;
  LayerOffsets off{};
  bool adam = true;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  float *params = nullptr, *grad = nullptr, *m = nullptr, *v = nullptr;
  float *x = nullptr, *h1 = nullptr, *h2 = nullptr, *z = nullptr, *d1 = nullptr, *d2 = nullptr,
        *loss = nullptr;
  uint8_t* y = nullptr;
  int* hit = nullptr;
  int capacity = 0;  // samples the activation buffers hold
  std::vector<float> host_loss;
  std::vector<int> host_hit;
  std::vector<void*> pinned;  // host ranges page-locked by PinHost

  // Row-major C[M x N] = op(A) op(B) + beta C, through column-major cuBLAS (C^T = B^T A^T).
  std::string Gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda,
                   const float* B, int ldb, float beta, float* C, int ldc) {
    const float one = 1.0f;
    CAIRN_CUBLAS(cublasSgemm(blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                             N, M, K, &one, B, ldb, A, lda, &beta, C, ldc));
    return {};
  }

  std::string Reserve(int n) {
    if (n <= capacity) return {};
    for (void* p : {static_cast<void*>(x), static_cast<void*>(h1), static_cast<void*>(h2),
                    static_cast<void*>(z), static_cast<void*>(d1), static_cast<void*>(d2),
                    static_cast<void*>(loss), static_cast<void*>(y), static_cast<void*>(hit)}) {
      if (p != nullptr) cudaFree(p);
    }
    const std::size_t s = static_cast<std::size_t>(n);
    CAIRN_CUDA(cudaMalloc(&x, s * kIn * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&h1, s * kH1 * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&h2, s * kH2 * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&z, s * kOut * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&d1, s * kH1 * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&d2, s * kH2 * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&loss, s * sizeof(float)));
    CAIRN_CUDA(cudaMalloc(&y, s));
    CAIRN_CUDA(cudaMalloc(&hit, s * sizeof(int)));
    capacity = n;
    return {};
  }

  std::string Forward(const float* xh, const uint8_t* yh, int n) {
    if (auto e = Reserve(n); !e.empty()) return e;
    CAIRN_CUDA(cudaMemcpyAsync(x, xh, static_cast<std::size_t>(n) * kIn * sizeof(float),
                               cudaMemcpyHostToDevice, stream));
    CAIRN_CUDA(cudaMemcpyAsync(y, yh, static_cast<std::size_t>(n), cudaMemcpyHostToDevice, stream));
    if (auto e = Gemm(false, false, n, kH1, kIn, x, kIn, params + off.w1, kH1, 0.0f, h1, kH1);
        !e.empty()) {
      return e;
    }
    AddBias<<<Blocks(static_cast<std::size_t>(n) * kH1), 256, 0, stream>>>(h1, params + off.b1, n, kH1, true);
    if (auto e = Gemm(false, false, n, kH2, kH1, h1, kH1, params + off.w2, kH2, 0.0f, h2, kH2);
        !e.empty()) {
      return e;
    }
    AddBias<<<Blocks(static_cast<std::size_t>(n) * kH2), 256, 0, stream>>>(h2, params + off.b2, n, kH2, true);
    if (auto e = Gemm(false, false, n, kOut, kH2, h2, kH2, params + off.w3, kOut, 0.0f, z, kOut);
        !e.empty()) {
      return e;
    }
    AddBias<<<Blocks(static_cast<std::size_t>(n) * kOut), 256, 0, stream>>>(z, params + off.b3, n, kOut, false);
    CAIRN_CUDA(cudaGetLastError());
    return {};
  }
};

// The plugin's functions (cuda_mlp.h's, served through the Api table): their own
// namespace, so that no call inside the plugin binds to the host side's names.
namespace impl {

void Destroy(Mlp* m);  // called qualified: ADL would also find cuda::Destroy

std::string Create(int device, const LayerOffsets& offsets, bool adam, Mlp** out) {
  *out = nullptr;
  CAIRN_CUDA(cudaSetDevice(device));
  auto* m = new Mlp;
  m->device = device;
  m->off = offsets;
  m->adam = adam;
  auto fail = [&](std::string e) {
    impl::Destroy(m);
    return e;
  };
  if (cudaError_t e = cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return fail(CudaErr(e, "cudaStreamCreate"));
  }
  if (cublasStatus_t s = cublasCreate(&m->blas); s != CUBLAS_STATUS_SUCCESS) {
    return fail(BlasErr(s, "cublasCreate"));
  }
  cublasSetStream(m->blas, m->stream);
  // Deterministic results: no reduced-precision or atomics-based shortcuts.
  cublasSetMathMode(m->blas, CUBLAS_PEDANTIC_MATH);
  cublasSetAtomicsMode(m->blas, CUBLAS_ATOMICS_NOT_ALLOWED);
  const std::size_t bytes = offsets.total * sizeof(float);
  for (float** p : {&m->params, &m->grad, &m->m, &m->v}) {
    if (cudaError_t e = cudaMalloc(p, bytes); e != cudaSuccess) return fail(CudaErr(e, "cudaMalloc"));
    cudaMemset(*p, 0, bytes);
  }
  *out = m;
  return {};
}

void Destroy(Mlp* m) {
  if (m == nullptr) return;
  cudaSetDevice(m->device);
  for (void* p : {static_cast<void*>(m->params), static_cast<void*>(m->grad),
                  static_cast<void*>(m->m), static_cast<void*>(m->v), static_cast<void*>(m->x),
                  static_cast<void*>(m->h1), static_cast<void*>(m->h2), static_cast<void*>(m->z),
                  static_cast<void*>(m->d1), static_cast<void*>(m->d2),
                  static_cast<void*>(m->loss), static_cast<void*>(m->y),
                  static_cast<void*>(m->hit)}) {
    if (p != nullptr) cudaFree(p);
  }
  if (m->blas != nullptr) cublasDestroy(m->blas);
  if (m->stream != nullptr) cudaStreamDestroy(m->stream);
  for (void* p : m->pinned) cudaHostUnregister(p);
  delete m;
}

std::string PinHost(Mlp* m, void* ptr, std::size_t bytes) {
  CAIRN_CUDA(cudaSetDevice(m->device));
  CAIRN_CUDA(cudaHostRegister(ptr, bytes, cudaHostRegisterDefault));
  m->pinned.push_back(ptr);
  return {};
}

std::string Upload(Mlp* m, const float* params, const float* mom, const float* v) {
  CAIRN_CUDA(cudaSetDevice(m->device));
  const std::size_t bytes = m->off.total * sizeof(float);
  CAIRN_CUDA(cudaMemcpyAsync(m->params, params, bytes, cudaMemcpyHostToDevice, m->stream));
  CAIRN_CUDA(cudaMemcpyAsync(m->m, mom, bytes, cudaMemcpyHostToDevice, m->stream));
  if (m->adam) CAIRN_CUDA(cudaMemcpyAsync(m->v, v, bytes, cudaMemcpyHostToDevice, m->stream));
  CAIRN_CUDA(cudaStreamSynchronize(m->stream));
  return {};
}

std::string Download(Mlp* m, float* params, float* mom, float* v) {
  CAIRN_CUDA(cudaSetDevice(m->device));
  const std::size_t bytes = m->off.total * sizeof(float);
  CAIRN_CUDA(cudaMemcpyAsync(params, m->params, bytes, cudaMemcpyDeviceToHost, m->stream));
  CAIRN_CUDA(cudaMemcpyAsync(mom, m->m, bytes, cudaMemcpyDeviceToHost, m->stream));
  if (m->adam) CAIRN_CUDA(cudaMemcpyAsync(v, m->v, bytes, cudaMemcpyDeviceToHost, m->stream));
  CAIRN_CUDA(cudaStreamSynchronize(m->stream));
  return {};
}

float* DeviceGradient(Mlp* m) { return m->grad; }

std::string Gradient(Mlp* m, const float* xh, const uint8_t* yh, int n, double* loss_out) {
  *loss_out = 0.0;
  CAIRN_CUDA(cudaSetDevice(m->device));
  CAIRN_CUDA(cudaMemsetAsync(m->grad, 0, m->off.total * sizeof(float), m->stream));
  if (n == 0) return {};
  if (auto e = m->Forward(xh, yh, n); !e.empty()) return e;
  const LayerOffsets& o = m->off;
  SoftmaxXent<<<Blocks(static_cast<std::size_t>(n)), 256, 0, m->stream>>>(m->z, m->y, n, m->loss);
  // Layer 3.
  if (auto e = m->Gemm(true, false, kH2, kOut, n, m->h2, kH2, m->z, kOut, 1.0f, m->grad + o.w3, kOut);
      !e.empty()) {
    return e;
  }
  ColumnSumAdd<<<1, 32, 0, m->stream>>>(m->z, n, kOut, m->grad + o.b3);
  if (auto e = m->Gemm(false, true, n, kH2, kOut, m->z, kOut, m->params + o.w3, kOut, 0.0f, m->d2, kH2);
      !e.empty()) {
    return e;
  }
  ReluBackward<<<Blocks(static_cast<std::size_t>(n) * kH2), 256, 0, m->stream>>>(m->d2, m->h2, n * kH2);
  // Layer 2.
  if (auto e = m->Gemm(true, false, kH1, kH2, n, m->h1, kH1, m->d2, kH2, 1.0f, m->grad + o.w2, kH2);
      !e.empty()) {
    return e;
  }
  ColumnSumAdd<<<1, kH2, 0, m->stream>>>(m->d2, n, kH2, m->grad + o.b2);
  if (auto e = m->Gemm(false, true, n, kH1, kH2, m->d2, kH2, m->params + o.w2, kH2, 0.0f, m->d1, kH1);
      !e.empty()) {
    return e;
  }
  ReluBackward<<<Blocks(static_cast<std::size_t>(n) * kH1), 256, 0, m->stream>>>(m->d1, m->h1, n * kH1);
  // Layer 1.
  if (auto e = m->Gemm(true, false, kIn, kH1, n, m->x, kIn, m->d1, kH1, 1.0f, m->grad + o.w1, kH1);
      !e.empty()) {
    return e;
  }
  ColumnSumAdd<<<1, kH1, 0, m->stream>>>(m->d1, n, kH1, m->grad + o.b1);
  CAIRN_CUDA(cudaGetLastError());
  m->host_loss.resize(static_cast<std::size_t>(n));
  CAIRN_CUDA(cudaMemcpyAsync(m->host_loss.data(), m->loss, static_cast<std::size_t>(n) * sizeof(float),
                             cudaMemcpyDeviceToHost, m->stream));
  CAIRN_CUDA(cudaStreamSynchronize(m->stream));
  double sum = 0.0;
  for (float l : m->host_loss) sum += l;
  *loss_out = sum;
  return {};
}

std::string ApplyAdam(Mlp* m, float lr, float b1, float b2, float eps, uint64_t t, float scale) {
  CAIRN_CUDA(cudaSetDevice(m->device));
  const double td = static_cast<double>(t);
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b1), td)));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(b2), td)));
  AdamKernel<<<Blocks(m->off.total), 256, 0, m->stream>>>(m->params, m->m, m->v, m->grad,
                                                          m->off.total, lr, b1, b2, eps, c1, c2,
                                                          scale);
  CAIRN_CUDA(cudaGetLastError());
  CAIRN_CUDA(cudaStreamSynchronize(m->stream));
  return {};
}

std::string ApplySgd(Mlp* m, float lr, float momentum, float scale) {
  CAIRN_CUDA(cudaSetDevice(m->device));
  SgdKernel<<<Blocks(m->off.total), 256, 0, m->stream>>>(m->params, m->m, m->grad, m->off.total,
                                                         lr, momentum, scale);
  CAIRN_CUDA(cudaGetLastError());
  CAIRN_CUDA(cudaStreamSynchronize(m->stream));
  return {};
}

std::string Correct(Mlp* m, const float* xh, const uint8_t* yh, int n, int64_t* correct) {
  *correct = 0;
  if (n == 0) return {};
  CAIRN_CUDA(cudaSetDevice(m->device));
  if (auto e = m->Forward(xh, yh, n); !e.empty()) return e;
  Argmax<<<Blocks(static_cast<std::size_t>(n)), 256, 0, m->stream>>>(m->z, m->y, n, m->hit);
  CAIRN_CUDA(cudaGetLastError());
  m->host_hit.resize(static_cast<std::size_t>(n));
  CAIRN_CUDA(cudaMemcpyAsync(m->host_hit.data(), m->hit, static_cast<std::size_t>(n) * sizeof(int),
                             cudaMemcpyDeviceToHost, m->stream));
  CAIRN_CUDA(cudaStreamSynchronize(m->stream));
  for (int h : m->host_hit) *correct += h;
  return {};
}

}  // namespace impl
}  // namespace cairn::fmnist::cuda

extern "C" __attribute__((visibility("default"))) const cairn::fmnist::cuda::Api*
cairn_fmnist_cuda_api() {
  namespace c = cairn::fmnist::cuda;
  static const c::Api api{c::kAbiVersion,    &c::impl::Create,    &c::impl::Destroy,
                          &c::impl::PinHost, &c::impl::Upload,    &c::impl::Download,
                          &c::impl::Gradient, &c::impl::DeviceGradient, &c::impl::ApplyAdam,
                          &c::impl::ApplySgd, &c::impl::Correct};
  return &api;
}
