#include "collectives/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <limits>

#include "common/log.h"

namespace cairn::coll {
namespace {

std::atomic<bool> g_poisoned{false};

MPI_Comm AsComm(void* c) { return static_cast<MPI_Comm>(c); }

std::string MpiErrorString(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", rc);
  return std::string(buf, static_cast<std::size_t>(len));
}

MPI_Datatype ToMpi(DataType t) {
  switch (t) {
    case DataType::kF32: return MPI_FLOAT;
    case DataType::kF64: return MPI_DOUBLE;
    case DataType::kI64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

}  // namespace

std::size_t DataTypeSize(DataType t) {
  switch (t) {
    case DataType::kF32: return 4;
    case DataType::kF64: return 8;
    case DataType::kI64: return 8;
  }
  return 0;
}

std::string_view DataTypeName(DataType t) {
  switch (t) {
    case DataType::kF32: return "f32";
    case DataType::kF64: return "f64";
    case DataType::kI64: return "i64";
  }
  return "?";
}

// ---- MpiSession ---------------------------------------------------------------------

Result<std::unique_ptr<MpiSession>> MpiSession::Start() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return std::unique_ptr<MpiSession>(new MpiSession(false));
  int provided = 0;
  int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) {
    return MakeError(Code::kUnavailable, "MPI_Init_thread failed: {}", MpiErrorString(rc));
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    return MakeError(Code::kFailedPrecondition,
                     "this MPI library does not support MPI_THREAD_MULTIPLE (provided level {})",
                     provided);
  }
  return std::unique_ptr<MpiSession>(new MpiSession(true));
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  if (poisoned()) {
    log::Logger("collectives")
        ->warn("not finalising MPI: a collective operation was abandoned after an error");
    return;
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiSession::MarkPoisoned() { g_poisoned.store(true); }
bool MpiSession::poisoned() { return g_poisoned.load(); }
void MpiSession::ForgetAbandonedOperations() { g_poisoned.store(false); }

// ---- MpiCommunicator ----------------------------------------------------------------

Result<std::unique_ptr<MpiCommunicator>> MpiCommunicator::World(
    std::chrono::milliseconds timeout) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    return MakeError(Code::kFailedPrecondition, "MPI is not initialised (start an MpiSession)");
  }
  MPI_Comm dup = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  if (rc != MPI_SUCCESS) {
    return MakeError(Code::kUnavailable, "MPI_Comm_dup: {}", MpiErrorString(rc));
  }
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  MPI_Comm_rank(dup, &rank);
  MPI_Comm_size(dup, &size);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(dup, rank, size, timeout));
}

MpiCommunicator::~MpiCommunicator() {
  // A poisoned communicator may have an operation in flight; freeing it could block.
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!poisoned_ && !finalized) {
    MPI_Comm c = AsComm(comm_);
    MPI_Comm_free(&c);
  }
}

Result<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Duplicate() const {
  CAIRN_RETURN_IF_ERROR(CheckUsable());
  MPI_Comm dup = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(AsComm(comm_), &dup);
  if (rc != MPI_SUCCESS) {
    return MakeError(Code::kUnavailable, "MPI_Comm_dup: {}", MpiErrorString(rc));
  }
  MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(dup, rank_, size_, timeout_));
}

Status MpiCommunicator::CheckUsable() const {
  if (poisoned_) {
    return MakeError(Code::kFailedPrecondition,
                     "communicator unusable after an earlier error: {}", poisoned_->ToString());
  }
  return OkStatus();
}

std::unexpected<Error> MpiCommunicator::Poison(Error error) {
  error.With(fmt::format("rank {} of {}", rank_, size_));
  poisoned_ = std::make_unique<Error>(error);
  MpiSession::MarkPoisoned();
  return std::unexpected(std::move(error));
}

Status MpiCommunicator::Complete(void* request_ptr, std::string_view op) {
  auto* request = static_cast<MPI_Request*>(request_ptr);
  const bool bounded = timeout_.count() > 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  // Poll with MPI_Test (which drives progress); check the clock every few polls and
  // yield so that oversubscribed ranks let their peers run.
  for (uint64_t polls = 0;; ++polls) {
    int done = 0;
    int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      return Poison(Error(Code::kUnavailable, fmt::format("{}: {}", op, MpiErrorString(rc))));
    }
    if (done) return OkStatus();
    if (bounded && (polls & 63) == 63 && std::chrono::steady_clock::now() >= deadline) {
      // Leave the operation to MPI; the buffer must be treated as lost.
      MPI_Request_free(request);
      return Poison(Error(
          Code::kDeadlineExceeded,
          fmt::format("{} did not complete within {} ms (a peer is dead or stuck)", op,
                      timeout_.count())));
    }
    sched_yield();
  }
}

Status MpiCommunicator::AllReduceSum(void* data, std::size_t count, DataType type) {
  CAIRN_RETURN_IF_ERROR(CheckUsable());
  auto* bytes = static_cast<std::byte*>(data);
  const std::size_t esize = DataTypeSize(type);
  std::size_t done = 0;
  do {  // runs once for count == 0, so that every rank takes part in the same operation
    const std::size_t piece = std::min(count - done, piece_elements_);
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, bytes + done * esize, static_cast<int>(piece),
                            ToMpi(type), MPI_SUM, AsComm(comm_), &req);
    if (rc != MPI_SUCCESS) {
      return Poison(Error(Code::kUnavailable,
                          fmt::format("MPI_Iallreduce: {}", MpiErrorString(rc))));
    }
    CAIRN_RETURN_IF_ERROR(Complete(&req, fmt::format("allreduce of {} {} elements", piece,
                                                     DataTypeName(type))));
    done += piece;
  } while (done < count);
  return OkStatus();
}

Status MpiCommunicator::Broadcast(void* data, std::size_t bytes, int root) {
  CAIRN_RETURN_IF_ERROR(CheckUsable());
  if (root < 0 || root >= size_) {
    return MakeError(Code::kInvalidArgument, "broadcast root {} out of range [0, {})", root,
                     size_);
  }
  auto* p = static_cast<std::byte*>(data);
  std::size_t done = 0;
  do {
    const std::size_t piece = std::min(bytes - done, piece_elements_);
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibcast(p + done, static_cast<int>(piece), MPI_BYTE, root, AsComm(comm_), &req);
    if (rc != MPI_SUCCESS) {
      return Poison(Error(Code::kUnavailable, fmt::format("MPI_Ibcast: {}", MpiErrorString(rc))));
    }
    CAIRN_RETURN_IF_ERROR(Complete(&req, fmt::format("broadcast of {} bytes", piece)));
    done += piece;
  } while (done < bytes);
  return OkStatus();
}

Result<std::vector<std::string>> MpiCommunicator::AllGather(std::string_view mine) {
  CAIRN_RETURN_IF_ERROR(CheckUsable());
  std::vector<uint64_t> lengths(static_cast<std::size_t>(size_));
  uint64_t my_len = mine.size();
  MPI_Request req = MPI_REQUEST_NULL;
  int rc = MPI_Iallgather(&my_len, 1, MPI_UINT64_T, lengths.data(), 1, MPI_UINT64_T,
                          AsComm(comm_), &req);
  if (rc != MPI_SUCCESS) {
    return Poison(
        Error(Code::kUnavailable, fmt::format("MPI_Iallgather: {}", MpiErrorString(rc))));
  }
  CAIRN_RETURN_IF_ERROR(Complete(&req, "allgather of lengths"));
  uint64_t total = 0;
  std::vector<int> counts(lengths.size()), displs(lengths.size());
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] > static_cast<uint64_t>(INT_MAX) || total > static_cast<uint64_t>(INT_MAX)) {
      // Every rank sees the same lengths, so every rank fails here alike.
      return MakeError(Code::kInvalidArgument,
                       "allgather of {} bytes from rank {} exceeds the 2 GiB limit", lengths[i],
                       i);
    }
    counts[i] = static_cast<int>(lengths[i]);
    displs[i] = static_cast<int>(total);
    total += lengths[i];
  }
  if (total > static_cast<uint64_t>(INT_MAX)) {
    return MakeError(Code::kInvalidArgument, "allgather of {} bytes exceeds the 2 GiB limit",
                     total);
  }
  std::string all(total, '\0');
  req = MPI_REQUEST_NULL;
  rc = MPI_Iallgatherv(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, all.data(),
                       counts.data(), displs.data(), MPI_BYTE, AsComm(comm_), &req);
  if (rc != MPI_SUCCESS) {
    return Poison(
        Error(Code::kUnavailable, fmt::format("MPI_Iallgatherv: {}", MpiErrorString(rc))));
  }
  CAIRN_RETURN_IF_ERROR(Complete(&req, fmt::format("allgather of {} bytes", total)));
  std::vector<std::string> out;
  out.reserve(lengths.size());
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    out.emplace_back(all.substr(static_cast<std::size_t>(displs[i]), lengths[i]));
  }
  return out;
}

Status MpiCommunicator::Barrier() {
  CAIRN_RETURN_IF_ERROR(CheckUsable());
  MPI_Request req = MPI_REQUEST_NULL;
  int rc = MPI_Ibarrier(AsComm(comm_), &req);
  if (rc != MPI_SUCCESS) {
    return Poison(Error(Code::kUnavailable, fmt::format("MPI_Ibarrier: {}", MpiErrorString(rc))));
  }
  return Complete(&req, "barrier");
}

}  // namespace cairn::coll
