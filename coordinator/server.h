// cairnd's network front: a Boost.Asio TCP server speaking the framed Envelope protocol
// (frame.h) and handing each request to the Service.
//
// Promise: each connection is read through its own FrameDecoder; a malformed, oversized
// or otherwise untrustworthy stream is logged with the peer's address and that
// connection alone is closed, without affecting any other client. Requests on one
// connection are answered in order. Authentication is per request (Service::Handle).
// Long poll: a heartbeat that asks to wait (Service::HoldMs) is answered when its node's
// orders change or its wait ends, whichever comes first; only its own connection waits.
// Group commit: requests are handled inside one open state transaction
// (Service::BeginGroup); a commit is posted behind the requests already read, and every
// reply waits for it. Concurrent clients thus share one fsync, and no reply reports an
// effect that is not durable. A failed group commit stops cairnd (exit code 70): its
// memory would no longer match its database, and a restart recovers from the database
// (clients retry; requests are idempotent).
//
// Progress datagrams: Listen also binds a UDP socket on the same address (the same port
// number when it is free, else any), where ranks without an agent send their progress
// (runtime/progress.h); the Service is told where it is and gets every datagram
// (Service::OnProgressDatagram), which it authenticates.
//
// Threading: everything runs on the one io_context thread given to Listen (coroutines;
// no locks). Stop() closes the acceptor, the UDP socket and every connection.
#pragma once

#include <utility>  // before Asio: boost/asio/awaitable.hpp needs std::exchange

#include <boost/asio.hpp>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "common/status.h"
#include "coordinator/frame.h"
#include "coordinator/service.h"

namespace cairn::coord {

class Server {
 public:
  // Listens on host:port (port 0: any free port).
  static Result<std::unique_ptr<Server>> Listen(boost::asio::io_context& io, const std::string& host,
                                                uint16_t port, Service* service,
                                                uint32_t max_frame_bytes = kMaxFrameBytes);
  uint16_t port() const { return port_; }
  uint16_t progress_port() const { return progress_port_; }
  void Stop();

 private:
  Server(boost::asio::io_context& io, Service* service, uint32_t max_frame)
      : io_(io),
        acceptor_(io),
        progress_(io),
        service_(service),
        max_frame_(max_frame),
        committed_(io) {
    committed_.expires_at(boost::asio::steady_timer::time_point::max());
  }
  boost::asio::awaitable<void> Accept();
  boost::asio::awaitable<void> ReceiveProgress();
  // Opens a group if none is open and makes sure its commit is posted.
  void JoinGroup();
  void CommitGroup();
  boost::asio::awaitable<void> Serve(std::shared_ptr<boost::asio::ip::tcp::socket> socket);

  boost::asio::io_context& io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::ip::udp::socket progress_;
  Service* service_;
  uint32_t max_frame_;
  uint16_t port_ = 0;
  uint16_t progress_port_ = 0;
  std::set<std::shared_ptr<boost::asio::ip::tcp::socket>> open_;
  // Held heartbeats by node: cancelled (woken) when the node's orders change.
  std::multimap<std::string, boost::asio::steady_timer*> held_;
  // Replies waiting for the open group's commit wait on this timer; the commit cancels it.
  boost::asio::steady_timer committed_;
  bool commit_posted_ = false;
};

}  // namespace cairn::coord
