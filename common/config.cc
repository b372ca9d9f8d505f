#include "common/config.h"

#include "common/log.h"
#include "common/yaml.h"

namespace cairn {
namespace {

Status Validate(const Config& c, const std::string& file) {
  if (c.checkpoint.chunk_size < 4096 || c.checkpoint.chunk_size > (64ull << 20)) {
    return MakeError(Code::kInvalidArgument,
                     "{}: key 'checkpoint.chunk_size': {} is outside 4KiB..64MiB", file,
                     c.checkpoint.chunk_size);
  }
  if (c.checkpoint.max_inflight < 1) {
    return MakeError(Code::kInvalidArgument, "{}: key 'checkpoint.max_inflight' must be >= 1",
                     file);
  }
  if (c.checkpoint.keep_last < 1) {
    return MakeError(Code::kInvalidArgument, "{}: key 'checkpoint.keep_last' must be >= 1",
                     file);
  }
  if (c.checkpoint.keep_every < 0) {
    return MakeError(Code::kInvalidArgument, "{}: key 'checkpoint.keep_every' must be >= 0",
                     file);
  }
  if (auto lvl = log::ParseLevel(c.log_level); !lvl) {
    return MakeError(Code::kInvalidArgument, "{}: key 'log_level': {}", file,
                     lvl.error().message());
  }
  return OkStatus();
}

Result<Config> FromNode(const YAML::Node& root, const std::string& file) {
  Config c;
  CAIRN_ASSIGN_OR_RETURN(auto top, yaml::YamlMap::Of(root, file));
  CAIRN_RETURN_IF_ERROR(top.Optional("state_dir", &c.state_dir));
  CAIRN_RETURN_IF_ERROR(top.Optional("log_level", &c.log_level));

  CAIRN_ASSIGN_OR_RETURN(auto coord, top.Child("coordinator"));
  CAIRN_RETURN_IF_ERROR(coord.Optional("listen", &c.coordinator.listen));
  CAIRN_RETURN_IF_ERROR(coord.Optional("heartbeat_timeout", &c.coordinator.heartbeat_timeout));
  yaml::ByteSize frame{c.coordinator.max_frame_bytes};
  CAIRN_RETURN_IF_ERROR(coord.Optional("max_frame_size", &frame));
  c.coordinator.max_frame_bytes = frame.bytes;
  CAIRN_RETURN_IF_ERROR(coord.Finish());

  CAIRN_ASSIGN_OR_RETURN(auto agent, top.Child("agent"));
  CAIRN_RETURN_IF_ERROR(agent.Optional("coordinator", &c.agent.coordinator));
  CAIRN_RETURN_IF_ERROR(agent.Optional("heartbeat_interval", &c.agent.heartbeat_interval));
  CAIRN_RETURN_IF_ERROR(agent.Optional("cpus", &c.agent.cpus));
  yaml::ByteSize mem{c.agent.memory_bytes};
  CAIRN_RETURN_IF_ERROR(agent.Optional("memory", &mem));
  c.agent.memory_bytes = mem.bytes;
  CAIRN_RETURN_IF_ERROR(agent.Optional("grace_period", &c.agent.grace_period));
  CAIRN_RETURN_IF_ERROR(agent.Finish());

  CAIRN_ASSIGN_OR_RETURN(auto ck, top.Child("checkpoint"));
  CAIRN_RETURN_IF_ERROR(ck.Optional("key_file", &c.checkpoint.key_file));
  yaml::ByteSize chunk{c.checkpoint.chunk_size};
  CAIRN_RETURN_IF_ERROR(ck.Optional("chunk_size", &chunk));
  c.checkpoint.chunk_size = chunk.bytes;
  CAIRN_RETURN_IF_ERROR(ck.Optional("max_inflight", &c.checkpoint.max_inflight));
  CAIRN_RETURN_IF_ERROR(ck.Optional("keep_last", &c.checkpoint.keep_last));
  CAIRN_RETURN_IF_ERROR(ck.Optional("keep_every", &c.checkpoint.keep_every));
  CAIRN_RETURN_IF_ERROR(ck.Finish());

  CAIRN_RETURN_IF_ERROR(top.Finish());
  CAIRN_RETURN_IF_ERROR(Validate(c, file));
  return c;
}

}  // namespace

Result<Config> ParseConfig(std::string_view yaml_text, std::string_view file) {
  CAIRN_ASSIGN_OR_RETURN(auto root, yaml::ParseDocument(yaml_text, file));
  return FromNode(root, std::string(file));
}

Result<Config> LoadConfig(const std::string& path) {
  CAIRN_ASSIGN_OR_RETURN(auto root, yaml::LoadFile(path));
  return WithContext(FromNode(root, path), "load config");
}

}  // namespace cairn

namespace cairn {

std::string ConfigToYaml(const Config& c) {
  auto ms = [](std::chrono::milliseconds d) { return fmt::format("{}ms", d.count()); };
  return fmt::format(
      "state_dir: \"{}\"\n"
      "log_level: {}\n"
      "coordinator:\n"
      "  listen: \"{}\"\n"
      "  heartbeat_timeout: {}\n"
      "  max_frame_size: {}\n"
      "agent:\n"
      "  coordinator: \"{}\"\n"
      "  heartbeat_interval: {}\n"
      "  cpus: {}\n"
      "  memory: {}\n"
      "  grace_period: {}\n"
      "checkpoint:\n"
      "  key_file: \"{}\"\n"
      "  chunk_size: {}\n"
      "  max_inflight: {}\n"
      "  keep_last: {}\n"
      "  keep_every: {}\n",
      c.state_dir, c.log_level, c.coordinator.listen, ms(c.coordinator.heartbeat_timeout),
      c.coordinator.max_frame_bytes, c.agent.coordinator, ms(c.agent.heartbeat_interval),
      c.agent.cpus, c.agent.memory_bytes, ms(c.agent.grace_period), c.checkpoint.key_file,
      c.checkpoint.chunk_size, c.checkpoint.max_inflight, c.checkpoint.keep_last,
      c.checkpoint.keep_every);
}

}  // namespace cairn
