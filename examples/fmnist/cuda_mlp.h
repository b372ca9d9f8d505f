// The reference job's model on a CUDA device: the same 784-256-128-10 MLP, loss and
// optimizers as model.h, with GEMMs in cuBLAS and the element-wise parts in CUDA kernels.
//
// Promise: deterministic for a given device, input and cuBLAS version (no atomics; the
// bias-gradient column sums and loss sums run in a fixed order), so a resumed GPU run
// ends bit-identical to an uninterrupted one on the same kind of GPU. Results are not
// bit-identical to the CPU path.
//
// This header is the narrow interface between the host code (C++23) and the CUDA
// translation unit (C++20): plain types only, and every fallible call returns an empty
// string on success or the error message. The CUDA code is a plugin,
// libcairn_fmnist_cuda.so, loaded by the first Create (cuda_mlp_loader.cc) from the
// executable's ../lib, its own directory, or the library path: only a process that
// trains on a GPU links cuBLAS. A missing or mismatched plugin is Create's error.
//
// Threading: one thread per handle; all work runs on the handle's stream, and every call
// returns with that stream idle, so callers may use the device buffers right away.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cairn::fmnist::cuda {

struct Mlp;  // opaque

struct LayerOffsets {
  std::size_t w1, b1, w2, b2, w3, b3, total;
};

std::string Create(int device, const LayerOffsets& offsets, bool adam, Mlp** out);
void Destroy(Mlp* mlp);

// Page-locks host memory that Upload/Download copy to or from (so the copies run at the
// bus's speed, without staging), until Destroy. The memory must outlive the handle and
// stay where it is. Failing to pin (a memlock limit) is not an error for the caller to
// stop on: copies then go through pageable memory, only slower.
std::string PinHost(Mlp* mlp, void* ptr, std::size_t bytes);

// Host <-> device copies of the parameters and optimizer moments (v unused by SGD).
std::string Upload(Mlp* mlp, const float* params, const float* m, const float* v);
std::string Download(Mlp* mlp, float* params, float* m, float* v);

// Zeroes the device gradient, then adds the gradient of the summed loss over the n host
// samples (x: n x 784 normalised floats, y: labels); *loss is that summed loss.
std::string Gradient(Mlp* mlp, const float* x, const uint8_t* y, int n, double* loss);
// The device gradient buffer (offsets.total floats), e.g. for an NCCL allreduce.
float* DeviceGradient(Mlp* mlp);

// params -= update(grad * grad_scale).
std::string ApplyAdam(Mlp* mlp, float lr, float beta1, float beta2, float eps, uint64_t t,
                      float grad_scale);
std::string ApplySgd(Mlp* mlp, float lr, float momentum, float grad_scale);

// Number of correct predictions among n host samples.
std::string Correct(Mlp* mlp, const float* x, const uint8_t* y, int n, int64_t* correct);

// The plugin's side: the functions above, as one table, returned by the plugin's
// extern "C" kApiSymbol.
struct Api {
  uint32_t abi_version;
  std::string (*create)(int, const LayerOffsets&, bool, Mlp**);
  void (*destroy)(Mlp*);
  std::string (*pin_host)(Mlp*, void*, std::size_t);
  std::string (*upload)(Mlp*, const float*, const float*, const float*);
  std::string (*download)(Mlp*, float*, float*, float*);
  std::string (*gradient)(Mlp*, const float*, const uint8_t*, int, double*);
  float* (*device_gradient)(Mlp*);
  std::string (*apply_adam)(Mlp*, float, float, float, float, uint64_t, float);
  std::string (*apply_sgd)(Mlp*, float, float, float);
  std::string (*correct)(Mlp*, const float*, const uint8_t*, int, int64_t*);
};
inline constexpr uint32_t kAbiVersion = 1;  // bump with any change to Api or the above
inline constexpr const char* kApiSymbol = "cairn_fmnist_cuda_api";
inline constexpr const char* kPluginName = "libcairn_fmnist_cuda.so";

}  // namespace cairn::fmnist::cuda
