// cairnd's provenance: one record per run attempt, signed attestations of what the
// attempts produced, and the cluster's signing key.
//
// Promise: Prepare builds an attempt's ProvenanceRecord (the code the job was submitted
// from, command, spec digest, hyperparameters as given on the command line, every
// declared input hashed, the checkpoint it resumes from, the environment) off the
// caller's thread: inputs may be large, and the coordinator's io_context must keep
// answering heartbeats. A pinned input that differs, or one that is missing, fails the
// preparation with an error naming the file and both digests, and the attempt must not
// start. Input digests are cached under <state dir>/cache (see provenance/digest.h), so an
// unchanged data set costs a stat per file on the next attempt. The environment
// description of cairnd's host (OS, kernel, libraries, and its GPUs through nvidia-smi,
// tens of milliseconds) is reused for kEnvironmentTtl: a restart's record does not wait
// for it again; the hosts are each request's own.
// Attest signs an in-toto Statement v1 / SLSA Provenance v1 attestation (DSSE, Ed25519)
// of one output (a checkpoint manifest digest), naming the executor job the attempt ran
// as where another system ran it (the SLURM job id), with the cluster's signing key and
// writes it to <state dir>/attestations/<job>/<file>; the key is <state dir>/signing.key
// (0600, created on first use) and its public half signing.pub, which verifiers use.
//
// Threading: Prepare and Attest are called on the owner's thread (cairnd's io_context);
// Prepare's work (and the environment cache) runs on one worker thread owned by the
// keeper, and its callback is
// handed to `post`, which must run it on the owner's thread. The destructor finishes the
// work in hand, and drops callbacks not yet posted.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "coordinator/spec_digest.h"
#include "proto/cairn.pb.h"
#include "provenance/digest.h"
#include "provenance/dsse.h"
#include "provenance/environment.h"

namespace cairn::coord {

struct PrepareRequest {
  std::string job_id;
  uint32_t attempt = 0;
  std::string run_id;
  proto::JobSpec spec;
  std::optional<proto::CodeVersion> code;  // as submitted; none: recorded as unknown
  std::vector<std::string> hosts;
  std::string resumed_from_hex;  // the checkpoint head handed to the attempt, if any
  int64_t started_unix_ms = 0;
};

struct PreparedRecord {
  proto::ProvenanceRecord record;
  std::string digest_hex;  // RecordDigest: the manifests' provenance_digest
};

class ProvenanceKeeper {
 public:
  using Post = std::function<void(std::function<void()>)>;

  // Loads or creates the signing key under state_dir.
  static Result<std::unique_ptr<ProvenanceKeeper>> Open(const std::string& state_dir,
                                                        std::string builder_id, Post post);
  ~ProvenanceKeeper();
  ProvenanceKeeper(const ProvenanceKeeper&) = delete;
  ProvenanceKeeper& operator=(const ProvenanceKeeper&) = delete;

  void Prepare(PrepareRequest request, std::function<void(Result<PreparedRecord>)> done);

  // An attempt another system ran: its name ("slurm") and the attempt's job id there.
  struct Executor {
    std::string name;
    std::string job_id;
  };

  // Signs and writes an attestation of `subject` (hex manifest digest); returns its path.
  // `executor`: empty for an attempt of cairn's own agents.
  Result<std::string> Attest(const proto::ProvenanceRecord& record, const proto::JobSpec& spec,
                             const std::string& subject_name, const std::string& subject_hex,
                             const std::string& file_name, int64_t finished_unix_ms,
                             const Executor& executor);

  static constexpr std::chrono::seconds kEnvironmentTtl{60};
  // How the environment is described (tests point nvidia_smi elsewhere); before the
  // first Prepare.
  void set_environment_options(prov::EnvironmentOptions options) {
    env_options_ = std::move(options);
  }

  const prov::VerifyKey& verify_key() const { return key_.public_key(); }
  const std::string& builder_id() const { return builder_id_; }

 private:
  ProvenanceKeeper(std::string state_dir, std::string builder_id, Post post, prov::SigningKey key);
  Result<PreparedRecord> Build(const PrepareRequest& request);
  void Work();

  std::string state_dir_;
  std::string builder_id_;
  Post post_;
  prov::SigningKey key_;

  prov::EnvironmentOptions env_options_;
  // The worker thread's: the last description and when it was made.
  std::optional<proto::EnvironmentInfo> env_;
  std::chrono::steady_clock::time_point env_at_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace cairn::coord
