// How clients (the CLI, agents, tests) find and call a cluster's cairnd.
//
// Promise: a state directory holds `cairnd.addr` ("host:port", written by cairnd once it
// listens) and `token` (the cluster token, mode 0600; a looser mode is refused).
// Client::Call sends one request with a fresh request id and waits for its reply within
// the deadline; if the connection breaks (cairnd restarting), it reconnects, re-reading
// the address, and resends the same request id, so a retried request is answered
// once (the service is idempotent). An error reply comes back as the Error it was, with
// its code.
//
// Threading: one thread per Client.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"

namespace cairn::coord {

struct StateDirPaths {
  explicit StateDirPaths(std::string dir);
  std::string dir, db, token, addr, lock, log;
};

// The state directory: `flag` (--state-dir) if not empty, else $CAIRN_STATE_DIR, else
// `configured` (the config file's state_dir), else ~/.cairn.
std::string DefaultStateDir(const std::string& flag, const std::string& configured);
// The same with the config file's state_dir that main() declared (SetConfiguredStateDir;
// "" if none), for code that does not see the config (the CLI's commands, cairn-rsh).
std::string DefaultStateDir(const std::string& flag);
// Declares the config file's state_dir. Call from main() only, before starting threads.
void SetConfiguredStateDir(std::string dir);

// Reads the token file, refusing one readable by group or others.
Result<std::string> ReadToken(const std::string& path);

class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const std::string& state_dir,
                                                 std::string client_id = "");
  ~Client();

  // payload: a serialized request message; returns the serialized reply message.
  Result<std::string> Call(const std::string& method, const std::string& payload,
                           std::chrono::milliseconds deadline = std::chrono::seconds(30));

 private:
  Client(StateDirPaths paths, std::string token, std::string client_id)
      : paths_(std::move(paths)), token_(std::move(token)), client_id_(std::move(client_id)) {}
  Status Reconnect(std::chrono::steady_clock::time_point deadline);
  void Disconnect();

  StateDirPaths paths_;
  std::string token_;
  std::string client_id_;
  uint64_t next_request_id_ = 1;
  int fd_ = -1;
};

}  // namespace cairn::coord
