// The host side of cuda_mlp.h: loads the CUDA plugin on the first Create and forwards
// every call to it (see cuda_mlp.h for why it is a plugin).
//
// Threading: the first Create loads the plugin once (std::call_once); the forwarding
// functions are as thread-safe as the plugin's.
#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

#include "examples/fmnist/cuda_mlp.h"

namespace cairn::fmnist::cuda {
namespace {

const Api* g_api = nullptr;
std::string g_load_error;

// Where the plugin is looked for: next to the executable's bin/ (../lib), beside the
// executable, then the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache).
std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    out.push_back((exe.parent_path().parent_path() / "lib" / kPluginName).string());
    out.push_back((exe.parent_path() / kPluginName).string());
  }
  out.emplace_back(kPluginName);
  return out;
}

void Load() {
  std::string tried;
  for (const std::string& path : Candidates()) {
    if (path.find('/') != std::string::npos && !std::filesystem::exists(path)) {
      tried += "\n  " + path + ": no such file";
      continue;
    }
    void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* e = ::dlerror();
      tried += "\n  " + path + ": " + (e != nullptr ? e : "dlopen failed");
      continue;
    }
    using Entry = const Api* (*)();
    auto entry = reinterpret_cast<Entry>(::dlsym(h, kApiSymbol));
    const Api* api = entry != nullptr ? entry() : nullptr;
    if (api == nullptr) {
      tried += "\n  " + path + ": no " + kApiSymbol;
    } else if (api->abi_version != kAbiVersion) {
      tried += "\n  " + path + ": interface version " + std::to_string(api->abi_version) +
               ", this program needs " + std::to_string(kAbiVersion);
    } else {
      g_api = api;  // the plugin stays loaded for the process's life
      return;
    }
    ::dlclose(h);
  }
  g_load_error = std::string("cannot load the CUDA model plugin ") + kPluginName + ":" + tried;
}

}  // namespace

std::string Create(int device, const LayerOffsets& offsets, bool adam, Mlp** out) {
  static std::once_flag once;
  std::call_once(once, Load);
  if (g_api == nullptr) return g_load_error;
  return g_api->create(device, offsets, adam, out);
}

// The functions below take the handle Create made: the plugin is loaded by then.
void Destroy(Mlp* mlp) {
  if (mlp != nullptr && g_api != nullptr) g_api->destroy(mlp);
}
std::string PinHost(Mlp* mlp, void* ptr, std::size_t bytes) {
  return g_api->pin_host(mlp, ptr, bytes);
}
std::string Upload(Mlp* mlp, const float* params, const float* m, const float* v) {
  return g_api->upload(mlp, params, m, v);
}
std::string Download(Mlp* mlp, float* params, float* m, float* v) {
  return g_api->download(mlp, params, m, v);
}
std::string Gradient(Mlp* mlp, const float* x, const uint8_t* y, int n, double* loss) {
  return g_api->gradient(mlp, x, y, n, loss);
}
float* DeviceGradient(Mlp* mlp) { return g_api->device_gradient(mlp); }
std::string ApplyAdam(Mlp* mlp, float lr, float beta1, float beta2, float eps, uint64_t t,
                      float grad_scale) {
  return g_api->apply_adam(mlp, lr, beta1, beta2, eps, t, grad_scale);
}
std::string ApplySgd(Mlp* mlp, float lr, float momentum, float grad_scale) {
  return g_api->apply_sgd(mlp, lr, momentum, grad_scale);
}
std::string Correct(Mlp* mlp, const float* x, const uint8_t* y, int n, int64_t* correct) {
  return g_api->correct(mlp, x, y, n, correct);
}

}  // namespace cairn::fmnist::cuda
