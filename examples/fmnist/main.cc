// cairn-fmnist: the reference training job. A data-parallel MLP classifier on
// Fashion-MNIST whose every run, interrupted or not, ends with the same weights.
//
// What makes a resumed run bit-identical to an uninterrupted one:
//   - the data order is EpochPermutation(seed, epoch) and step s of the run always takes
//     the global batch at position s % steps_per_epoch of epoch s / steps_per_epoch;
//   - augmentation (mirror flips) draws from a Philox stream whose state is checkpointed;
//   - the checkpoint holds parameters, optimizer moments and step count, the RNG state,
//     and the running epoch loss; nothing else influences the computation;
//   - OpenBLAS runs single-threaded, so each GEMM is a fixed sequence of operations.
// With --reduce default, the float gradient allreduce's order depends on the number of
// ranks, so exactness holds for the same world size. With --reduce exact, the global
// batch is cut into fixed micro-batches (independent of the rank count), each
// micro-batch's gradient is converted to 2^-32 fixed point and summed as int64, which is
// associative: the weights do not depend on how many ranks ran, or in which order they
// reduced, so a run may resume on a different number of ranks.
//
// Preemption: SIGTERM or SIGUSR1 (to any rank) is agreed on by all ranks at the next
// step boundary; they save a checkpoint and exit with kExitPreempted (75).
#include <cblas.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <optional>

#include <nlohmann/json.hpp>

#include "checkpoint/crypto.h"
#include "checkpoint/reader.h"
#include "checkpoint/writer.h"
#include "collectives/agreement.h"
#include "collectives/mpi_communicator.h"
#include "common/app.h"
#include "common/log.h"
#include "examples/fmnist/idx.h"
#include "examples/fmnist/model.h"
#include "runtime/launch.h"
#include "runtime/preemption.h"
#include "runtime/progress.h"
#include "runtime/rng.h"

#ifdef CAIRN_HAVE_CUDA_MLP
#include "collectives/nccl_communicator.h"
#include "examples/fmnist/cuda_mlp.h"
#endif

namespace cairn::fmnist {
namespace {

constexpr double kFixedScale = 4294967296.0;  // 2^32: fixed-point unit of --reduce exact
constexpr uint64_t kInitStream = 0x1417;      // Philox stream ids of the job's RNG uses
constexpr uint64_t kAugmentStream = 0xa06;

struct Options {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string data_cache = fmnist::DefaultDataCacheDir();  // "" or "none": off
  int epochs = 3;
  uint64_t steps = 0;  // 0: all steps of --epochs
  int batch = 64;
  float lr = 1e-3f;
  uint64_t seed = 1;
  std::string optimizer = "adam";
  std::string schedule = "cosine";
  std::string reduce = "default";
  int micro_batch = 8;
  bool augment = true;
  std::string ckpt_dir;
  uint64_t ckpt_every = 100;
  bool ckpt_sync = false;
  int keep_last = 3;
  int keep_every = 0;
  std::string key_file;
  std::string run_id;
  std::string device = "cpu";
  int comm_timeout_s = 120;
};

// Everything a checkpoint holds besides the tensors.
struct TrainState {
  uint64_t step = 0;
  double epoch_loss = 0.0;  // summed mean batch loss over this epoch's finished steps
  uint64_t epoch_steps = 0;
};

std::string Hex(const ckpt::Digest& d) { return ckpt::ToHex(d); }

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// When this process reached each stage of its start (for the restart benchmark).
struct Startup {
  int64_t process_start_ms = 0, mpi_ready_ms = 0, data_ready_ms = 0, resume_ms = 0;
  const char* data_cache = "off";  // hit, miss or off
};
Startup g_startup;

#ifdef CAIRN_HAVE_CUDA_MLP
constexpr bool kCudaBuilt = true;
// Turns the CUDA interface's "empty string or message" into a Status.
Status Cuda(const std::string& err) {
  if (err.empty()) return OkStatus();
  return MakeError(Code::kUnavailable, "CUDA: {}", err);
}
// The GPU side of a run: the model on the device and the NCCL communicator.
struct Gpu {
  std::unique_ptr<coll::NcclCommunicator> nccl;
  cuda::Mlp* mlp = nullptr;
  ~Gpu() { cuda::Destroy(mlp); }
};
#else
constexpr bool kCudaBuilt = false;
struct Gpu {};
#endif

class Trainer {
 public:
  Trainer(Options opt, rt::LaunchInfo launch, coll::MpiCommunicator* comm,
          const Dataset* data)
      : opt_(std::move(opt)),
        launch_(std::move(launch)),
        comm_(comm),
        data_(data),
        mlp_(layout_),
        aug_rng_(opt_.seed, kAugmentStream),
        progress_(launch_.progress_socket, opt_.run_id, comm->rank()) {}

  Result<int> Run();
  // Tells the agent this rank exits on its own (see rt::ProgressReporter::ReportExit).
  void ReportExit(int code) { progress_.ReportExit(code); }

 private:
  Status Validate();
  Status SetUpCheckpointing();
  Status Resume();
  Status Step(uint64_t step);
  Status Save(uint64_t step, bool sync);
  Result<double> TestAccuracy();
  nlohmann::json StateJson() const;
  Status CheckCompatible(const nlohmann::json& s, uint32_t ckpt_world) const;
  void Print(const std::string& line) const {
    if (comm_->rank() == 0) {
      std::fputs(line.c_str(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
  }
  bool exact() const { return opt_.reduce == "exact"; }

  Options opt_;
  rt::LaunchInfo launch_;
  coll::MpiCommunicator* comm_;
  const Dataset* data_;
  Layout layout_;
  Mlp mlp_;
  OptimizerConfig opt_cfg_;
  std::vector<float> params_, grad_;
  std::vector<int64_t> qgrad_;
  OptimizerState opt_state_;
  rt::Philox aug_rng_;
  TrainState state_;
  rt::ProgressReporter progress_;
  uint64_t reported_ckpt_step_ = 0;
  uint64_t steps_per_epoch_ = 0;
  uint64_t target_ = 0;
  std::vector<uint32_t> perm_;
  std::optional<uint64_t> perm_epoch_;
  std::vector<float> x_, scratch_;
  std::vector<uint8_t> y_, flips_;

  // Checkpointing.
  std::shared_ptr<const ckpt::MasterKey> key_;
  std::optional<ckpt::Digest> expected_head_;
  std::unique_ptr<coll::MpiCommunicator> ckpt_comm_;
  std::unique_ptr<coll::CommunicatorAgreement> agreement_;
  std::unique_ptr<ckpt::CheckpointWriter> writer_;
  std::optional<uint64_t> last_saved_;
  double ckpt_blocked_s_ = 0.0;
  int ckpt_failures_ = 0;
  bool stop_agreed_ = false;
  std::unique_ptr<Gpu> gpu_;  // --device cuda

  Status SetUpGpu();
  Status SyncFromGpu();
};

Status Trainer::Validate() {
  if (opt_.epochs < 1) return MakeError(Code::kInvalidArgument, "--epochs must be at least 1");
  if (opt_.batch < 1) return MakeError(Code::kInvalidArgument, "--batch must be at least 1");
  if (!(opt_.lr > 0.0f) || !std::isfinite(opt_.lr)) {
    return MakeError(Code::kInvalidArgument, "--lr must be a positive number");
  }
  if (opt_.optimizer != "adam" && opt_.optimizer != "sgd") {
    return MakeError(Code::kInvalidArgument, "--optimizer must be adam or sgd, not '{}'",
                     opt_.optimizer);
  }
  if (opt_.schedule != "cosine" && opt_.schedule != "constant") {
    return MakeError(Code::kInvalidArgument, "--schedule must be cosine or constant, not '{}'",
                     opt_.schedule);
  }
  if (opt_.reduce != "default" && opt_.reduce != "exact") {
    return MakeError(Code::kInvalidArgument, "--reduce must be default or exact, not '{}'",
                     opt_.reduce);
  }
  if (opt_.device != "cpu" && opt_.device != "cuda") {
    return MakeError(Code::kInvalidArgument, "--device must be cpu or cuda, not '{}'",
                     opt_.device);
  }
  if (opt_.device == "cuda" && !kCudaBuilt) {
    return MakeError(Code::kFailedPrecondition,
                     "--device cuda: this build has no CUDA (configure with CAIRN_WITH_CUDA on a "
                     "machine with the CUDA toolkit)");
  }
  if (opt_.device == "cuda" && exact()) {
    return MakeError(Code::kInvalidArgument,
                     "--reduce exact runs on the CPU only (use --device cpu)");
  }
  if (static_cast<uint32_t>(opt_.batch) > data_->train.count) {
    return MakeError(Code::kInvalidArgument, "--batch {} exceeds the {} training samples",
                     opt_.batch, data_->train.count);
  }
  if (exact()) {
    if (opt_.micro_batch < 1 || opt_.batch % opt_.micro_batch != 0) {
      return MakeError(Code::kInvalidArgument,
                       "--reduce exact: --batch {} must be a multiple of --micro-batch {}",
                       opt_.batch, opt_.micro_batch);
    }
  } else if (opt_.batch % comm_->size() != 0) {
    return MakeError(Code::kInvalidArgument,
                     "--batch {} is not divisible by the {} ranks (use --reduce exact for "
                     "any rank count)",
                     opt_.batch, comm_->size());
  }
  if (!opt_.ckpt_dir.empty() && (opt_.keep_last < 1 || opt_.keep_every < 0)) {
    return MakeError(Code::kInvalidArgument, "--keep-last must be >= 1 and --keep-every >= 0");
  }
  return OkStatus();
}

nlohmann::json Trainer::StateJson() const {
  return {
      {"format", "cairn-fmnist/1"},
      {"step", state_.step},
      {"epoch", state_.step / steps_per_epoch_},
      {"batch_in_epoch", state_.step % steps_per_epoch_},
      {"epoch_loss", state_.epoch_loss},
      {"epoch_steps", state_.epoch_steps},
      {"optimizer_t", opt_state_.t},
      {"seed", opt_.seed},
      {"batch", opt_.batch},
      {"lr", opt_.lr},
      {"optimizer", opt_.optimizer},
      {"schedule", opt_.schedule},
      {"reduce", opt_.reduce},
      {"micro_batch", exact() ? opt_.micro_batch : 0},
      {"augment", opt_.augment},
      {"world_size", comm_->size()},
      {"parameters", layout_.total()},
  };
}

Status Trainer::CheckCompatible(const nlohmann::json& s, uint32_t ckpt_world) const {
  auto mismatch = [&](const char* what, const std::string& was, const std::string& now) {
    return MakeError(Code::kInvalidArgument,
                     "the checkpoint was trained with {} {}, this run asks for {} (start a new "
                     "--ckpt-dir to change it)",
                     what, was, now);
  };
  if (s.value("format", "") != "cairn-fmnist/1") {
    return MakeError(Code::kInvalidArgument, "not a cairn-fmnist checkpoint (format '{}')",
                     s.value("format", ""));
  }
  if (s.at("seed").get<uint64_t>() != opt_.seed) {
    return mismatch("--seed", s.at("seed").dump(), std::to_string(opt_.seed));
  }
  if (s.at("batch").get<int>() != opt_.batch) {
    return mismatch("--batch", s.at("batch").dump(), std::to_string(opt_.batch));
  }
  if (s.at("lr").get<float>() != opt_.lr) {
    return mismatch("--lr", s.at("lr").dump(), fmt::format("{}", opt_.lr));
  }
  if (s.at("optimizer").get<std::string>() != opt_.optimizer) {
    return mismatch("--optimizer", s.at("optimizer").get<std::string>(), opt_.optimizer);
  }
  if (s.at("schedule").get<std::string>() != opt_.schedule) {
    return mismatch("--schedule", s.at("schedule").get<std::string>(), opt_.schedule);
  }
  if (s.at("reduce").get<std::string>() != opt_.reduce) {
    return mismatch("--reduce", s.at("reduce").get<std::string>(), opt_.reduce);
  }
  if (exact() && s.at("micro_batch").get<int>() != opt_.micro_batch) {
    return mismatch("--micro-batch", s.at("micro_batch").dump(), std::to_string(opt_.micro_batch));
  }
  if (s.at("augment").get<bool>() != opt_.augment) {
    return mismatch("augmentation", s.at("augment").dump(), opt_.augment ? "true" : "false");
  }
  if (s.at("parameters").get<std::size_t>() != layout_.total()) {
    return mismatch("a model of parameters", s.at("parameters").dump(),
                    std::to_string(layout_.total()));
  }
  if (ckpt_world != static_cast<uint32_t>(comm_->size()) && !exact()) {
    log::Logger("fmnist")->warn(
        "resuming a {}-rank checkpoint on {} ranks with --reduce default: training continues, "
        "but the result is no longer bit-identical to an uninterrupted run (use --reduce "
        "exact for that)",
        ckpt_world, comm_->size());
  }
  return OkStatus();
}

Status Trainer::SetUpCheckpointing() {
  if (opt_.ckpt_dir.empty()) return OkStatus();
  ckpt::KeySource source;
  if (!opt_.key_file.empty()) {
    source.file = opt_.key_file;
  } else if (const char* f = std::getenv("CAIRN_KEY_FILE"); f != nullptr && *f) {
    source.file = f;
  } else if (const char* k = std::getenv(std::string(ckpt::kMasterKeyEnvVar).c_str());
             k != nullptr && *k) {
    source.env_var = std::string(ckpt::kMasterKeyEnvVar);
  } else {
    return MakeError(Code::kInvalidArgument,
                     "--ckpt-dir needs a key: --key-file, CAIRN_KEY_FILE or {} (checkpoints are "
                     "always encrypted)",
                     ckpt::kMasterKeyEnvVar);
  }
  CAIRN_ASSIGN_OR_RETURN(auto key, ckpt::ResolveKey(source));
  key_ = std::make_shared<const ckpt::MasterKey>(std::move(key));
  if (const char* h = std::getenv("CAIRN_EXPECTED_HEAD"); h != nullptr && *h) {
    CAIRN_ASSIGN_OR_RETURN(auto d, WithContext(ckpt::DigestFromHex(h), "CAIRN_EXPECTED_HEAD"));
    expected_head_ = d;
  }
  return OkStatus();
}

Status Trainer::Resume() {
  std::error_code ec;
  if (opt_.ckpt_dir.empty() || !std::filesystem::exists(opt_.ckpt_dir, ec)) return OkStatus();
  ckpt::ReaderOptions ro;
  ro.key = key_;
  ro.expected_head = expected_head_;
  ro.verify = ckpt::VerifyMode::kFull;
  auto reader = ckpt::CheckpointReader::Open(opt_.ckpt_dir, ro);
  if (!reader) {
    if (reader.error().code() == Code::kNotFound) return OkStatus();  // nothing saved yet
    return std::unexpected(std::move(reader).error().With("resume"));
  }
  auto& r = **reader;
  for (const auto& why : r.skipped()) {
    log::Logger("fmnist")->warn("passed over a damaged newer checkpoint: {}", why);
  }
  // Rank 0's shard holds the model; every rank's shard holds the training state.
  CAIRN_ASSIGN_OR_RETURN(const ckpt::H5ShardReader* shard, r.Shard(0));
  CAIRN_ASSIGN_OR_RETURN(auto state_bytes, shard->ReadBlob("train/state"));
  nlohmann::json s = nlohmann::json::parse(
      std::string(reinterpret_cast<const char*>(state_bytes.data()), state_bytes.size()), nullptr,
      false);
  if (s.is_discarded() || !s.is_object()) {
    return MakeError(Code::kDataLoss, "checkpoint step {}: train/state is not JSON", r.step());
  }
  try {
    CAIRN_RETURN_IF_ERROR_CTX(CheckCompatible(s, r.world_size()), "resume from step {}", r.step());
    state_.step = s.at("step").get<uint64_t>();
    state_.epoch_loss = s.at("epoch_loss").get<double>();
    state_.epoch_steps = s.at("epoch_steps").get<uint64_t>();
    opt_state_.t = s.at("optimizer_t").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    return MakeError(Code::kDataLoss, "checkpoint step {}: train/state: {}", r.step(), e.what());
  }
  if (state_.step != r.step()) {
    return MakeError(Code::kDataLoss, "checkpoint step {} holds the state of step {}", r.step(),
                     state_.step);
  }
  CAIRN_ASSIGN_OR_RETURN(auto rng_bytes, shard->ReadBlob("train/rng"));
  CAIRN_ASSIGN_OR_RETURN(aug_rng_, WithContext(rt::Philox::Deserialize(rng_bytes), "train/rng"));
  auto read = [&](const std::string& name, float* dst, std::size_t n) -> Status {
    CAIRN_ASSIGN_OR_RETURN(auto info, shard->Info(name));
    if (info.dtype != ckpt::DType::kF32 || info.size_bytes != n * sizeof(float)) {
      return MakeError(Code::kDataLoss, "checkpoint tensor {} has the wrong type or shape", name);
    }
    return shard->ReadTensor(name, std::as_writable_bytes(std::span<float>(dst, n)));
  };
  opt_state_.m.assign(layout_.total(), 0.0f);
  if (opt_.optimizer == "adam") opt_state_.v.assign(layout_.total(), 0.0f);
  for (const Tensor& t : layout_.tensors()) {
    CAIRN_RETURN_IF_ERROR(read("model/" + t.name, params_.data() + t.offset, t.size()));
    CAIRN_RETURN_IF_ERROR(read("optim/m/" + t.name, opt_state_.m.data() + t.offset, t.size()));
    if (opt_.optimizer == "adam") {
      CAIRN_RETURN_IF_ERROR(read("optim/v/" + t.name, opt_state_.v.data() + t.offset, t.size()));
    }
  }
  last_saved_ = r.step();
  if (comm_->rank() == 0) {
    reported_ckpt_step_ = r.step();
    progress_.SetCheckpoint(r.step(), Hex(r.digest()));
    progress_.SetResumedFrom(Hex(r.digest()));
    log::Logger("fmnist")->info("resumed from step {} (epoch {}, batch {}) of {}: manifest {}",
                                r.step(), r.step() / steps_per_epoch_ + 1,
                                r.step() % steps_per_epoch_, opt_.ckpt_dir, Hex(r.digest()));
  }
  std::fprintf(stderr, "resumed_from_step=%llu\n", static_cast<unsigned long long>(r.step()));
  return OkStatus();
}

Status Trainer::Save(uint64_t step, bool sync) {
  if (!writer_ || (last_saved_ && *last_saved_ >= step)) return OkStatus();
  const auto t0 = std::chrono::steady_clock::now();
  CAIRN_RETURN_IF_ERROR(SyncFromGpu());
  std::vector<ckpt::TensorRef> tensors;
  if (comm_->rank() == 0) {
    for (const Tensor& t : layout_.tensors()) {
      std::vector<uint64_t> shape = t.rows == 1 ? std::vector<uint64_t>{t.cols}
                                                : std::vector<uint64_t>{t.rows, t.cols};
      auto bytes = [&](const std::vector<float>& v) {
        return std::as_bytes(std::span<const float>(v.data() + t.offset, t.size()));
      };
      tensors.push_back({"model/" + t.name, ckpt::DType::kF32, shape, bytes(params_)});
      tensors.push_back({"optim/m/" + t.name, ckpt::DType::kF32, shape, bytes(opt_state_.m)});
      if (opt_.optimizer == "adam") {
        tensors.push_back({"optim/v/" + t.name, ckpt::DType::kF32, shape, bytes(opt_state_.v)});
      }
    }
  }
  const std::string state = StateJson().dump();
  const auto rng = aug_rng_.Serialize();
  std::vector<ckpt::BlobRef> blobs = {
      {"train/state", std::as_bytes(std::span<const char>(state.data(), state.size()))},
      {"train/rng", std::span<const std::byte>(rng)},
  };
  Status result = OkStatus();
  if (sync) {
    auto info = writer_->Save(step, tensors, blobs);
    if (!info) result = std::unexpected(std::move(info).error());
  } else {
    auto handle = writer_->SaveAsync(step, tensors, blobs);
    if (!handle) result = std::unexpected(std::move(handle).error());
  }
  last_saved_ = step;
  ckpt_blocked_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return WithContext(std::move(result), fmt::format("checkpoint of step {}", step));
}

Result<double> Trainer::TestAccuracy() {
  const Split& test = data_->test;
  const uint32_t n = test.count;
  const uint32_t lo = static_cast<uint32_t>(uint64_t{n} * static_cast<uint64_t>(comm_->rank()) /
                                            static_cast<uint64_t>(comm_->size()));
  const uint32_t hi = static_cast<uint32_t>(uint64_t{n} *
                                            static_cast<uint64_t>(comm_->rank() + 1) /
                                            static_cast<uint64_t>(comm_->size()));
  std::vector<int64_t> correct{0};
  std::vector<uint32_t> idx;
  for (uint32_t start = lo; start < hi; start += 500) {
    const uint32_t end = std::min(hi, start + 500);
    idx.resize(end - start);
    for (uint32_t i = start; i < end; ++i) idx[i - start] = i;
    GatherBatch(test, idx, {}, &x_, &y_);
#ifdef CAIRN_HAVE_CUDA_MLP
    if (gpu_) {
      int64_t c = 0;
      CAIRN_RETURN_IF_ERROR(Cuda(cuda::Correct(gpu_->mlp, x_.data(), y_.data(),
                                               static_cast<int>(idx.size()), &c)));
      correct[0] += c;
      continue;
    }
#endif
    correct[0] += mlp_.Correct(params_, x_.data(), y_.data(), idx.size());
  }
  CAIRN_RETURN_IF_ERROR(comm_->AllReduceSum(std::span<int64_t>(correct)));
  return static_cast<double>(correct[0]) / n;
}

Status Trainer::Step(uint64_t step) {
  const uint64_t epoch = step / steps_per_epoch_;
  const uint64_t pos = step % steps_per_epoch_;
  if (perm_epoch_ != epoch) {
    perm_ = rt::EpochPermutation(data_->train.count, opt_.seed, epoch);
    perm_epoch_ = epoch;
  }
  const std::size_t B = static_cast<std::size_t>(opt_.batch);
  std::span<const uint32_t> batch(perm_.data() + pos * B, B);
  // Every rank draws the flips of the whole global batch, so the stream advances alike
  // everywhere and does not depend on the number of ranks.
  flips_.assign(B, 0);
  if (opt_.augment) {
    for (std::size_t i = 0; i < B; ++i) flips_[i] = static_cast<uint8_t>(aug_rng_.NextU32() >> 31);
  }
  const int W = comm_->size(), r = comm_->rank();
  // control[0]: the summed loss in fixed point; control[1]: ranks asking to stop.
  std::vector<int64_t> control{0, rt::PreemptionRequested() ? 1 : 0};
  if (!exact()) {
    const std::size_t lo = B * static_cast<std::size_t>(r) / static_cast<std::size_t>(W);
    const std::size_t hi = B * static_cast<std::size_t>(r + 1) / static_cast<std::size_t>(W);
    GatherBatch(data_->train, batch.subspan(lo, hi - lo),
                std::span<const uint8_t>(flips_).subspan(lo, hi - lo), &x_, &y_);
    double loss = 0.0;
    if (gpu_) {
#ifdef CAIRN_HAVE_CUDA_MLP
      CAIRN_RETURN_IF_ERROR(Cuda(cuda::Gradient(gpu_->mlp, x_.data(), y_.data(),
                                                static_cast<int>(hi - lo), &loss)));
      CAIRN_RETURN_IF_ERROR(gpu_->nccl->AllReduceSum(cuda::DeviceGradient(gpu_->mlp),
                                                     layout_.total(), coll::DataType::kF32));
#endif
    } else {
      std::fill(grad_.begin(), grad_.end(), 0.0f);
      loss = mlp_.Gradient(params_, x_.data(), y_.data(), hi - lo, grad_);
      CAIRN_RETURN_IF_ERROR(comm_->AllReduceSum(std::span<float>(grad_)));
      const float inv = 1.0f / static_cast<float>(B);
      for (float& g : grad_) g *= inv;
    }
    control[0] = std::llround(loss * kFixedScale);
  } else {
    const std::size_t m = static_cast<std::size_t>(opt_.micro_batch);
    const std::size_t micro = B / m;
    std::fill(qgrad_.begin(), qgrad_.end(), 0);
    scratch_.resize(layout_.total());
    for (std::size_t k = static_cast<std::size_t>(r); k < micro; k += static_cast<std::size_t>(W)) {
      GatherBatch(data_->train, batch.subspan(k * m, m),
                  std::span<const uint8_t>(flips_).subspan(k * m, m), &x_, &y_);
      std::fill(scratch_.begin(), scratch_.end(), 0.0f);
      double loss = mlp_.Gradient(params_, x_.data(), y_.data(), m, scratch_);
      control[0] += std::llround(loss * kFixedScale);
      // Truncation toward zero is as deterministic as rounding and vectorises; values
      // out of range (or NaN) are flagged and fail the step instead of wrapping.
      bool out_of_range = false;
      const float* g = scratch_.data();
      int64_t* acc = qgrad_.data();
      for (std::size_t i = 0; i < scratch_.size(); ++i) {
        const double q = static_cast<double>(g[i]) * kFixedScale;
        const bool bad = !(std::fabs(q) < 4.0e18);  // also catches NaN
        out_of_range |= bad;
        acc[i] += static_cast<int64_t>(bad ? 0.0 : q);
      }
      if (out_of_range) {
        return MakeError(Code::kInvalidArgument,
                         "step {}: a gradient is out of the fixed-point range of --reduce exact "
                         "(training diverged; lower --lr)",
                         step);
      }
    }
    CAIRN_RETURN_IF_ERROR(comm_->AllReduceSum(std::span<int64_t>(qgrad_)));
    const double inv = 1.0 / (kFixedScale * static_cast<double>(B));
    for (std::size_t i = 0; i < grad_.size(); ++i) {
      grad_[i] = static_cast<float>(static_cast<double>(qgrad_[i]) * inv);
    }
  }
  CAIRN_RETURN_IF_ERROR(comm_->AllReduceSum(std::span<int64_t>(control)));
  // Learning rate of this step: cosine decay over all steps of --epochs (a function of the
  // step alone, so a resumed run continues the same schedule).
  opt_cfg_.lr = opt_.lr;
  if (opt_.schedule == "cosine") {
    const double total = static_cast<double>(steps_per_epoch_ * static_cast<uint64_t>(opt_.epochs));
    const double progress = static_cast<double>(step) / total;
    opt_cfg_.lr = static_cast<float>(opt_.lr * 0.5 * (1.0 + std::cos(M_PI * progress)));
  }
  if (gpu_) {
#ifdef CAIRN_HAVE_CUDA_MLP
    ++opt_state_.t;
    const float scale = 1.0f / static_cast<float>(B);
    CAIRN_RETURN_IF_ERROR(Cuda(
        opt_cfg_.kind == Optimizer::kAdam
            ? cuda::ApplyAdam(gpu_->mlp, opt_cfg_.lr, opt_cfg_.beta1, opt_cfg_.beta2,
                              opt_cfg_.eps, opt_state_.t, scale)
            : cuda::ApplySgd(gpu_->mlp, opt_cfg_.lr, opt_cfg_.momentum, scale)));
#endif
  } else {
    ApplyUpdate(opt_cfg_, params_, grad_, &opt_state_);
  }
  const double mean_loss = static_cast<double>(control[0]) / kFixedScale / static_cast<double>(B);
  if (!std::isfinite(mean_loss)) {
    return MakeError(Code::kInvalidArgument, "step {}: loss is not finite (lower --lr)", step);
  }
  state_.step = step + 1;
  state_.epoch_loss += mean_loss;
  state_.epoch_steps += 1;
  // Only the agreed value decides, so that every rank stops after the same step.
  stop_agreed_ = control[1] > 0;
  return OkStatus();
}

Status Trainer::SetUpGpu() {
#ifdef CAIRN_HAVE_CUDA_MLP
  const int devices = coll::NcclCommunicator::VisibleDevices();
  if (devices < 1) {
    return MakeError(Code::kFailedPrecondition, "--device cuda: no CUDA device is visible");
  }
  gpu_ = std::make_unique<Gpu>();
  const int device = launch_.local_rank % devices;
  CAIRN_ASSIGN_OR_RETURN(gpu_->nccl,
                         coll::NcclCommunicator::Create(comm_, device, comm_->timeout()));
  const auto& L = layout_;
  cuda::LayerOffsets off{L[0].offset, L[1].offset, L[2].offset, L[3].offset,
                         L[4].offset, L[5].offset, L.total()};
  CAIRN_RETURN_IF_ERROR(Cuda(cuda::Create(device, off, opt_cfg_.kind == Optimizer::kAdam,
                                          &gpu_->mlp)));
  opt_state_.m.resize(L.total(), 0.0f);
  opt_state_.v.resize(L.total(), 0.0f);
  // Checkpoints copy these back from the device while training waits: page-locked, the
  // copy runs at the bus's speed. (Their sizes never change from here on.)
  for (std::vector<float>* v : {&params_, &opt_state_.m, &opt_state_.v}) {
    if (std::string e = cuda::PinHost(gpu_->mlp, v->data(), v->size() * sizeof(float));
        !e.empty()) {
      log::Logger("fmnist")->warn("checkpoint copies stay in pageable memory: {}", e);
      break;
    }
  }
  CAIRN_RETURN_IF_ERROR(Cuda(cuda::Upload(gpu_->mlp, params_.data(), opt_state_.m.data(),
                                          opt_state_.v.data())));
  if (comm_->rank() == 0) {
    log::Logger("fmnist")->info("training on CUDA device {} of {} with NCCL", device, devices);
  }
  return OkStatus();
#else
  return MakeError(Code::kFailedPrecondition, "--device cuda: this build has no CUDA");
#endif
}

// Copies the device's parameters and optimizer moments into the host vectors.
Status Trainer::SyncFromGpu() {
#ifdef CAIRN_HAVE_CUDA_MLP
  if (gpu_) {
    opt_state_.m.resize(layout_.total(), 0.0f);
    opt_state_.v.resize(layout_.total(), 0.0f);
    return Cuda(cuda::Download(gpu_->mlp, params_.data(), opt_state_.m.data(),
                               opt_state_.v.data()));
  }
#endif
  return OkStatus();
}

Result<int> Trainer::Run() {
  CAIRN_RETURN_IF_ERROR(Validate());
  opt_cfg_.kind = opt_.optimizer == "sgd" ? Optimizer::kSgd : Optimizer::kAdam;
  opt_cfg_.lr = opt_.lr;
  steps_per_epoch_ = data_->train.count / static_cast<uint32_t>(opt_.batch);
  target_ = steps_per_epoch_ * static_cast<uint64_t>(opt_.epochs);
  if (opt_.steps > 0) target_ = std::min(target_, opt_.steps);
  params_.assign(layout_.total(), 0.0f);
  grad_.assign(layout_.total(), 0.0f);
  if (exact()) qgrad_.assign(layout_.total(), 0);
  {
    rt::Philox init(opt_.seed, kInitStream);
    mlp_.Init(params_, init);
  }
  CAIRN_RETURN_IF_ERROR(SetUpCheckpointing());
  const auto t_resume = std::chrono::steady_clock::now();
  CAIRN_RETURN_IF_ERROR(Resume());
  g_startup.resume_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - t_resume)
                            .count();
  // Every rank must have resumed from the same step.
  CAIRN_ASSIGN_OR_RETURN(auto steps, comm_->AllGather(std::to_string(state_.step)));
  for (std::size_t i = 0; i < steps.size(); ++i) {
    if (steps[i] != steps[0]) {
      return MakeError(Code::kFailedPrecondition,
                       "ranks resumed from different steps (rank 0: {}, rank {}: {}): is {} on "
                       "a file system every rank sees?",
                       steps[0], i, steps[i], opt_.ckpt_dir);
    }
  }
  if (opt_.device == "cuda") CAIRN_RETURN_IF_ERROR(SetUpGpu());
  if (!opt_.ckpt_dir.empty()) {
    CAIRN_ASSIGN_OR_RETURN(ckpt_comm_, comm_->Duplicate());
    agreement_ = std::make_unique<coll::CommunicatorAgreement>(ckpt_comm_.get());
    ckpt::WriterOptions wo;
    wo.dir = opt_.ckpt_dir;
    wo.run_id = opt_.run_id;
    wo.key = key_;
    wo.agreement = agreement_.get();
    wo.retention = {opt_.keep_last, opt_.keep_every};
    wo.expected_head = expected_head_;
    if (!launch_.provenance_digest.empty()) {
      CAIRN_ASSIGN_OR_RETURN(wo.provenance_digest,
                             WithContext(ckpt::DigestFromHex(launch_.provenance_digest),
                                         "CAIRN_PROVENANCE_DIGEST"));
    }
    CAIRN_ASSIGN_OR_RETURN(writer_, ckpt::CheckpointWriter::Open(wo));
    std::error_code ec;
    progress_.SetCheckpointDir(std::filesystem::absolute(opt_.ckpt_dir, ec).lexically_normal());
  }
  if (comm_->rank() == 0) {
    log::Logger("fmnist")->info(
        "training {} parameters on {} rank(s) ({} launcher): steps {}..{} of {} per epoch, "
        "batch {}, {} lr {}, reduce {}",
        layout_.total(), comm_->size(), launch_.launcher, state_.step, target_, steps_per_epoch_,
        opt_.batch, opt_.optimizer, opt_.lr, opt_.reduce);
  }

  const auto t_start = std::chrono::steady_clock::now();
  auto t_last = t_start;
  const uint64_t first_step = state_.step;
  bool preempted = false;
  while (state_.step < target_) {
    const uint64_t step = state_.step;
    CAIRN_RETURN_IF_ERROR(Step(step));
    if (step == first_step && comm_->rank() == 0) {
      std::fprintf(stderr,
                   "startup: process_start_unix_ms=%lld mpi_init_ms=%lld data_wait_ms=%lld "
                   "data_cache=%s resume_ms=%lld first_step_unix_ms=%lld\n",
                   static_cast<long long>(g_startup.process_start_ms),
                   static_cast<long long>(g_startup.mpi_ready_ms - g_startup.process_start_ms),
                   static_cast<long long>(g_startup.data_ready_ms - g_startup.mpi_ready_ms),
                   g_startup.data_cache, static_cast<long long>(g_startup.resume_ms), static_cast<long long>(UnixMs()));
    }
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - t_last).count();
    t_last = now;
    if (writer_ && comm_->rank() == 0) {
      // Every commit since the last report (async saves can land several at once).
      for (const auto& head : writer_->CommittedAfter(reported_ckpt_step_)) {
        reported_ckpt_step_ = head.step;
        progress_.SetCheckpoint(head.step, Hex(head.digest));
      }
    }
    progress_.Report(state_.step, state_.epoch_loss / static_cast<double>(state_.epoch_steps),
                     dt > 0 ? opt_.batch / dt : 0.0);
    if (state_.step % steps_per_epoch_ == 0) {
      CAIRN_ASSIGN_OR_RETURN(double acc, TestAccuracy());
      Print(fmt::format("epoch {} step {} loss {:.6f} test_accuracy {:.4f}",
                        state_.step / steps_per_epoch_, state_.step,
                        state_.epoch_loss / static_cast<double>(state_.epoch_steps), acc));
      state_.epoch_loss = 0.0;
      state_.epoch_steps = 0;
    }
    if (stop_agreed_) {
      preempted = true;
      break;
    }
    if (opt_.ckpt_every > 0 && state_.step % opt_.ckpt_every == 0 && state_.step < target_) {
      if (auto s = Save(state_.step, opt_.ckpt_sync); !s) {
        ++ckpt_failures_;
        log::Logger("fmnist")->error("{}", s.error().ToString());
      }
    }
  }
  const double train_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();

  // Final (or preemption) checkpoint, then wait for every background save.
  const double loop_blocked_s = ckpt_blocked_s_;
  Status final_save = Save(state_.step, /*sync=*/true);
  if (writer_) {
    const auto t0 = std::chrono::steady_clock::now();
    Status flushed = writer_->Flush();
    ckpt_blocked_s_ +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!flushed) {
      ++ckpt_failures_;
      log::Logger("fmnist")->error("background checkpoint: {}", flushed.error().ToString());
    }
    if (auto head = writer_->head(); head && comm_->rank() == 0) {
      log::Logger("fmnist")->info("checkpoint head: step {} manifest {}", head->step,
                                  Hex(head->digest));
      // The final head, for the orchestrator (the next attempt must find it), after the
      // commits it has not heard of yet.
      for (const auto& h : writer_->CommittedAfter(reported_ckpt_step_)) {
        reported_ckpt_step_ = h.step;
        progress_.SetCheckpoint(h.step, Hex(h.digest));
      }
      progress_.SetCheckpoint(head->step, Hex(head->digest));
      progress_.Report(state_.step, 0.0, 0.0);
    }
  }
  CAIRN_RETURN_IF_ERROR(final_save);
  if (preempted) {
    Print(fmt::format("preempted at step {} ({}): checkpoint saved, exiting {}", state_.step,
                      rt::PreemptionRequested()
                          ? fmt::format("signal {}", rt::PreemptionSignal())
                          : std::string("a peer rank was signalled"),
                      rt::kExitPreempted));
    return rt::kExitPreempted;
  }
  CAIRN_ASSIGN_OR_RETURN(double acc, TestAccuracy());
  CAIRN_RETURN_IF_ERROR(SyncFromGpu());
  const uint64_t ran = state_.step - first_step;
  // Blocked time during training (periodic saves) vs the final save and flush at the end.
  Print(fmt::format("summary steps={} ranks={} train_seconds={:.3f} samples_per_second={:.1f} "
                    "ckpt_blocked_seconds={:.4f} ckpt_blocked_fraction={:.5f} "
                    "final_save_seconds={:.4f}",
                    ran, comm_->size(), train_s,
                    train_s > 0 ? static_cast<double>(ran) * opt_.batch / train_s : 0.0,
                    loop_blocked_s, train_s > 0 ? loop_blocked_s / train_s : 0.0,
                    ckpt_blocked_s_ - loop_blocked_s));
  ckpt::Sha256 sha;
  sha.Update(std::as_bytes(std::span<const float>(params_)));
  Print(fmt::format("test_accuracy={:.4f}", acc));
  Print(fmt::format("weights_sha256={}", Hex(sha.Finish())));
  return ckpt_failures_ > 0 ? 1 : 0;
}

}  // namespace
}  // namespace cairn::fmnist

int main(int argc, char** argv) {
  using namespace cairn;
  fmnist::g_startup.process_start_ms = fmnist::UnixMs();
  CLI::App app{"cairn-fmnist: data-parallel MLP on Fashion-MNIST with exact resume"};
  StandardFlags std_flags;
  AddStandardFlags(app, &std_flags, "cairn-fmnist");
  fmnist::Options o;
  app.add_option("--data-dir", o.data_dir, "Directory of the IDX (.gz) files")
      ->capture_default_str();
  app.add_option("--data-cache", o.data_cache,
                 "Directory for the decompressed dataset, verified by SHA-256 on every load "
                 "('none': off; default $CAIRN_DATA_CACHE, else ~/.cache/cairn/datasets)")
      ->capture_default_str();
  app.add_option("--epochs", o.epochs, "Epochs to train")->capture_default_str();
  app.add_option("--steps", o.steps,
                 "Stop after this many optimizer steps of the whole run (0: all epochs)");
  app.add_option("--batch", o.batch, "Global batch size")->capture_default_str();
  app.add_option("--lr", o.lr, "Learning rate")->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of initialisation, data order and augmentation")
      ->capture_default_str();
  app.add_option("--optimizer", o.optimizer, "adam or sgd (momentum 0.9)")->capture_default_str();
  app.add_option("--schedule", o.schedule, "Learning-rate schedule: cosine (decay over --epochs) "
                                           "or constant")
      ->capture_default_str();
  app.add_option("--reduce", o.reduce,
                 "default (float allreduce) or exact (rank-count-independent fixed point)")
      ->capture_default_str();
  app.add_option("--micro-batch", o.micro_batch, "Micro-batch size of --reduce exact")
      ->capture_default_str();
  app.add_flag("!--no-augment", o.augment, "Disable random mirror flips");
  app.add_option("--ckpt-dir", o.ckpt_dir, "Checkpoint directory (resume from it if it has one)");
  app.add_option("--ckpt-every", o.ckpt_every, "Save every N steps (0: only at the end)")
      ->capture_default_str();
  app.add_flag("--ckpt-sync", o.ckpt_sync, "Save synchronously instead of in the background");
  app.add_option("--keep-last", o.keep_last, "Retention: newest N checkpoints keep their data")
      ->capture_default_str();
  app.add_option("--keep-every", o.keep_every, "Retention: and every K-th step (0: none)")
      ->capture_default_str();
  app.add_option("--key-file", o.key_file, "Master key file (0600); else CAIRN_KEY_FILE");
  app.add_option("--run-id", o.run_id, "Run id bound into checkpoints (default: CAIRN_RUN_ID "
                                       "or 'fmnist')");
  app.add_option("--device", o.device, "cpu (or cuda)")->capture_default_str();
  app.add_option("--comm-timeout", o.comm_timeout_s,
                 "Seconds before a collective with a dead peer fails the run")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  // The config file's log_level (--log-level over it); its other keys are the daemons'.
  if (auto config = LoadEffectiveConfig(std_flags); !config) {
    return ReportError("cairn-fmnist", config.error());
  }
  rt::InstallPreemptionHandlers();
  openblas_set_num_threads(1);  // determinism, and ranks share the cores

  auto launch = rt::ReadLaunchContract();
  if (!launch) return ReportError("cairn-fmnist", launch.error());
  if (o.run_id.empty()) o.run_id = launch->run_id.empty() ? "fmnist" : launch->run_id;
  if (o.ckpt_dir.empty()) o.ckpt_dir = launch->ckpt_dir;
  if (o.comm_timeout_s < 1) {
    return ReportError("cairn-fmnist",
                       Error(Code::kInvalidArgument, "--comm-timeout must be at least 1"));
  }

  // The dataset loads while MPI starts up (MPI_Init mostly waits on its daemons).
  fmnist::DataCache cache;
  if (o.data_cache != "none") cache.dir = o.data_cache;
  cache.write = launch->local_rank == 0;  // one writer per node
  auto loading = std::async(std::launch::async,
                            [&] { return fmnist::LoadDataset(o.data_dir, &cache); });

  auto session = coll::MpiSession::Start();
  if (!session) return ReportError("cairn-fmnist", session.error());
  fmnist::g_startup.mpi_ready_ms = fmnist::UnixMs();
  int rc = 0;
  {
    auto comm = coll::MpiCommunicator::World(std::chrono::seconds(o.comm_timeout_s));
    if (!comm) return ReportError("cairn-fmnist", comm.error());
    if (launch->launcher != "single" && launch->world_size != (*comm)->size()) {
      return ReportError(
          "cairn-fmnist",
          Error(Code::kInvalidArgument,
                fmt::format("the {} launcher says {} ranks but MPI has {}: start the ranks "
                            "with mpirun or srun --mpi=pmix",
                            launch->launcher, launch->world_size, (*comm)->size())));
    }
    auto data = loading.get();
    if (!cache.dir.empty()) fmnist::g_startup.data_cache = cache.misses == 0 ? "hit" : "miss";
    if (!data) return ReportError("cairn-fmnist", data.error().With(fmt::format("rank {}", (*comm)->rank())));
    fmnist::g_startup.data_ready_ms = fmnist::UnixMs();
    fmnist::Trainer trainer(o, *launch, comm->get(), &*data);
    auto result = trainer.Run();
    if (!result) {
      Error e = std::move(result).error();
      e.With(fmt::format("rank {} of {}", (*comm)->rank(), (*comm)->size()));
      rc = ReportError("cairn-fmnist", e);
      trainer.ReportExit(rc);
      if (coll::MpiSession::poisoned()) {
        std::fflush(nullptr);
        std::_Exit(rc);  // a peer is gone: finalising MPI could block
      }
    } else {
      rc = *result;
    }
    trainer.ReportExit(rc);
  }
  return rc;
}
