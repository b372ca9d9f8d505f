#include "common/config.h"

#include <arpa/inet.h>

#include <charconv>

#include "common/log.h"
#include "common/yaml.h"

namespace cairn {

Result<HostPort> ParseHostPort(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return MakeError(Code::kInvalidArgument, "'{}' is not HOST:PORT (e.g. 127.0.0.1:7070)", text);
  }
  std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  unsigned value = 0;
  auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || p != port.data() + port.size() || value > 65535) {
    return MakeError(Code::kInvalidArgument, "'{}': port '{}' is not a number 0..65535", text,
                     port);
  }
  HostPort out{std::string(host), static_cast<uint16_t>(value)};
  in6_addr addr{};
  if (::inet_pton(AF_INET, out.host.c_str(), &addr) != 1 &&
      ::inet_pton(AF_INET6, out.host.c_str(), &addr) != 1) {
    return MakeError(Code::kInvalidArgument,
                     "'{}': host '{}' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)", text,
                     host);
  }
  return out;
}

Status CheckHeartbeatTimeout(std::chrono::milliseconds timeout) {
  if (timeout < std::chrono::seconds(1)) {
    return MakeError(Code::kInvalidArgument,
                     "{} ms is below 1 s, the agents' heartbeat interval (live nodes would be "
                     "declared lost)",
                     timeout.count());
  }
  return OkStatus();
}

Status CheckCpus(int64_t cpus) {
  if (cpus < 0 || cpus > (1 << 20)) {
    return MakeError(Code::kInvalidArgument, "{} is outside 0..1048576 (0: the cores online)",
                     cpus);
  }
  return OkStatus();
}

Status CheckStateDir(std::string_view dir) {
  if (!dir.empty() && dir.front() != '/') {
    return MakeError(Code::kInvalidArgument, "'{}' is not an absolute path", dir);
  }
  return OkStatus();
}

namespace {

// Reads `key` if present and applies `check` to its value; a failed check names the
// value's file:line:col and the dotted key.
template <typename T, typename Check>
Status ReadChecked(yaml::YamlMap& map, std::string_view key, T* out, Check check) {
  CAIRN_RETURN_IF_ERROR(map.Optional(key, out));
  if (!map.Has(key)) return OkStatus();
  Status st = check(*out);
  if (st) return st;
  return MakeError(Code::kInvalidArgument, "{}key '{}': {}", map.Where(map.Raw(key)),
                   map.KeyPath(key), st.error().message());
}

Status CheckLogLevel(const std::string& level) {
  auto parsed = log::ParseLevel(level);
  if (!parsed) return std::unexpected(std::move(parsed).error());
  return OkStatus();
}

Result<Config> FromNode(const YAML::Node& root, const std::string& file) {
  Config c;
  CAIRN_ASSIGN_OR_RETURN(auto top, yaml::YamlMap::Of(root, file));
  CAIRN_RETURN_IF_ERROR(ReadChecked(top, "state_dir", &c.state_dir, CheckStateDir));
  CAIRN_RETURN_IF_ERROR(ReadChecked(top, "log_level", &c.log_level, CheckLogLevel));

  CAIRN_ASSIGN_OR_RETURN(auto coord, top.Child("coordinator"));
  CAIRN_RETURN_IF_ERROR(ReadChecked(coord, "listen", &c.coordinator.listen,
                                    [](const std::string& v) -> Status {
                                      CAIRN_RETURN_IF_ERROR(ParseHostPort(v));
                                      return OkStatus();
                                    }));
  CAIRN_RETURN_IF_ERROR(ReadChecked(coord, "heartbeat_timeout", &c.coordinator.heartbeat_timeout,
                                    CheckHeartbeatTimeout));
  CAIRN_RETURN_IF_ERROR(coord.Optional("quarantine_time", &c.coordinator.quarantine_time));
  CAIRN_RETURN_IF_ERROR(coord.Finish());

  CAIRN_ASSIGN_OR_RETURN(auto agent, top.Child("agent"));
  CAIRN_RETURN_IF_ERROR(ReadChecked(agent, "cpus", &c.agent.cpus, CheckCpus));
  yaml::ByteSize mem{c.agent.memory_bytes};
  CAIRN_RETURN_IF_ERROR(agent.Optional("memory", &mem));
  c.agent.memory_bytes = mem.bytes;
  CAIRN_RETURN_IF_ERROR(agent.Finish());

  CAIRN_RETURN_IF_ERROR(top.Finish());
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

std::string ConfigToYaml(const Config& c) {
  auto ms = [](std::chrono::milliseconds d) { return fmt::format("{}ms", d.count()); };
  return fmt::format(
      "state_dir: \"{}\"\n"
      "log_level: {}\n"
      "coordinator:\n"
      "  listen: \"{}\"\n"
      "  heartbeat_timeout: {}\n"
      "  quarantine_time: {}\n"
      "agent:\n"
      "  cpus: {}\n"
      "  memory: {}\n",
      c.state_dir, c.log_level, c.coordinator.listen, ms(c.coordinator.heartbeat_timeout),
      ms(c.coordinator.quarantine_time), c.agent.cpus, c.agent.memory_bytes);
}

}  // namespace cairn
