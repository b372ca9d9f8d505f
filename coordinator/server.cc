#include "coordinator/server.h"

#include <array>
#include <cstdlib>

#include "common/log.h"

namespace cairn::coord {

namespace asio = boost::asio;
using asio::ip::tcp;

Result<std::unique_ptr<Server>> Server::Listen(asio::io_context& io, const std::string& host,
                                               uint16_t port, Service* service,
                                               uint32_t max_frame_bytes) {
  std::unique_ptr<Server> s(new Server(io, service, max_frame_bytes));
  boost::system::error_code ec;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) return MakeError(Code::kInvalidArgument, "listen address '{}': {}", host, ec.message());
  tcp::endpoint ep(addr, port);
  s->acceptor_.open(ep.protocol(), ec);
  if (!ec) s->acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) s->acceptor_.bind(ep, ec);
  if (!ec) s->acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return MakeError(ec == asio::error::address_in_use ? Code::kUnavailable : Code::kInternal,
                     "listen on {}:{}: {}", host, port, ec.message());
  }
  s->port_ = s->acceptor_.local_endpoint().port();
  // Progress of ranks without an agent: UDP on the same address, the same port if free.
  for (uint16_t want : {s->port_, uint16_t{0}}) {
    boost::system::error_code uec;
    s->progress_.open(asio::ip::udp::endpoint(addr, want).protocol(), uec);
    if (!uec) s->progress_.bind(asio::ip::udp::endpoint(addr, want), uec);
    if (!uec) break;
    s->progress_.close(uec);
  }
  if (s->progress_.is_open()) {
    s->progress_port_ = s->progress_.local_endpoint().port();
    service->set_progress_endpoint(host, s->progress_port_);
    asio::co_spawn(io, s->ReceiveProgress(), asio::detached);
  } else {
    log::Logger("coordinator")->warn("no UDP socket for progress reports on {}: ranks without "
                                     "an agent cannot report progress",
                                     host);
  }
  service->set_orders_changed([srv = s.get()](const std::string& node) {
    auto [b, e] = srv->held_.equal_range(node);
    for (auto it = b; it != e; ++it) it->second->cancel();
  });
  asio::co_spawn(io, s->Accept(), asio::detached);
  return s;
}

void Server::Stop() {
  boost::system::error_code ec;
  service_->set_orders_changed(nullptr);
  for (auto& [node, timer] : held_) timer->cancel();
  // What was handled is kept (its clients get the stored replies when they retry).
  if (auto st = service_->CommitGroup(); !st) {
    log::Logger("coordinator")->error("stop: {}", st.error().ToString());
  }
  committed_.cancel();
  acceptor_.close(ec);
  progress_.close(ec);
  for (const auto& sock : open_) sock->close(ec);
  open_.clear();
}

void Server::JoinGroup() {
  if (auto st = service_->BeginGroup(); !st) {
    // Without a group each request commits on its own: slower, still correct.
    log::Logger("coordinator")->warn("group commit: {}", st.error().ToString());
    return;
  }
  if (commit_posted_) return;
  commit_posted_ = true;
  asio::post(io_, [this] { CommitGroup(); });
}

void Server::CommitGroup() {
  commit_posted_ = false;
  if (auto st = service_->CommitGroup(); !st) {
    log::Logger("coordinator")->critical(
        "the state database could not commit ({}); stopping so that a restart recovers from "
        "what is durable",
        st.error().ToString());
    log::Logger("coordinator")->flush();
    std::_Exit(70);
  }
  committed_.cancel();  // wakes every reply of this group
}

asio::awaitable<void> Server::ReceiveProgress() {
  std::array<char, 65536> buf;
  int errors = 0;  // in a row
  for (;;) {  // until Stop() closes the socket
    boost::system::error_code ec;
    asio::ip::udp::endpoint from;
    const std::size_t n = co_await progress_.async_receive_from(
        asio::buffer(buf), from, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !progress_.is_open()) co_return;
    if (ec) {
      if (++errors >= 100) {
        log::Logger("coordinator")->error("progress socket: {}; no more progress reports",
                                          ec.message());
        co_return;
      }
      continue;
    }
    errors = 0;
    service_->OnProgressDatagram(std::string_view(buf.data(), n));
  }
}

asio::awaitable<void> Server::Accept() {
  for (;;) {
    boost::system::error_code ec;
    auto sock = std::make_shared<tcp::socket>(io_);
    co_await acceptor_.async_accept(*sock, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      log::Logger("coordinator")->warn("accept: {}", ec.message());
      continue;
    }
    sock->set_option(tcp::no_delay(true), ec);
    open_.insert(sock);
    asio::co_spawn(io_, Serve(sock), asio::detached);
  }
}

asio::awaitable<void> Server::Serve(std::shared_ptr<tcp::socket> sock) {
  boost::system::error_code ec;
  const auto peer = sock->remote_endpoint(ec);
  const std::string who = ec ? std::string("?") : fmt::format("{}:{}", peer.address().to_string(),
                                                              peer.port());
  FrameDecoder decoder(max_frame_);
  std::array<std::byte, 64 * 1024> buf;
  for (;;) {
    const std::size_t n = co_await sock->async_read_some(
        asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (ec) break;  // closed by the peer or by Stop()
    std::span<const std::byte> chunk(buf.data(), n);
    bool close = false;
    for (;;) {
      chunk = chunk.subspan(decoder.Feed(chunk));
      auto next = decoder.Next();
      if (!next) {
        log::Logger("coordinator")->warn("closing connection from {}: {}", who,
                                         next.error().ToString());
        close = true;
        break;
      }
      if (!*next) break;
      JoinGroup();
      proto::Envelope reply = service_->Handle(**next);
      if (const int64_t hold = reply.has_error() ? 0 : service_->HoldMs(**next); hold > 0) {
        proto::HeartbeatRequest hb;
        hb.ParseFromString((*next)->payload());
        asio::steady_timer timer(io_);
        timer.expires_after(std::chrono::milliseconds(hold));
        auto held = held_.emplace(hb.node_id(), &timer);
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        held_.erase(held);
        if (!acceptor_.is_open()) {  // stopping
          close = true;
          break;
        }
        JoinGroup();
        reply = service_->OrdersReply(**next);
      }
      if (service_->group_open()) {
        co_await committed_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (!acceptor_.is_open()) {
          close = true;
          break;
        }
      }
      auto frame = EncodeFrame(reply);
      if (!frame) {
        frame = EncodeFrame(MakeErrorReply(**next, frame.error()));
        if (!frame) {
          close = true;
          break;
        }
      }
      co_await asio::async_write(*sock, asio::buffer(*frame),
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        close = true;
        break;
      }
    }
    if (close) break;
  }
  sock->close(ec);
  open_.erase(sock);
}

}  // namespace cairn::coord
