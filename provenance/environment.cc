#include "provenance/environment.h"

#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>

#include <google/protobuf/stubs/common.h>
#include <nlohmann/json.hpp>

#include "cairn/version.h"
#include "common/io.h"
#include "common/subprocess.h"

// Headers of libraries cairn is built with, for their version macros only (nothing here
// links against them). Open MPI's C++ bindings are not wanted.
#define OMPI_SKIP_MPICXX 1
#if __has_include(<mpi.h>)
#include <mpi.h>
#endif
#if __has_include(<H5public.h>)
#include <H5public.h>
#endif
#if defined(CAIRN_PROVENANCE_CUDA) && __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#endif
#if defined(CAIRN_PROVENANCE_CUDA) && __has_include(<nccl.h>)
#include <nccl.h>
#endif

namespace cairn::prov {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// Splits a CSV line of nvidia-smi (no quoting: its fields hold no commas but names may
// hold spaces).
std::vector<std::string_view> SplitCsv(std::string_view line) {
  std::vector<std::string_view> out;
  while (true) {
    const std::size_t comma = line.find(',');
    out.push_back(Trim(line.substr(0, comma)));
    if (comma == std::string_view::npos) break;
    line.remove_prefix(comma + 1);
  }
  return out;
}

std::string ThisHostName() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

}  // namespace

std::string CompilerVersion() {
#if defined(__clang__)
  return fmt::format("clang {}.{}.{}", __clang_major__, __clang_minor__, __clang_patchlevel__);
#elif defined(__GNUC__)
  return fmt::format("g++ {}", __VERSION__);
#else
  return "unknown compiler";
#endif
}

std::map<std::string, std::string> BuildLibraryVersions() {
  std::map<std::string, std::string> v;
#if defined(OMPI_MAJOR_VERSION)
  v["openmpi"] =
      fmt::format("{}.{}.{}", OMPI_MAJOR_VERSION, OMPI_MINOR_VERSION, OMPI_RELEASE_VERSION);
#elif defined(MPI_VERSION)
  v["mpi_standard"] = fmt::format("{}.{}", MPI_VERSION, MPI_SUBVERSION);
#endif
#if defined(H5_VERS_MAJOR)
  v["hdf5"] = fmt::format("{}.{}.{}", H5_VERS_MAJOR, H5_VERS_MINOR, H5_VERS_RELEASE);
#endif
  v["protobuf"] =
      fmt::format("{}.{}.{}", GOOGLE_PROTOBUF_VERSION / 1000000,
                  GOOGLE_PROTOBUF_VERSION / 1000 % 1000, GOOGLE_PROTOBUF_VERSION % 1000);
  v["nlohmann_json"] = fmt::format("{}.{}.{}", NLOHMANN_JSON_VERSION_MAJOR,
                                   NLOHMANN_JSON_VERSION_MINOR, NLOHMANN_JSON_VERSION_PATCH);
  v["openssl_headers"] = OPENSSL_VERSION_STR;
#if defined(CUDART_VERSION)
  v["cuda_runtime"] = fmt::format("{}.{}", CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
#endif
#if defined(NCCL_MAJOR)
  v["nccl"] = fmt::format("{}.{}.{}", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH);
#endif
  return v;
}

std::string OsPrettyName(std::string_view os_release) {
  while (!os_release.empty()) {
    const std::size_t nl = os_release.find('\n');
    std::string_view line = os_release.substr(0, nl);
    os_release.remove_prefix(nl == std::string_view::npos ? os_release.size() : nl + 1);
    if (!line.starts_with("PRETTY_NAME=")) continue;
    line.remove_prefix(12);
    line = Trim(line);
    if (line.size() >= 2 && (line.front() == '"' || line.front() == '\'') &&
        line.back() == line.front()) {
      line = line.substr(1, line.size() - 2);
    }
    std::string out;
    for (std::size_t i = 0; i < line.size(); ++i) {  // shell-style backslash escapes
      if (line[i] == '\\' && i + 1 < line.size()) ++i;
      out.push_back(line[i]);
    }
    return out;
  }
  return {};
}

Result<GpuQuery> ParseNvidiaSmiCsv(std::string_view csv) {
  GpuQuery q;
  std::vector<std::string> drivers;
  std::size_t line_no = 0;
  while (!csv.empty()) {
    const std::size_t nl = csv.find('\n');
    const std::string_view line = Trim(csv.substr(0, nl));
    csv.remove_prefix(nl == std::string_view::npos ? csv.size() : nl + 1);
    ++line_no;
    if (line.empty()) continue;
    const auto f = SplitCsv(line);
    if (f.size() != 5) {
      return MakeError(Code::kInvalidArgument,
                       "nvidia-smi line {}: expected 5 fields (index, name, memory, uuid, "
                       "driver), got {}: '{}'",
                       line_no, f.size(), line);
    }
    proto::GpuInfo g;
    uint32_t index = 0;
    if (std::from_chars(f[0].data(), f[0].data() + f[0].size(), index).ec != std::errc()) {
      return MakeError(Code::kInvalidArgument, "nvidia-smi line {}: bad index '{}'", line_no, f[0]);
    }
    g.set_index(index);
    g.set_model(std::string(f[1]));
    uint64_t mib = 0;  // "[N/A]" and the like leave the size unknown (0)
    if (std::from_chars(f[2].data(), f[2].data() + f[2].size(), mib).ec == std::errc()) {
      g.set_memory_bytes(mib << 20);
    }
    g.set_uuid(std::string(f[3]));
    q.gpus.push_back(std::move(g));
    const std::string driver(f[4]);
    if (std::find(drivers.begin(), drivers.end(), driver) == drivers.end()) {
      drivers.push_back(driver);
    }
  }
  for (const auto& d : drivers) {
    if (!q.driver_version.empty()) q.driver_version += ", ";
    q.driver_version += d;
  }
  return q;
}

Result<proto::EnvironmentInfo> DescribeEnvironment(const EnvironmentOptions& options) {
  proto::EnvironmentInfo env;
  if (options.hosts.empty()) {
    env.add_hosts(ThisHostName());
  } else {
    for (const auto& h : options.hosts) env.add_hosts(h);
  }

  auto os_release = io::ReadWholeFile(io::DefaultFileSystem(), "/etc/os-release", 64 << 10);
  if (os_release) env.set_os(OsPrettyName(*os_release));
  if (env.os().empty()) {
    env.add_notes(os_release ? "/etc/os-release has no PRETTY_NAME"
                             : "no /etc/os-release: " + os_release.error().ToString());
  }
  struct utsname u;
  if (::uname(&u) == 0) {
    env.set_kernel(fmt::format("{} {} {} {}", u.sysname, u.release, u.version, u.machine));
  } else {
    env.add_notes(fmt::format("uname failed: {}", std::strerror(errno)));
  }
  env.set_compiler(CompilerVersion());
  for (const auto& [name, version] : BuildLibraryVersions()) {
    (*env.mutable_library_versions())[name] = version;
  }
  (*env.mutable_library_versions())["openssl"] = OpenSSL_version(OPENSSL_VERSION_STRING);
  env.set_cairn_version(CAIRN_VERSION);

  if (options.query_gpus) {
    const std::vector<std::string> argv = {
        options.nvidia_smi, "--query-gpu=index,name,memory.total,uuid,driver_version",
        "--format=csv,noheader,nounits"};
    subprocess::RunOptions ro;
    ro.timeout = options.timeout;
    auto r = subprocess::RunProcess(argv, ro);
    if (!r) {
      // Not installed: a machine without NVIDIA GPUs, nothing to note.
      if (r.error().code() != Code::kNotFound) env.add_notes(r.error().ToString());
    } else if (r->exit_code != 0) {
      // nvidia-smi explains itself on stdout ("... couldn't communicate with the driver").
      const std::string_view out = Trim(std::string_view(r->out).substr(0, r->out.find('\n')));
      env.add_notes(fmt::format("{} failed: {}", options.nvidia_smi,
                                out.empty() ? r->ErrSummary() : std::string(out)));
    } else if (auto q = ParseNvidiaSmiCsv(r->out); !q) {
      env.add_notes(q.error().ToString());
    } else {
      for (auto& g : q->gpus) *env.add_gpus() = std::move(g);
      env.set_driver_version(q->driver_version);
    }
  }
  return env;
}

}  // namespace cairn::prov
