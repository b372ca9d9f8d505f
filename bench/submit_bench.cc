// Submit throughput of cairnd over loopback (target >= 2,000 submits/s), against the
// floor of its durability: the same number of single-row SQLite transactions with
// WAL + synchronous=FULL in this process, interleaved A/B per round, medians.
//
//   build/bin/cairn-submit-bench [--submits N] [--rounds R] [--clients C]
//
// Starts its own cairnd (from the directory of this binary) on a temporary state
// directory and stops it at the end.
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/io.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"

extern char** environ;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string SelfDir() {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().string();
}

// Seconds for `n` submits spread over `clients` concurrent clients.
double SubmitRound(const std::string& dir, int n, int clients) {
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto client = cairn::coord::Client::Connect(dir, "bench-" + std::to_string(c) + "-" +
                                                           cairn::io::RandomSuffix());
      if (!client) std::abort();
      cairn::proto::SubmitJobRequest req;
      req.mutable_spec()->add_command("/bin/true");
      req.mutable_spec()->set_ranks(1);
      const std::string payload = req.SerializeAsString();
      for (int i = c; i < n; i += clients) {
        if (!(*client)->Call("SubmitJob", payload)) std::abort();
      }
    });
  }
  for (auto& t : threads) t.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Seconds for `n` single-row transactions, WAL + synchronous=FULL.
double SqliteRound(const std::string& path, int n) {
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                   "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO t(v) VALUES(?1)", -1, &st, nullptr);
  const std::string blob(200, 'x');
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    sqlite3_bind_blob(st, 1, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
    sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  sqlite3_finalize(st);
  sqlite3_close(db);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int submits = 2000, rounds = 5;
  std::vector<int> client_counts = {1, 8};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--submits") {
      submits = std::atoi(argv[i + 1]);
    } else if (a == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else if (a == "--clients") {
      client_counts = {std::atoi(argv[i + 1])};
    } else {
      std::fprintf(stderr, "unknown argument %s (--submits, --rounds, --clients)\n", argv[i]);
      return 2;
    }
  }
  if (submits < 1 || rounds < 1 || client_counts[0] < 1) {
    std::fprintf(stderr, "--submits, --rounds and --clients must be positive\n");
    return 2;
  }
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("cairn_submit_bench_" + cairn::io::RandomSuffix()))
          .string();
  std::filesystem::create_directories(dir);
  std::string bin = SelfDir() + "/cairnd";
  std::vector<std::string> args = {bin, "--state-dir", dir + "/state", "--log-level", "warn"};
  std::vector<char*> av;
  for (auto& s : args) av.push_back(s.data());
  av.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawn(&pid, bin.c_str(), nullptr, nullptr, av.data(), environ) != 0) {
    std::fprintf(stderr, "cannot start %s\n", bin.c_str());
    return 1;
  }
  for (int i = 0; i < 200 && !std::filesystem::exists(dir + "/state/cairnd.addr"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  std::printf("# submits over loopback vs single-row SQLite transactions (WAL, synchronous=FULL);\n"
              "# %d per round, %d interleaved rounds, medians\n", submits, rounds);
  std::printf("%8s %14s %18s %8s\n", "clients", "submits/s", "sqlite_commits/s", "ratio");
  for (int clients : client_counts) {
    std::vector<double> a, b;
    for (int r = 0; r < rounds; ++r) {
      a.push_back(SubmitRound(dir + "/state", submits, clients));
      b.push_back(SqliteRound(dir + "/floor.db", submits));
    }
    const double sub = submits / Median(a), floor = submits / Median(b);
    std::printf("%8d %14.0f %18.0f %8.3f\n", clients, sub, floor, sub / floor);
    std::fflush(stdout);
  }
  ::kill(pid, SIGTERM);
  ::waitpid(pid, nullptr, 0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
