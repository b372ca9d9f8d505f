#include "coordinator/provenance_keeper.h"

#include <filesystem>

#include "checkpoint/crypto.h"
#include "checkpoint/types.h"
#include "common/io.h"
#include "common/log.h"
#include "provenance/attestation.h"
#include "provenance/environment.h"
#include "provenance/record.h"

namespace cairn::coord {
namespace {

auto Log() { return log::Logger("coordinator"); }

std::string BytesOfHex(const std::string& hex) {
  auto d = ckpt::DigestFromHex(hex);
  if (!d) return {};
  return std::string(reinterpret_cast<const char*>(d->data()), d->size());
}

}  // namespace

Result<std::unique_ptr<ProvenanceKeeper>> ProvenanceKeeper::Open(const std::string& state_dir,
                                                                 std::string builder_id,
                                                                 Post post) {
  const std::string priv = state_dir + "/signing.key";
  const std::string pub = state_dir + "/signing.pub";
  std::error_code ec;
  Result<prov::SigningKey> key = std::filesystem::exists(priv, ec)
                                     ? prov::SigningKey::LoadPem(priv)
                                     : prov::GenerateKeyFiles(priv, pub);
  if (!key) return std::unexpected(std::move(key).error().With("the cluster's signing key"));
  if (!std::filesystem::exists(pub, ec)) {
    CAIRN_RETURN_IF_ERROR(key->public_key().SavePem(pub));
  }
  return std::unique_ptr<ProvenanceKeeper>(
      new ProvenanceKeeper(state_dir, std::move(builder_id), std::move(post), std::move(*key)));
}

ProvenanceKeeper::ProvenanceKeeper(std::string state_dir, std::string builder_id, Post post,
                                   prov::SigningKey key)
    : state_dir_(std::move(state_dir)),
      builder_id_(std::move(builder_id)),
      post_(std::move(post)),
      key_(std::move(key)) {
  worker_ = std::thread([this] { Work(); });
}

ProvenanceKeeper::~ProvenanceKeeper() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  worker_.join();
}

void ProvenanceKeeper::Work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void ProvenanceKeeper::Prepare(PrepareRequest request,
                               std::function<void(Result<PreparedRecord>)> done) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back([this, request = std::move(request), done = std::move(done)]() mutable {
      auto result = Build(request);
      {
        std::lock_guard lock(mu_);
        if (stopping_) return;
      }
      post_([done = std::move(done), result = std::move(result)]() mutable {
        done(std::move(result));
      });
    });
  }
  cv_.notify_one();
}

Result<PreparedRecord> ProvenanceKeeper::Build(const PrepareRequest& req) {
  PreparedRecord out;
  proto::ProvenanceRecord& r = out.record;
  r.set_job_id(req.job_id);
  r.set_run_id(req.run_id);
  r.set_attempt(req.attempt);
  if (req.code) {
    *r.mutable_code() = *req.code;
  } else {
    r.mutable_code()->set_note("the submitter sent no code version");
  }
  for (const auto& c : req.spec.command()) r.add_command(c);
  CAIRN_ASSIGN_OR_RETURN(auto spec_hex, SpecDigestHex(req.spec));
  r.set_spec_sha256(BytesOfHex(spec_hex));
  for (const auto& [k, v] : HyperparametersOf(req.spec)) (*r.mutable_hyperparameters())[k] = v;
  if (req.spec.inputs_size() > 0) {
    prov::HashOptions ho;
    ho.cache_dir = state_dir_ + "/cache";
    prov::InputHasher hasher(ho);
    std::vector<proto::InputSpec> specs(req.spec.inputs().begin(), req.spec.inputs().end());
    auto digests = prov::DigestInputs(specs, hasher);
    if (auto s = hasher.SaveCache(); !s) {
      Log()->warn("input digest cache: {}", s.error().ToString());
    }
    if (!digests) return std::unexpected(std::move(digests).error());
    for (auto& d : *digests) *r.add_inputs() = std::move(d);
    const auto& st = hasher.stats();
    Log()->info("job {}: {} input(s) digested: {} file(s), {} hashed, {} from the cache",
                req.job_id, specs.size(), st.files, st.files_hashed, st.files_cached);
  }
  if (!req.resumed_from_hex.empty()) r.set_resumed_from_manifest(BytesOfHex(req.resumed_from_hex));
  const auto now = std::chrono::steady_clock::now();
  if (!env_ || now - env_at_ >= kEnvironmentTtl) {
    CAIRN_ASSIGN_OR_RETURN(env_, prov::DescribeEnvironment(env_options_));
    env_at_ = now;
  }
  *r.mutable_environment() = *env_;
  r.mutable_environment()->clear_hosts();
  for (const auto& h : req.hosts) r.mutable_environment()->add_hosts(h);
  if (req.hosts.empty()) *r.mutable_environment()->mutable_hosts() = env_->hosts();
  r.set_started_unix_ms(req.started_unix_ms);
  CAIRN_ASSIGN_OR_RETURN(auto digest, prov::RecordDigest(r));
  out.digest_hex = ckpt::ToHex(digest);
  return out;
}

Result<std::string> ProvenanceKeeper::Attest(const proto::ProvenanceRecord& record,
                                             const proto::JobSpec& spec,
                                             const std::string& subject_name,
                                             const std::string& subject_hex,
                                             const std::string& file_name,
                                             int64_t finished_unix_ms,
                                             const Executor& executor) {
  prov::AttestationInput in;
  prov::Subject subject;
  subject.name = subject_name;
  CAIRN_ASSIGN_OR_RETURN(subject.sha256, WithContext(ckpt::DigestFromHex(subject_hex),
                                                     "attestation subject"));
  in.subjects.push_back(std::move(subject));
  in.record = record;
  in.spec = spec;
  in.builder_id = builder_id_;
  in.finished_unix_ms = finished_unix_ms;
  in.executor = executor.name;
  in.executor_job_id = executor.job_id;
  CAIRN_ASSIGN_OR_RETURN(auto statement, prov::BuildStatement(in));
  CAIRN_ASSIGN_OR_RETURN(auto envelope, prov::SignStatement(std::move(statement), key_));
  const std::string dir = state_dir_ + "/attestations/" + record.job_id();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return MakeError(Code::kUnavailable, "{}: {}", dir, ec.message());
  const std::string path = dir + "/" + file_name;
  CAIRN_RETURN_IF_ERROR(io::WriteFileAtomic(io::DefaultFileSystem(), path, envelope, 0644));
  return path;
}

}  // namespace cairn::coord
