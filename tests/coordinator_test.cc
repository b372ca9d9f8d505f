// cairnd as a real process with the real CLI and raw sockets: submit/status/cancel,
// idempotent retries, authentication, garbage on the socket, kill -9 and restart, one
// cairnd per state directory, bad job specs.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "common/io.h"
#include "coordinator/client.h"
#include "coordinator/frame.h"
#include "proto/cairn.pb.h"
#include "tests/process_util.h"

extern char** environ;

namespace cairn::testing {
namespace {

// A background process of this test, killed (SIGKILL) and reaped on destruction.
class Proc {
 public:
  ~Proc() { Kill(SIGKILL); }
  bool Spawn(std::vector<std::string> args) {
    const SpawnArgs argv(std::move(args));
    return posix_spawn(&pid_, argv.get()[0], nullptr, nullptr, argv.get(), environ) == 0;
  }
  void Kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

class Cairnd {
 public:
  explicit Cairnd(std::string state_dir, std::vector<std::string> extra = {})
      : dir_(std::move(state_dir)), extra_(std::move(extra)) {}
  ~Cairnd() { Kill(SIGKILL); }
  // Starts cairnd and waits (bounded) until it has written its address.
  bool Start() {
    std::error_code ec;
    std::filesystem::remove(dir_ + "/cairnd.addr", ec);
    std::string bin = BinDir() + "/cairnd";
    std::vector<std::string> args = {bin, "--state-dir", dir_, "--log-level", "warn"};
    args.insert(args.end(), extra_.begin(), extra_.end());
    const SpawnArgs argv(std::move(args));
    if (posix_spawn(&pid_, bin.c_str(), nullptr, nullptr, argv.get(), environ) != 0) return false;
    for (int i = 0; i < 200; ++i) {
      if (std::filesystem::exists(dir_ + "/cairnd.addr")) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    return false;
  }
  void Kill(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  int port() const {
    std::ifstream in(dir_ + "/cairnd.addr");
    std::string a;
    in >> a;
    return std::atoi(a.c_str() + a.rfind(':') + 1);
  }

 private:
  std::string dir_;
  std::vector<std::string> extra_;
  pid_t pid_ = -1;
};

// A raw TCP connection to cairnd.
int Dial(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Sends one envelope and reads one reply (nullopt: the server closed the connection).
std::optional<proto::Envelope> RoundTrip(int fd, const std::string& bytes) {
  if (::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size())) {
    return std::nullopt;
  }
  coord::FrameDecoder d;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return std::nullopt;
    std::string_view chunk(buf, static_cast<std::size_t>(n));
    chunk.remove_prefix(d.Feed(chunk));
    auto e = d.Next();
    if (!e) return std::nullopt;
    if (*e) return **e;
  }
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() / ("cairn_coord_" + io::RandomSuffix())).string();
    cairnd_ = std::make_unique<Cairnd>(dir_, std::vector<std::string>{"--node-timeout", "1s"});
    ASSERT_TRUE(cairnd_->Start());
    auto t = coord::ReadToken(dir_ + "/token");
    ASSERT_TRUE(t) << t.error().ToString();
    token_ = *t;
  }
  void TearDown() override {
    cairnd_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  CommandResult Cli(std::vector<std::string> args) {
    return RunCairn(dir_, std::move(args), {}, std::chrono::seconds(60));
  }
  std::string Envelope(const std::string& method, const google::protobuf::Message& m, uint64_t id,
                       bool with_token = true) {
    proto::Envelope e;
    e.set_protocol_version(1);
    e.set_client_id("raw-test");
    e.set_request_id(id);
    e.set_method(method);
    e.set_payload(m.SerializeAsString());
    if (with_token) e.set_auth_token(token_);
    return *coord::EncodeFrame(e);
  }

  std::string dir_;
  std::string token_;
  std::unique_ptr<Cairnd> cairnd_;
};

TEST_F(CoordinatorTest, SubmitStatusCancelThroughTheCli) {
  auto s = Cli({"submit", "--ranks", "4", "--name", "fmnist", "--", "/bin/sleep", "1"});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_EQ(s.output, "job-000001\n");
  auto st = Cli({"status"});
  ASSERT_EQ(st.exit_code, 0) << st.output;
  EXPECT_NE(st.output.find("job-000001   PENDING"), std::string::npos) << st.output;
  auto c = Cli({"cancel", "job-000001"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(c.output, "job-000001 CANCELLED\n");
  auto js = Cli({"status", "job-000001", "--json"});
  ASSERT_EQ(js.exit_code, 0) << js.output;
  EXPECT_NE(js.output.find("\"state\": \"JOB_CANCELLED\""), std::string::npos) << js.output;
  EXPECT_EQ(Cli({"status"}).output.find("job-000001"), std::string::npos);  // finished: --all
  auto missing = Cli({"status", "job-000077"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("no job job-000077"), std::string::npos) << missing.output;
}

TEST_F(CoordinatorTest, RetriedRequestIdCreatesOneJobEvenOverANewConnection) {
  proto::SubmitJobRequest req;
  req.mutable_spec()->add_command("/bin/true");
  req.mutable_spec()->set_ranks(1);
  const std::string frame = Envelope("SubmitJob", req, 42);
  int a = Dial(cairnd_->port());
  auto r1 = RoundTrip(a, frame);
  ::close(a);
  int b = Dial(cairnd_->port());
  auto r2 = RoundTrip(b, frame);
  ::close(b);
  ASSERT_TRUE(r1 && r2);
  ASSERT_FALSE(r1->has_error()) << r1->error().message();
  EXPECT_EQ(r1->payload(), r2->payload());
  auto st = Cli({"status", "--all", "--json"});
  EXPECT_EQ(st.output.find("job-000002"), std::string::npos) << st.output;
  EXPECT_NE(st.output.find("job-000001"), std::string::npos) << st.output;
}

TEST_F(CoordinatorTest, UnauthenticatedAndGarbageConnectionsAffectNoOneElse) {
  // No token: an error reply naming the problem, never the token.
  int a = Dial(cairnd_->port());
  auto r = RoundTrip(a, Envelope("ListJobs", proto::ListJobsRequest(), 1, /*with_token=*/false));
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->has_error());
  EXPECT_EQ(r->error().code(), "PERMISSION_DENIED");
  ::close(a);
  // Garbage, an oversized length, a wrong protocol version: the connection is closed.
  std::vector<std::string> bad = {std::string("GET / HTTP/1.1\r\n\r\n"),
                                  std::string("\x7f\xff\xff\xff", 4),
                                  std::string("\x00\x00\x00\x00", 4)};
  proto::Envelope v2;
  v2.set_protocol_version(2);
  v2.set_method("ListJobs");
  v2.set_request_id(1);
  bad.push_back(*coord::EncodeFrame(v2));
  int held = Dial(cairnd_->port());  // an idle client that must keep working
  for (const auto& b : bad) {
    int fd = Dial(cairnd_->port());
    ASSERT_GE(fd, 0);
    EXPECT_FALSE(RoundTrip(fd, b).has_value()) << "server answered garbage";
    ::close(fd);
  }
  auto ok = RoundTrip(held, Envelope("ListJobs", proto::ListJobsRequest(), 2));
  ASSERT_TRUE(ok);
  EXPECT_FALSE(ok->has_error());
  ::close(held);
  EXPECT_EQ(Cli({"status"}).exit_code, 0);
}

TEST_F(CoordinatorTest, KillNineAndRestartLosesNothingAndClientsRetry) {
  ASSERT_EQ(Cli({"submit", "--ranks", "2", "--", "/bin/true"}).exit_code, 0);
  cairnd_->Kill(SIGKILL);
  // A second cairnd on the same directory is refused while one runs.
  ASSERT_TRUE(cairnd_->Start());
  auto second = RunCommand({BinDir() + "/cairnd", "--state-dir", dir_});
  EXPECT_NE(second.exit_code, 0);
  EXPECT_NE(second.output.find("another cairnd is running"), std::string::npos) << second.output;
  auto st = Cli({"status"});
  EXPECT_NE(st.output.find("job-000001   PENDING"), std::string::npos) << st.output;
  // A client call made while cairnd is down completes once it is back (same request id).
  cairnd_->Kill(SIGKILL);
  auto client = coord::Client::Connect(dir_);
  ASSERT_TRUE(client);
  std::thread restart([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    ASSERT_TRUE(cairnd_->Start());
  });
  proto::SubmitJobRequest req;
  req.mutable_spec()->add_command("/bin/true");
  req.mutable_spec()->set_ranks(1);
  auto reply = (*client)->Call("SubmitJob", req.SerializeAsString(), std::chrono::seconds(20));
  restart.join();
  ASSERT_TRUE(reply) << reply.error().ToString();
  proto::SubmitJobReply sr;
  ASSERT_TRUE(sr.ParseFromString(*reply));
  EXPECT_EQ(sr.job_id(), "job-000002");
}

// Group commit under load: 8 clients submit concurrently, cairnd is SIGKILLed in the
// middle. Every job whose id a client received is in the restarted cairnd, ids are
// unique, and a retry of the interrupted requests (same request ids) creates no second job.
TEST_F(CoordinatorTest, ConcurrentSubmitsAcknowledgedBeforeKillNineAreAllKept) {
  constexpr int kClients = 8;
  constexpr int kPerClient = 100;
  std::mutex mu;
  std::set<std::string> acknowledged;
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      auto client = coord::Client::Connect(dir_, "load-" + std::to_string(c));
      if (!client) {
        ADD_FAILURE() << client.error().ToString();
        return;
      }
      proto::SubmitJobRequest req;
      req.mutable_spec()->add_command("/bin/true");
      req.mutable_spec()->set_name("load-" + std::to_string(c));
      req.mutable_spec()->set_ranks(1);
      for (int i = 0; i < kPerClient; ++i) {
        // Calls retry over reconnects (same request id) until cairnd is back.
        auto reply = (*client)->Call("SubmitJob", req.SerializeAsString(), std::chrono::seconds(30));
        if (!reply) {
          ADD_FAILURE() << reply.error().ToString();
          return;
        }
        proto::SubmitJobReply sr;
        if (!sr.ParseFromString(*reply)) return;
        std::lock_guard lock(mu);
        EXPECT_TRUE(acknowledged.insert(sr.job_id()).second) << "id given twice: " << sr.job_id();
        ++done;
      }
    });
  }
  // Kill once some submits are through (bounded wait), then restart.
  for (int i = 0; i < 200 && done.load() < kClients * kPerClient / 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  cairnd_->Kill(SIGKILL);
  const int at_kill = done.load();
  EXPECT_LT(at_kill, kClients * kPerClient) << "the kill came after the last submit";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(cairnd_->Start());
  for (auto& t : threads) t.join();
  EXPECT_EQ(done.load(), kClients * kPerClient);

  auto client = coord::Client::Connect(dir_);
  ASSERT_TRUE(client);
  proto::ListJobsRequest lr;
  lr.set_include_finished(true);
  auto reply = (*client)->Call("ListJobs", lr.SerializeAsString());
  ASSERT_TRUE(reply) << reply.error().ToString();
  proto::ListJobsReply jobs;
  ASSERT_TRUE(jobs.ParseFromString(*reply));
  std::set<std::string> stored;
  for (const auto& j : jobs.jobs()) stored.insert(j.job_id());
  for (const auto& id : acknowledged) EXPECT_TRUE(stored.contains(id)) << id << " was lost";
  // Exactly one job per request: nothing created twice by the retries.
  EXPECT_EQ(stored.size(), static_cast<std::size_t>(kClients * kPerClient));
}

TEST_F(CoordinatorTest, BadJobSpecsAreNamed) {
  const std::string yaml = dir_ + "/job.yaml";
  std::ofstream(yaml) << "name: t\ncommand: [/bin/true]\nranks: 2\nrankz: 3\n";
  auto unknown = Cli({"submit", "-f", yaml});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("unknown key 'rankz'"), std::string::npos) << unknown.output;
  std::ofstream(yaml, std::ios::trunc) << "command: [/bin/true\nranks: 2\n";
  auto malformed = Cli({"submit", "-f", yaml});
  EXPECT_EQ(malformed.exit_code, 2) << malformed.output;
  EXPECT_NE(malformed.output.find(yaml), std::string::npos) << malformed.output;
  std::ofstream(yaml, std::ios::trunc) << "command: [/bin/true]\nranks: 4\nlauncher: ssh\n";
  auto launcher = Cli({"submit", "-f", yaml});
  EXPECT_EQ(launcher.exit_code, 2) << launcher.output;
  EXPECT_NE(launcher.output.find("launcher: 'ssh' is not mpi or env"), std::string::npos);
  std::ofstream(yaml, std::ios::trunc) << "command: [/bin/true]\nranks: 4\nhang_timeout: 10s\n";
  auto good = Cli({"submit", "-f", yaml});
  EXPECT_EQ(good.exit_code, 0) << good.output;
  auto nocmd = Cli({"submit", "--ranks", "2"});
  EXPECT_EQ(nocmd.exit_code, 2);
  EXPECT_NE(nocmd.output.find("submit needs a command"), std::string::npos) << nocmd.output;
}

// Agents register and heartbeat; a silent node is marked lost within the node timeout;
// agents come back by themselves after cairnd restarts; requests the registered nodes
// could never hold are rejected at submit.
TEST_F(CoordinatorTest, AgentsRegisterHeartbeatAndAreDetectedLost) {
  Proc a1, a2;
  ASSERT_TRUE(a1.Spawn({BinDir() + "/cairn-agent", "--state-dir", dir_, "--node-id", "n1",
                        "--gpus", "2", "--cpus", "8", "--log-level", "warn"}));
  ASSERT_TRUE(a2.Spawn({BinDir() + "/cairn-agent", "--state-dir", dir_, "--node-id", "n2",
                        "--gpus", "0", "--cpus", "4", "--log-level", "warn"}));
  auto wait_for = [&](const std::string& needle, bool present) {
    std::string last;
    for (int i = 0; i < 100; ++i) {  // up to 10 s
      last = Cli({"nodes"}).output;
      if ((last.find(needle) != std::string::npos) == present) return last;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "waited for '" << needle << "' to be " << (present ? "shown" : "gone")
                  << ":\n" << last;
    return last;
  };
  wait_for("n1                   alive", true);
  auto shown = wait_for("n2                   alive", true);
  EXPECT_NE(shown.find("2/2"), std::string::npos) << shown;  // n1's GPUs, all free
  auto json = Cli({"nodes", "--json"});
  EXPECT_NE(json.output.find("\"node_id\": \"n1\""), std::string::npos) << json.output;

  auto too_big = Cli({"submit", "--gpus-per-rank", "3", "--", "/bin/true"});
  EXPECT_EQ(too_big.exit_code, 2) << too_big.output;
  EXPECT_NE(too_big.output.find("asks 3 GPUs per rank, the largest node has 2"), std::string::npos)
      << too_big.output;
  auto total = Cli({"submit", "--ranks", "3", "--gpus-per-rank", "1", "--", "/bin/true"});
  EXPECT_EQ(total.exit_code, 2) << total.output;  // 3 GPUs in total, the cluster has 2
  EXPECT_EQ(Cli({"submit", "--ranks", "2", "--gpus-per-rank", "1", "--", "/bin/true"}).exit_code, 0);

  const auto t0 = std::chrono::steady_clock::now();
  a2.Kill(SIGKILL);
  wait_for("n2                   lost", true);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));  // timeout 1 s

  cairnd_->Kill(SIGKILL);
  ASSERT_TRUE(cairnd_->Start());
  wait_for("n1                   alive", true);  // n1's agent reconnected on its own
  auto after = Cli({"nodes"}).output;
  EXPECT_NE(after.find("n2                   lost"), std::string::npos) << after;
}

// `cairn up` starts cairnd and agents in the background and returns once the nodes are
// alive; `cairn down` leaves no process behind.
TEST(LocalCluster, UpAndDownLeaveNothingRunning) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("cairn_up_" + io::RandomSuffix())).string();
  auto cli = [&](std::vector<std::string> args) {
    return RunCairn(dir, std::move(args), {}, std::chrono::seconds(60));
  };
  auto processes = [&] { return static_cast<int>(ProcessesRunning(dir).size()); };
  auto up = cli({"up", "--agents", "2"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_EQ(processes(), 3);
  auto nodes = cli({"nodes"});
  EXPECT_EQ(std::count(nodes.output.begin(), nodes.output.end(), '\n'), 3) << nodes.output;
  EXPECT_NE(nodes.output.find("alive"), std::string::npos);
  auto again = cli({"up"});
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("already up"), std::string::npos) << again.output;
  auto down = cli({"down"});
  EXPECT_EQ(down.exit_code, 0) << down.output;
  EXPECT_EQ(processes(), 0);
  // Never leave daemons behind, even when the test fails.
  for (pid_t p : ProcessesRunning(dir)) ::kill(p, SIGKILL);
  EXPECT_NE(cli({"down"}).exit_code, 0);  // nothing to stop now
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace cairn::testing
