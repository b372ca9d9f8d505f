// main() of GoogleTest binaries that run under mpirun: starts MPI, gives the tests the
// world communicator through *world, runs them, and shuts MPI down after the
// communicator is gone. Include from exactly one translation unit per test binary.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "collectives/mpi_communicator.h"

namespace cairn::coll {

inline int RunMpiTests(int argc, char** argv, MpiCommunicator** world_out) {
  ::testing::InitGoogleTest(&argc, argv);
  auto session = MpiSession::Start();
  if (!session) {
    std::fprintf(stderr, "%s\n", session.error().ToString().c_str());
    return 1;
  }
  auto world = MpiCommunicator::World(std::chrono::seconds(120));
  if (!world) {
    std::fprintf(stderr, "%s\n", world.error().ToString().c_str());
    return 1;
  }
  *world_out = world->get();
  const int rc = RUN_ALL_TESTS();
  *world_out = nullptr;
  world->reset();  // before the session finalises MPI
  return rc;
}

}  // namespace cairn::coll
