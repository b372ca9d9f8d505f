// The node's GPUs, as the agent registers them.
//
// Promise: DiscoverGpus asks the NVIDIA driver itself through NVML (libnvidia-ml.so.1,
// loaded at run time, so the agent builds and runs on machines without it) for every
// GPU's index (PCI bus order, as CUDA_DEVICE_ORDER=PCI_BUS_ID numbers them), model,
// memory and UUID. Without NVML it falls back to counting /dev/nvidiaN device files
// (indices only) and says so in `source`/`note`. When the agent itself runs with
// CUDA_VISIBLE_DEVICES set (a SLURM allocation, a shared machine), only the GPUs it
// names are offered: entries are PCI-order indices or (prefixes of) UUIDs; as with CUDA,
// the list ends at the first entry that names no GPU. The scheduler hands out positions
// in the registered list; RankGpuList turns them into these concrete indices for a rank's
// CUDA_VISIBLE_DEVICES.
//
// Threading: free functions; DiscoverGpus may be called from any thread (NVML is
// initialised and shut down within the call).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace cairn::worker {

struct GpuDevice {
  uint32_t index = 0;  // PCI bus order (nvidia-smi's index)
  std::string model;   // "NVIDIA H100 80GB HBM3"; empty when unknown
  uint64_t memory_bytes = 0;
  std::string uuid;    // "GPU-…"; empty when unknown
};

struct GpuInventory {
  std::vector<GpuDevice> devices;
  std::string source;          // "nvml", "/dev/nvidia*" or "none"
  std::string driver_version;  // from NVML, when it answered
  std::string note;            // why NVML was not used, or what was filtered out
};

// Reads the driver (or the device files). `cuda_visible_devices` is the agent's own
// CUDA_VISIBLE_DEVICES (nullopt when unset).
GpuInventory DiscoverGpus(const std::optional<std::string>& cuda_visible_devices);

// Keeps the devices CUDA_VISIBLE_DEVICES names, in its order. An empty value, or one
// whose first entry names no device ("-1", "NoDevFiles"), leaves none.
std::vector<GpuDevice> FilterVisible(const std::vector<GpuDevice>& all, const std::string& visible);

// The share of simulated node `part` of `parts` on one machine (`cairn up --agents N`):
// contiguous, sizes differing by at most one, every device in exactly one share.
std::vector<GpuDevice> ShareOf(const std::vector<GpuDevice>& all, int part, int parts);

// Maps the positions cairnd assigned ("0,2") to this node's concrete device indices
// ("4,6"). A position past the end of `devices` is an error (cairnd and the agent
// disagree on the node's GPUs); it returns nullopt and the launch must fail.
std::optional<std::string> RankGpuList(const std::string& positions,
                                       const std::vector<GpuDevice>& devices);

}  // namespace cairn::worker
