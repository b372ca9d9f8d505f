// Preemption requests: SIGTERM and SIGUSR1 ask a training program to finish its current
// step, save a checkpoint and exit with kExitPreempted (launch.h).
//
// Promise: after InstallPreemptionHandlers(), those signals only set a flag (the handler
// is async-signal-safe and does nothing else); the program polls PreemptionRequested()
// at step boundaries. In a multi-rank job the signal may reach only some ranks, so the
// program must agree on it collectively (e.g. an allreduce of the flag each step) before
// acting; see examples/fmnist.
//
// Threading: the flag is a lock-free atomic, readable from any thread.
#pragma once

namespace cairn::rt {

void InstallPreemptionHandlers();
bool PreemptionRequested();
// The signal that set the flag (0 if none).
int PreemptionSignal();
// Sets the flag as a signal would (tests, and programs with their own triggers).
void RequestPreemption(int signal);

}  // namespace cairn::rt
