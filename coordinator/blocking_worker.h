// A thread for calls that block (SLURM's clients), so the coordinator's io_context
// never does.
//
// Promise: Run(work) runs `work` on the worker thread, one task at a time in the order
// given; the continuation `work` returns is handed to `post`, which must run it on the
// owner's thread. The destructor finishes the task in hand and drops the rest (their
// continuations never run).
//
// Threading: Run is called on the owner's thread; `work` runs on the worker thread and
// must not touch the owner's state; the continuation runs on the owner's thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace cairn::coord {

class BlockingWorker {
 public:
  using Post = std::function<void(std::function<void()>)>;
  explicit BlockingWorker(Post post) : post_(std::move(post)), thread_([this] { Loop(); }) {}
  ~BlockingWorker() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      queue_.clear();
    }
    cv_.notify_all();
    thread_.join();
  }
  BlockingWorker(const BlockingWorker&) = delete;
  BlockingWorker& operator=(const BlockingWorker&) = delete;

  void Run(std::function<std::function<void()>()> work) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(work));
    }
    cv_.notify_one();
  }

 private:
  void Loop() {
    for (;;) {
      std::function<std::function<void()>()> work;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      auto then = work();
      std::lock_guard lock(mu_);
      if (!stopping_ && then) post_(std::move(then));
    }
  }

  Post post_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<std::function<void()>()>> queue_;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace cairn::coord
