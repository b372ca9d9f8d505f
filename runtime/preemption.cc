#include "runtime/preemption.h"

#include <signal.h>

#include <atomic>

namespace cairn::rt {
namespace {

std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void OnPreemptSignal(int sig) { g_signal.store(sig, std::memory_order_relaxed); }

}  // namespace

void InstallPreemptionHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnPreemptSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}

bool PreemptionRequested() { return g_signal.load(std::memory_order_relaxed) != 0; }
int PreemptionSignal() { return g_signal.load(std::memory_order_relaxed); }
void RequestPreemption(int signal) { g_signal.store(signal, std::memory_order_relaxed); }

}  // namespace cairn::rt
