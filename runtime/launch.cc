#include "runtime/launch.h"

#include <charconv>
#include <cstdlib>

namespace cairn::rt {
namespace {

struct Scheme {
  const char* name;
  const char* rank;
  const char* size;
  const char* local_rank;
};

constexpr Scheme kSchemes[] = {
    {"cairn", "CAIRN_RANK", "CAIRN_WORLD_SIZE", "CAIRN_LOCAL_RANK"},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
};

Result<int> ParseInt(const EnvLookup& env, const char* var, bool required, int fallback) {
  const char* v = env(var);
  if (v == nullptr || *v == '\0') {
    if (required) return MakeError(Code::kInvalidArgument, "{} is not set", var);
    return fallback;
  }
  std::string_view s(v);
  int out = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || ptr != s.data() + s.size() || out < 0) {
    return MakeError(Code::kInvalidArgument, "{}='{}' is not a non-negative integer", var, s);
  }
  return out;
}

}  // namespace

Result<LaunchInfo> ReadLaunchContract(const EnvLookup& env) {
  LaunchInfo info;
  for (const Scheme& s : kSchemes) {
    const char* r = env(s.rank);
    if (r == nullptr || *r == '\0') continue;
    info.launcher = s.name;
    auto ctx = fmt::format("launch contract ({})", s.name);
    CAIRN_ASSIGN_OR_RETURN(info.rank, WithContext(ParseInt(env, s.rank, true, 0), ctx));
    CAIRN_ASSIGN_OR_RETURN(info.world_size, WithContext(ParseInt(env, s.size, true, 0), ctx));
    CAIRN_ASSIGN_OR_RETURN(info.local_rank,
                           WithContext(ParseInt(env, s.local_rank, false, 0), ctx));
    if (info.world_size < 1) {
      return MakeError(Code::kInvalidArgument, "{}: {}={} must be at least 1", ctx, s.size,
                       info.world_size);
    }
    if (info.rank >= info.world_size) {
      return MakeError(Code::kInvalidArgument, "{}: {}={} is not below {}={}", ctx, s.rank,
                       info.rank, s.size, info.world_size);
    }
    break;
  }
  auto str = [&](const char* var) {
    const char* v = env(var);
    return std::string(v == nullptr ? "" : v);
  };
  info.run_id = str("CAIRN_RUN_ID");
  info.progress_socket = str("CAIRN_PROGRESS_SOCKET");
  info.ckpt_dir = str("CAIRN_CKPT_DIR");
  info.provenance_digest = str("CAIRN_PROVENANCE_DIGEST");
  return info;
}

Result<LaunchInfo> ReadLaunchContract() {
  return ReadLaunchContract([](const char* v) { return std::getenv(v); });
}

}  // namespace cairn::rt
