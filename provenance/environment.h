// The environment a run executes in: hosts, operating system, compiler, library versions,
// GPUs and driver, cairn's own version.
//
// Promise: DescribeEnvironment fills an EnvironmentInfo from
//   hosts            the given hosts, or this machine's host name
//   os               PRETTY_NAME of /etc/os-release ("Debian GNU/Linux 12 (bookworm)")
//   kernel           uname: sysname, release, version, machine
//   compiler         the compiler that built cairn ("g++ 12.2.0")
//   library_versions BuildLibraryVersions() below, plus "openssl" as loaded at run time
//   gpus, driver_version  `nvidia-smi --query-gpu=index,name,memory.total,uuid,
//                    driver_version --format=csv,noheader,nounits` when nvidia-smi is on
//                    PATH; none otherwise
//   cairn_version    the `git describe` of the cairn build (generated cairn/version.h)
// What cannot be found out (no /etc/os-release, nvidia-smi failing) is written to
// `notes` instead of failing the call: a run is never refused for an incomplete
// environment description. Versions named "(headers)" are those cairn was compiled
// against, which is what cairn's own code uses.
//
// Threading: thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/cairn.pb.h"

namespace cairn::prov {

struct EnvironmentOptions {
  std::vector<std::string> hosts;  // the run's hosts; empty: this machine's host name
  bool query_gpus = true;
  std::string nvidia_smi = "nvidia-smi";
  std::chrono::milliseconds timeout = std::chrono::seconds(20);
};

Result<proto::EnvironmentInfo> DescribeEnvironment(const EnvironmentOptions& options = {});

// Versions fixed when cairn was compiled: "openmpi" (mpi.h), "hdf5" (H5public.h),
// "protobuf", "nlohmann_json", "openssl_headers", and with CUDA "cuda_runtime"
// (CUDART_VERSION) and "nccl" (NCCL_VERSION_CODE). A library whose header was not
// available at build time is absent.
std::map<std::string, std::string> BuildLibraryVersions();

// The compiler that built this file: "g++ 12.2.0", "clang 19.1.7", ...
std::string CompilerVersion();

// PRETTY_NAME from /etc/os-release text (quotes and escapes removed); empty if absent.
std::string OsPrettyName(std::string_view os_release);

struct GpuQuery {
  std::vector<proto::GpuInfo> gpus;
  std::string driver_version;  // empty if no GPU; "535.1, 550.2" if they differ
};
// Parses the CSV above (one GPU per line: index, name, memory MiB, uuid, driver).
Result<GpuQuery> ParseNvidiaSmiCsv(std::string_view csv);

}  // namespace cairn::prov
