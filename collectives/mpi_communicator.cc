#include "collectives/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "common/log.h"

namespace cairn::coll {
namespace {

std::atomic<bool> g_poisoned{false};

// Polls before a waiting rank starts yielding its core to others.
constexpr uint64_t kSpinPolls = 1000;

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
  std::unique_ptr<MpiCommunicator> c(new MpiCommunicator(dup, rank, size, timeout));
  // Tuning from the environment (every rank of a job must see the same value: the
  // algorithm must agree between partners).
  auto env_bytes = [](const char* name, std::size_t fallback) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v, &end, 10);
    return end != nullptr && *end == '\0' ? static_cast<std::size_t>(n) : fallback;
  };
  c->tuning_.small_bytes = env_bytes("CAIRN_ALLREDUCE_SMALL_BYTES", c->tuning_.small_bytes);
  return c;
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
  std::unique_ptr<MpiCommunicator> c(new MpiCommunicator(dup, rank_, size_, timeout_));
  c->tuning_ = tuning_;
  return c;
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
  // An abandoned operation may still write into the scratch buffer: never free it.
  (void)scratch_.release();
  scratch_size_ = 0;
  return std::unexpected(std::move(error));
}

Status MpiCommunicator::Complete(void* request_ptr, std::string_view op) {
  return CompleteAll(request_ptr, 1, op);
}

Status MpiCommunicator::CompleteAll(void* requests_ptr, int n, std::string_view op) {
  auto* requests = static_cast<MPI_Request*>(requests_ptr);
  const bool bounded = timeout_.count() > 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  // Poll with MPI_Testall (which drives progress); check the clock every few polls and
  // yield so that oversubscribed ranks let their peers run.
  for (uint64_t polls = 0;; ++polls) {
    int done = 0;
    int rc = MPI_Testall(n, requests, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      return Poison(Error(Code::kUnavailable, fmt::format("{}: {}", op, MpiErrorString(rc))));
    }
    if (done) return OkStatus();
    if (bounded && (polls & 63) == 63 && std::chrono::steady_clock::now() >= deadline) {
      // Leave the operation to MPI: cancel what has not matched yet, release the rest.
      for (int i = 0; i < n; ++i) {
        if (requests[i] != MPI_REQUEST_NULL) {
          MPI_Cancel(&requests[i]);
          MPI_Request_free(&requests[i]);
        }
      }
      return Poison(Error(
          Code::kDeadlineExceeded,
          fmt::format("{} did not complete within {} ms (a peer is dead or stuck)", op,
                      timeout_.count())));
    }
    if (polls >= kSpinPolls) sched_yield();
  }
}

namespace {

// dst[i] += src[i], 64 bytes at a time in vector registers (GCC vector extensions). Element-wise, so the bits are those of
// the scalar loop. (-O2 leaves the plain loop scalar: its trip count is unknown and the
// buffers might alias.)
template <typename T>
struct Vec64;
template <>
struct Vec64<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vec64<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <>
struct Vec64<int64_t> {
  typedef int64_t type __attribute__((vector_size(64)));
};

template <typename T>
void AddInto(std::byte* dst, const std::byte* src, std::size_t n) {
  using V = typename Vec64<T>::type;
  constexpr std::size_t kLanes = sizeof(V) / sizeof(T);
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    V a, b;
    std::memcpy(&a, dst + i * sizeof(T), sizeof(V));
    std::memcpy(&b, src + i * sizeof(T), sizeof(V));
    a += b;
    std::memcpy(dst + i * sizeof(T), &a, sizeof(V));
  }
  for (; i < n; ++i) {
    T a, b;
    std::memcpy(&a, dst + i * sizeof(T), sizeof(T));
    std::memcpy(&b, src + i * sizeof(T), sizeof(T));
    a += b;
    std::memcpy(dst + i * sizeof(T), &a, sizeof(T));
  }
}

// Compiled for AVX-512 and AVX2 as well as the base ISA; the loader picks the widest the
// CPU has (the vectors above then fill one or two registers per operation).
#if defined(__x86_64__)
#define CAIRN_WIDEST_VECTORS [[gnu::target_clones("avx512f", "avx2", "default")]]
#else
#define CAIRN_WIDEST_VECTORS
#endif
CAIRN_WIDEST_VECTORS
void Add(DataType t, std::byte* dst, const std::byte* src, std::size_t n) {
  switch (t) {
    case DataType::kF32: AddInto<float>(dst, src, n); break;
    case DataType::kF64: AddInto<double>(dst, src, n); break;
    case DataType::kI64: AddInto<int64_t>(dst, src, n); break;
  }
}

constexpr int kAllReduceTag = 7301;

}  // namespace

// Allreduce over point-to-point messages (MPI_Isend/MPI_Irecv, completed within the
// deadline like every other operation). Each algorithm gives every rank bit-identical
// results, and the same results for the same inputs and rank count:
//   recursive doubling (small buffers, p a power of two): log2(p) pairwise exchanges of
//       the whole partial sum (float addition is commutative: both partners get the
//       same bits);
//   direct (small buffers, other p): each rank receives every other rank's buffer and
//       sums them in rank order 0..p-1;
//   Rabenseifner (larger buffers, p a power of two): reduce-scatter by recursive
//       halving, then allgather by recursive doubling: 2 log2(p) rounds, each element
//       summed on one rank and copied to the others;
//   ring (larger buffers, other p): reduce-scatter and allgather around the ring.
// Open MPI's non-blocking MPI_Iallreduce (libnbc) measured 0.5-0.8x of the blocking
// MPI_Allreduce here; see bench/allreduce_bench.cc for these.
Status MpiCommunicator::AllReduceSum(void* data, std::size_t count, DataType type) {
  CAIRN_RETURN_IF_ERROR(CheckUsable());
  if (size_ == 1 || count == 0) return OkStatus();
  auto* bytes = static_cast<std::byte*>(data);
  const std::size_t esize = DataTypeSize(type);
  const std::string op = fmt::format("allreduce of {} {} elements", count, DataTypeName(type));
  for (std::size_t done = 0; done < count; done += piece_elements_) {
    CAIRN_RETURN_IF_ERROR(AllReducePiece(bytes + done * esize,
                                         std::min(piece_elements_, count - done), type, op));
  }
  return OkStatus();
}

Status MpiCommunicator::AllReducePiece(std::byte* bytes, std::size_t count, DataType type,
                                       const std::string& op) {
  const std::size_t esize = DataTypeSize(type);
  const MPI_Datatype mtype = ToMpi(type);
  const std::size_t p = static_cast<std::size_t>(size_);
  const std::size_t r = static_cast<std::size_t>(rank_);
  const bool pow2 = (p & (p - 1)) == 0;
  auto need_scratch = [&](std::size_t n) {
    if (scratch_size_ < n) {
      scratch_ = std::make_unique<std::byte[]>(n);
      scratch_size_ = n;
    }
  };
  auto fail = [&](int rc, const char* call) {
    return Poison(
        Error(Code::kUnavailable, fmt::format("{}: {}: {}", op, call, MpiErrorString(rc))));
  };
  // Sends [send_at, +send_n) elements to `to` while receiving recv_n into recv_into from
  // `from`.
  auto exchange = [&](int to, const std::byte* send, std::size_t send_n, int from,
                      std::byte* recv_into, std::size_t recv_n) -> Status {
    MPI_Request reqs[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    int rc = MPI_Irecv(recv_into, static_cast<int>(recv_n), mtype, from, kAllReduceTag,
                       AsComm(comm_), &reqs[0]);
    if (rc != MPI_SUCCESS) return fail(rc, "MPI_Irecv");
    rc = MPI_Isend(send, static_cast<int>(send_n), mtype, to, kAllReduceTag, AsComm(comm_),
                   &reqs[1]);
    if (rc != MPI_SUCCESS) return fail(rc, "MPI_Isend");
    return CompleteAll(reqs, 2, op);
  };
  // Sends send_n elements to `peer` while receiving recv_n from it, and adds what arrives
  // into `sum_into`.
  auto exchange_add = [&](int peer, const std::byte* send, std::size_t send_n,
                          std::byte* sum_into, std::size_t recv_n) -> Status {
    need_scratch(recv_n * esize);
    CAIRN_RETURN_IF_ERROR(exchange(peer, send, send_n, peer, scratch_.get(), recv_n));
    Add(type, sum_into, scratch_.get(), recv_n);
    return OkStatus();
  };
  auto at = [&](std::size_t element) { return bytes + element * esize; };
  const bool small = count * esize * (p - 1) <= tuning_.small_bytes;

  if (small && pow2) {
    need_scratch(count * esize);
    for (std::size_t mask = 1; mask < p; mask <<= 1) {
      const int peer = static_cast<int>(r ^ mask);
      CAIRN_RETURN_IF_ERROR(exchange(peer, bytes, count, peer, scratch_.get(), count));
      Add(type, bytes, scratch_.get(), count);
    }
    return OkStatus();
  }
  if (small) {
    const std::size_t nbytes = count * esize;
    need_scratch(nbytes * p);
    std::byte* all = scratch_.get();
    std::vector<MPI_Request> reqs;
    reqs.reserve(2 * p);
    for (std::size_t peer = 0; peer < p; ++peer) {
      if (peer == r) continue;
      MPI_Request rq;
      int rc = MPI_Irecv(all + peer * nbytes, static_cast<int>(count), mtype,
                         static_cast<int>(peer), kAllReduceTag, AsComm(comm_), &rq);
      if (rc != MPI_SUCCESS) return fail(rc, "MPI_Irecv");
      reqs.push_back(rq);
    }
    for (std::size_t peer = 0; peer < p; ++peer) {
      if (peer == r) continue;
      MPI_Request rq;
      int rc = MPI_Isend(bytes, static_cast<int>(count), mtype, static_cast<int>(peer),
                         kAllReduceTag, AsComm(comm_), &rq);
      if (rc != MPI_SUCCESS) return fail(rc, "MPI_Isend");
      reqs.push_back(rq);
    }
    CAIRN_RETURN_IF_ERROR(CompleteAll(reqs.data(), static_cast<int>(reqs.size()), op));
    std::memcpy(all + r * nbytes, bytes, nbytes);
    std::memcpy(bytes, all, nbytes);
    for (std::size_t peer = 1; peer < p; ++peer) Add(type, bytes, all + peer * nbytes, count);
    return OkStatus();
  }
  if (pow2) {
    // Recursive halving: partners share [lo, hi) and split it at the same midpoint.
    std::size_t lo = 0, hi = count;
    std::vector<std::pair<std::size_t, std::size_t>> ranges;  // range before each halving
    for (std::size_t mask = p / 2; mask >= 1; mask >>= 1) {
      const int peer = static_cast<int>(r ^ mask);
      const std::size_t mid = lo + (hi - lo) / 2;
      ranges.emplace_back(lo, hi);
      const bool keep_low = (r & mask) == 0;
      const std::size_t keep_lo = keep_low ? lo : mid, keep_hi = keep_low ? mid : hi;
      const std::size_t give_lo = keep_low ? mid : lo, give_hi = keep_low ? hi : mid;
      CAIRN_RETURN_IF_ERROR(
          exchange_add(peer, at(give_lo), give_hi - give_lo, at(keep_lo), keep_hi - keep_lo));
      lo = keep_lo;
      hi = keep_hi;
    }
    // Recursive doubling allgather: undo the halvings in reverse order.
    for (std::size_t mask = 1, level = ranges.size(); mask < p; mask <<= 1) {
      --level;
      const int peer = static_cast<int>(r ^ mask);
      const auto [plo, phi] = ranges[level];
      const std::size_t mid = plo + (phi - plo) / 2;
      const bool have_low = (r & mask) == 0;
      const std::size_t other_lo = have_low ? mid : plo, other_hi = have_low ? phi : mid;
      CAIRN_RETURN_IF_ERROR(
          exchange(peer, at(lo), hi - lo, peer, at(other_lo), other_hi - other_lo));
      lo = plo;
      hi = phi;
    }
    return OkStatus();
  }

  // Ring. Segment i is elements [i*count/p, (i+1)*count/p).
  auto seg_begin = [&](std::size_t i) { return i * count / p; };
  auto seg_len = [&](std::size_t i) { return seg_begin(i + 1) - seg_begin(i); };
  const int right = static_cast<int>((r + 1) % p);
  const int left = static_cast<int>((r + p - 1) % p);
  need_scratch((count / p + 1) * esize);
  // Reduce-scatter: at step k, send segment (r-k) and add the received segment (r-k-1).
  for (std::size_t k = 0; k + 1 < p; ++k) {
    const std::size_t s_seg = (r + p - k) % p;
    const std::size_t r_seg = (r + 2 * p - k - 1) % p;
    CAIRN_RETURN_IF_ERROR(exchange(right, at(seg_begin(s_seg)), seg_len(s_seg), left,
                                   scratch_.get(), seg_len(r_seg)));
    Add(type, at(seg_begin(r_seg)), scratch_.get(), seg_len(r_seg));
  }
  // Allgather: rank r now holds the full sum of segment (r+1); pass segments around.
  for (std::size_t k = 0; k + 1 < p; ++k) {
    const std::size_t s_seg = (r + 1 + p - k) % p;
    const std::size_t r_seg = (r + p - k) % p;
    CAIRN_RETURN_IF_ERROR(exchange(right, at(seg_begin(s_seg)), seg_len(s_seg), left,
                                   at(seg_begin(r_seg)), seg_len(r_seg)));
  }
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
