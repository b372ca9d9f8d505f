#include "checkpoint/agreement.h"

namespace cairn::ckpt {

class ThreadGroupAgreement::Member final : public Agreement {
 public:
  Member(ThreadGroupAgreement* group, uint32_t rank) : group_(group), rank_(rank) {}
  uint32_t rank() const override { return rank_; }
  uint32_t size() const override { return group_->size_; }
  Result<std::vector<std::string>> AllGather(std::string_view mine) override {
    return group_->Gather(rank_, mine);
  }

 private:
  ThreadGroupAgreement* group_;
  uint32_t rank_;
};

ThreadGroupAgreement::ThreadGroupAgreement(uint32_t size, std::chrono::milliseconds timeout)
    : size_(size), timeout_(timeout), slots_(size) {}

std::unique_ptr<Agreement> ThreadGroupAgreement::Rank(uint32_t rank) {
  return std::make_unique<Member>(this, rank);
}

void ThreadGroupAgreement::Abort() {
  std::lock_guard lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

Result<std::vector<std::string>> ThreadGroupAgreement::Gather(uint32_t rank,
                                                               std::string_view mine) {
  std::unique_lock lock(mu_);
  if (aborted_) return MakeError(Code::kUnavailable, "agreement aborted: a peer rank is gone");
  const uint64_t gen = generation_;
  slots_[rank] = std::string(mine);
  if (++arrived_ == size_) {
    result_ = slots_;
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return result_;
  }
  bool done = cv_.wait_for(lock, timeout_, [&] { return generation_ != gen || aborted_; });
  if (generation_ != gen) return result_;
  if (!done) {
    aborted_ = true;  // the group is broken for good: fail everyone
    cv_.notify_all();
    return MakeError(Code::kDeadlineExceeded,
                     "agreement timed out after {} ms waiting for peer ranks", timeout_.count());
  }
  return MakeError(Code::kUnavailable, "agreement aborted: a peer rank is gone");
}

}  // namespace cairn::ckpt
