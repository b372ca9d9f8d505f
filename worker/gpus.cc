#include "worker/gpus.h"

#include <dlfcn.h>

#include <charconv>
#include <filesystem>
#include <string_view>

#include <fmt/format.h>

namespace cairn::worker {
namespace {

// The few NVML entry points used, declared here so that the build needs no NVML header.
// Their signatures are NVML's stable C ABI (nvml.h, versions _v2 where NVML has them).
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct NvmlMemory {
  unsigned long long total, free, used;
};
constexpr nvmlReturn_t kNvmlSuccess = 0;

class Nvml {
 public:
  Nvml() {
    lib_ = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) {
      const char* e = ::dlerror();
      error_ = e != nullptr ? e : "libnvidia-ml.so.1 not found";
      return;
    }
    bool ok = Bind(init_, "nvmlInit_v2") && Bind(shutdown_, "nvmlShutdown") &&
              Bind(count_, "nvmlDeviceGetCount_v2") &&
              Bind(handle_, "nvmlDeviceGetHandleByIndex_v2") && Bind(name_, "nvmlDeviceGetName") &&
              Bind(uuid_, "nvmlDeviceGetUUID") && Bind(memory_, "nvmlDeviceGetMemoryInfo") &&
              Bind(driver_, "nvmlSystemGetDriverVersion") && Bind(string_, "nvmlErrorString");
    if (!ok) return;
    if (nvmlReturn_t rc = init_(); rc != kNvmlSuccess) {
      error_ = fmt::format("nvmlInit: {}", string_(rc));
      return;
    }
    initialised_ = true;
  }
  ~Nvml() {
    if (initialised_) shutdown_();
    if (lib_ != nullptr) ::dlclose(lib_);
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  bool usable() const { return initialised_; }
  const std::string& error() const { return error_; }

  bool Read(GpuInventory* inv) {
    unsigned int n = 0;
    if (nvmlReturn_t rc = count_(&n); rc != kNvmlSuccess) {
      error_ = fmt::format("nvmlDeviceGetCount: {}", string_(rc));
      return false;
    }
    char buf[256];
    if (driver_(buf, sizeof(buf)) == kNvmlSuccess) inv->driver_version = buf;
    for (unsigned int i = 0; i < n && i < 64; ++i) {
      nvmlDevice_t d = nullptr;
      if (nvmlReturn_t rc = handle_(i, &d); rc != kNvmlSuccess) {
        // A GPU the driver lists but cannot open (fallen off the bus, no permission) is
        // not offered; the note says which.
        inv->note += fmt::format("{}GPU {}: {}", inv->note.empty() ? "" : "; ", i, string_(rc));
        continue;
      }
      GpuDevice g;
      g.index = i;
      if (name_(d, buf, sizeof(buf)) == kNvmlSuccess) g.model = buf;
      if (uuid_(d, buf, sizeof(buf)) == kNvmlSuccess) g.uuid = buf;
      NvmlMemory m{};
      if (memory_(d, &m) == kNvmlSuccess) g.memory_bytes = m.total;
      inv->devices.push_back(std::move(g));
    }
    return true;
  }

 private:
  template <typename F>
  bool Bind(F*& f, const char* symbol) {
    f = reinterpret_cast<F*>(::dlsym(lib_, symbol));
    if (f == nullptr) error_ = fmt::format("libnvidia-ml.so.1 has no {}", symbol);
    return f != nullptr;
  }

  void* lib_ = nullptr;
  bool initialised_ = false;
  std::string error_;
  nvmlReturn_t (*init_)() = nullptr;
  nvmlReturn_t (*shutdown_)() = nullptr;
  nvmlReturn_t (*count_)(unsigned int*) = nullptr;
  nvmlReturn_t (*handle_)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*name_)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*uuid_)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*memory_)(nvmlDevice_t, NvmlMemory*) = nullptr;
  nvmlReturn_t (*driver_)(char*, unsigned int) = nullptr;
  const char* (*string_)(nvmlReturn_t) = nullptr;
};

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The device an entry of CUDA_VISIBLE_DEVICES names, or nullptr.
const GpuDevice* Lookup(const std::vector<GpuDevice>& all, std::string_view entry) {
  uint32_t index = 0;
  auto [end, ec] = std::from_chars(entry.data(), entry.data() + entry.size(), index);
  if (ec == std::errc() && end == entry.data() + entry.size()) {
    for (const auto& g : all) {
      if (g.index == index) return &g;
    }
    return nullptr;
  }
  // A UUID or an unambiguous prefix of one ("GPU-8932f937"), as CUDA accepts.
  const GpuDevice* found = nullptr;
  for (const auto& g : all) {
    if (!g.uuid.empty() && std::string_view(g.uuid).starts_with(entry)) {
      if (found != nullptr) return nullptr;
      found = &g;
    }
  }
  return entry.size() >= 5 ? found : nullptr;  // "GPU-" alone is no name
}

}  // namespace

std::vector<GpuDevice> FilterVisible(const std::vector<GpuDevice>& all, const std::string& visible) {
  std::vector<GpuDevice> out;
  std::string_view rest(visible);
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    std::string_view entry = Trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const GpuDevice* g = Lookup(all, entry);
    if (g == nullptr) break;  // CUDA ignores everything from the first bad entry on
    bool dup = false;
    for (const auto& o : out) dup = dup || o.index == g->index;
    if (!dup) out.push_back(*g);
  }
  return out;
}

GpuInventory DiscoverGpus(const std::optional<std::string>& cuda_visible_devices) {
  GpuInventory inv;
  {
    Nvml nvml;
    if (nvml.usable() && nvml.Read(&inv)) {
      inv.source = "nvml";
    } else {
      inv.note = "NVML: " + nvml.error();
    }
  }
  if (inv.source.empty()) {
    for (uint32_t i = 0; i < 64; ++i) {
      std::error_code ec;
      if (std::filesystem::exists(fmt::format("/dev/nvidia{}", i), ec)) {
        inv.devices.push_back(GpuDevice{i, "", 0, ""});
      }
    }
    inv.source = inv.devices.empty() ? "none" : "/dev/nvidia*";
  }
  if (cuda_visible_devices) {
    const std::size_t before = inv.devices.size();
    inv.devices = FilterVisible(inv.devices, *cuda_visible_devices);
    if (inv.devices.size() != before) {
      inv.note += fmt::format("{}CUDA_VISIBLE_DEVICES='{}' leaves {} of {} GPUs",
                              inv.note.empty() ? "" : "; ", *cuda_visible_devices,
                              inv.devices.size(), before);
    }
  }
  return inv;
}

std::vector<GpuDevice> ShareOf(const std::vector<GpuDevice>& all, int part, int parts) {
  if (parts <= 0 || part < 0 || part >= parts) return {};
  const std::size_t n = all.size(), p = static_cast<std::size_t>(parts);
  const std::size_t begin = n * static_cast<std::size_t>(part) / p;
  const std::size_t end = n * (static_cast<std::size_t>(part) + 1) / p;
  return std::vector<GpuDevice>(all.begin() + static_cast<std::ptrdiff_t>(begin),
                                all.begin() + static_cast<std::ptrdiff_t>(end));
}

std::optional<std::string> RankGpuList(const std::string& positions,
                                       const std::vector<GpuDevice>& devices) {
  std::string out;
  std::string_view rest(positions);
  while (!rest.empty()) {
    const std::size_t comma = rest.find(',');
    std::string_view entry = Trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    std::size_t pos = 0;
    auto [end, ec] = std::from_chars(entry.data(), entry.data() + entry.size(), pos);
    if (ec != std::errc() || end != entry.data() + entry.size() || pos >= devices.size()) {
      return std::nullopt;
    }
    out += fmt::format("{}{}", out.empty() ? "" : ",", devices[pos].index);
  }
  return out;
}

}  // namespace cairn::worker
