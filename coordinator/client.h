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

// --state-dir, else CAIRN_STATE_DIR, else ~/.cairn.
std::string DefaultStateDir(const std::string& flag);

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
