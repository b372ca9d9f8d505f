// `cairn lineage JOB [--json]` and `cairn lineage verify JOB`: where a job's models come
// from, and a check that every signature and every digest still holds.
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "checkpoint/crypto.h"
#include "checkpoint/store.h"
#include "cli/commands.h"
#include "common/io.h"
#include "coordinator/client.h"
#include "coordinator/spec_digest.h"
#include "proto/cairn.pb.h"
#include "provenance/attestation.h"
#include "provenance/digest.h"
#include "provenance/dsse.h"
#include "provenance/record.h"

namespace cairn::cli {
namespace {

struct LineageFlags {
  std::string state_dir;
  std::vector<std::string> args;  // JOB, or verify JOB
  std::string job_id;
  bool json = false;
  int depth = 8;
};

template <typename Fn>
void Run(Context* ctx, Fn&& fn) {
  Status st = fn();
  if (!st) ctx->exit_code = ReportError("cairn", st.error());
}

std::string Hex(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

std::string Short(const std::string& hex) { return hex.size() > 16 ? hex.substr(0, 16) : hex; }

Result<proto::GetLineageReply> GetLineage(coord::Client& c, const std::string& job_id) {
  proto::GetLineageRequest req;
  req.set_job_id(job_id);
  CAIRN_ASSIGN_OR_RETURN(auto bytes, c.Call("GetLineage", req.SerializeAsString()));
  proto::GetLineageReply reply;
  if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad GetLineage reply");
  return reply;
}

// The job and its ancestors, each once, parents after children (bounded by depth).
Result<std::vector<proto::GetLineageReply>> Collect(coord::Client& c, const std::string& job_id,
                                                    int depth) {
  std::vector<proto::GetLineageReply> out;
  std::set<std::string> seen;
  std::vector<std::pair<std::string, int>> todo = {{job_id, 0}};
  while (!todo.empty() && out.size() < 256) {
    auto [id, level] = todo.front();
    todo.erase(todo.begin());
    if (!seen.insert(id).second) continue;
    CAIRN_ASSIGN_OR_RETURN(auto l, GetLineage(c, id));
    if (level < depth) {
      for (const auto& p : l.parents()) todo.emplace_back(p.parent_job(), level + 1);
    }
    out.push_back(std::move(l));
  }
  return out;
}

std::string CodeLine(const proto::CodeVersion& c) {
  if (!c.is_git_repo()) {
    return c.note().empty() ? std::string("unknown") : fmt::format("not versioned ({})", c.note());
  }
  std::string s = fmt::format("git {}{}{}", c.git_commit().empty() ? "(no commit)" : c.git_commit(),
                              c.branch().empty() ? "" : " on " + c.branch(),
                              c.remote().empty() ? "" : " from " + c.remote());
  if (c.dirty()) {
    s += fmt::format(", DIRTY: diff {} bytes sha256 {}{}", c.diff_size(), Short(Hex(c.diff_sha256())),
                     c.untracked_size() > 0 ? fmt::format(", {} untracked", c.untracked_size())
                                            : std::string());
  } else {
    s += ", clean";
  }
  return s;
}

void PrintTree(const proto::GetLineageReply& l, const std::string& indent) {
  const auto& js = l.job();
  std::printf("%sjob %s  %s  %s\n", indent.c_str(), js.job_id().c_str(),
              proto::JobState_Name(js.state()).c_str() + 4,
              js.spec().name().empty() ? "" : js.spec().name().c_str());
  std::printf("%s  code: %s\n", indent.c_str(), CodeLine(l.code()).c_str());
  for (const auto& a : l.attempts()) {
    const auto& r = a.record();
    std::printf("%s  attempt %u  record %s  started %s\n", indent.c_str(), a.attempt(),
                Short(a.digest()).c_str(), prov::Rfc3339Millis(r.started_unix_ms()).c_str());
    for (const auto& run : js.runs()) {
      if (run.attempt() == a.attempt() && !run.executor_job_id().empty()) {
        std::printf("%s    SLURM job %s\n", indent.c_str(), run.executor_job_id().c_str());
      }
    }
    if (!a.resumed_loaded().empty()) {
      std::printf("%s    resumed from checkpoint %s\n", indent.c_str(),
                  Short(a.resumed_loaded()).c_str());
    } else if (!r.resumed_from_manifest().empty()) {
      std::printf("%s    handed checkpoint head %s\n", indent.c_str(),
                  Short(Hex(r.resumed_from_manifest())).c_str());
    }
    for (const auto& in : r.inputs()) {
      std::printf("%s    %s input %s  sha256 %s  %s\n", indent.c_str(), in.kind().c_str(),
                  in.path().c_str(), Short(Hex(in.sha256())).c_str(),
                  in.pinned() ? "pinned" : "unpinned");
    }
    for (const auto& at : l.attestations()) {
      if (at.attempt() != a.attempt()) continue;
      std::printf("%s    %s: manifest %s  (%s)\n", indent.c_str(), at.name().c_str(),
                  Short(at.subject()).c_str(), at.path().c_str());
    }
  }
  for (const auto& p : l.parents()) {
    std::printf("%s  parent %s: %s\n", indent.c_str(), p.parent_job().c_str(), p.via().c_str());
  }
}

// One check of `lineage verify`.
struct Checks {
  int failed = 0;
  int passed = 0;
  void Ok(const std::string& what) {
    ++passed;
    std::printf("  ok    %s\n", what.c_str());
  }
  void Fail(const std::string& what) {
    ++failed;
    std::printf("  FAIL  %s\n", what.c_str());
  }
  void Note(const std::string& what) { std::printf("  note  %s\n", what.c_str()); }
};

Result<std::string> ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return MakeError(Code::kNotFound, "{}: cannot read", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void VerifyJob(const proto::GetLineageReply& l, const std::string& state_dir, Checks& c) {
  const auto& js = l.job();
  std::printf("job %s\n", js.job_id().c_str());
  auto key = prov::VerifyKey::FromPem(l.signing_public_key(), "cairnd's signing key");
  if (!key) {
    c.Fail(fmt::format("signing key: {}", key.error().ToString()));
    return;
  }
  // The key file next to the state is the same key cairnd signs with.
  if (auto disk = prov::VerifyKey::LoadPem(state_dir + "/signing.pub"); disk) {
    if (disk->keyid() != key->keyid()) {
      c.Fail(fmt::format("{}/signing.pub (key {}) is not the key cairnd signs with ({})", state_dir,
                         Short(disk->keyid()), Short(key->keyid())));
    }
  }
  auto spec_hex = coord::SpecDigestHex(js.spec());
  // Code: the stored diff is the one whose digest was recorded.
  const auto& code = l.code();
  if (code.is_git_repo() && code.dirty() && !code.diff_too_large()) {
    auto d = ckpt::Sha256Of(std::as_bytes(std::span(code.diff())));
    if (std::string(reinterpret_cast<const char*>(d.data()), d.size()) == code.diff_sha256()) {
      c.Ok(fmt::format("code: the kept diff ({} bytes) matches its digest {}", code.diff().size(),
                       Short(Hex(code.diff_sha256()))));
    } else {
      c.Fail(fmt::format("code: the kept diff does not match its recorded digest {}",
                         Short(Hex(code.diff_sha256()))));
    }
  }
  std::map<uint32_t, const proto::AttemptProvenance*> attempts;
  for (const auto& a : l.attempts()) {
    attempts[a.attempt()] = &a;
    auto digest = prov::RecordDigest(a.record());
    if (!digest) {
      c.Fail(fmt::format("attempt {}: record: {}", a.attempt(), digest.error().ToString()));
    } else if (ckpt::ToHex(*digest) != a.digest()) {
      c.Fail(fmt::format("attempt {}: the stored record hashes to {}, not its recorded digest {}",
                         a.attempt(), Short(ckpt::ToHex(*digest)), Short(a.digest())));
    } else {
      c.Ok(fmt::format("attempt {}: record {} intact", a.attempt(), Short(a.digest())));
    }
    if (spec_hex && Hex(a.record().spec_sha256()) != *spec_hex) {
      c.Fail(fmt::format("attempt {}: the record's spec digest {} is not the job spec's {}",
                         a.attempt(), Short(Hex(a.record().spec_sha256())), Short(*spec_hex)));
    }
    // Inputs: still the bytes the attempt ran with?
    prov::InputHasher hasher(prov::HashOptions{.cache_dir = state_dir + "/cache"});
    for (const auto& in : a.record().inputs()) {
      auto now = hasher.Hash(in.path());
      if (!now) {
        c.Fail(fmt::format("attempt {}: {} input {}: {}", a.attempt(), in.kind(), in.path(),
                           now.error().ToString()));
      } else if (std::string(reinterpret_cast<const char*>(now->sha256.data()), 32) !=
                 in.sha256()) {
        c.Fail(fmt::format("attempt {}: {} input {} changed since the run: sha256 was {}, is {}",
                           a.attempt(), in.kind(), in.path(), Hex(in.sha256()),
                           ckpt::ToHex(now->sha256)));
      } else {
        c.Ok(fmt::format("attempt {}: {} input {} unchanged ({})", a.attempt(), in.kind(),
                         in.path(), Short(Hex(in.sha256()))));
      }
    }
    (void)hasher.SaveCache();
  }
  // The checkpoints on disk, by directory and step.
  std::map<std::string, std::map<uint64_t, ckpt::StepRecord>> on_disk;
  for (const auto& at : l.attestations()) {
    if (at.ckpt_dir().empty() || on_disk.contains(at.ckpt_dir())) continue;
    auto& steps = on_disk[at.ckpt_dir()];
    if (auto scan = ckpt::ScanChain(io::DefaultFileSystem(), at.ckpt_dir()); scan) {
      for (auto& s : scan->steps) steps[s.step] = std::move(s);
    }
  }
  for (const auto& at : l.attestations()) {
    const std::string& ckpt_dir = at.ckpt_dir();
    const auto& steps = on_disk[ckpt_dir];
    const std::string what = fmt::format("{} (attempt {})", at.name(), at.attempt());
    auto envelope = ReadAll(at.path());
    if (!envelope) {
      c.Fail(fmt::format("{}: {}", what, envelope.error().ToString()));
      continue;
    }
    auto st = prov::VerifyAttestation(*envelope, *key);
    if (!st) {
      c.Fail(fmt::format("{}: {}: {}", what, at.path(), st.error().ToString()));
      continue;
    }
    bool good = true;
    if (st->subjects.empty() || ckpt::ToHex(st->subjects[0].sha256) != at.subject()) {
      c.Fail(fmt::format("{}: the signed subject {} is not the recorded checkpoint {}", what,
                         st->subjects.empty() ? std::string("(none)")
                                              : Short(ckpt::ToHex(st->subjects[0].sha256)),
                         Short(at.subject())));
      good = false;
    }
    if (auto a = attempts.find(at.attempt()); a == attempts.end()) {
      c.Fail(fmt::format("{}: no provenance record of attempt {}", what, at.attempt()));
      good = false;
    } else if (st->provenance_record_sha256 != a->second->digest()) {
      c.Fail(fmt::format("{}: signed for record {}, but attempt {} has record {}", what,
                         Short(st->provenance_record_sha256), at.attempt(),
                         Short(a->second->digest())));
      good = false;
    }
    if (spec_hex && st->spec_sha256 != *spec_hex) {
      c.Fail(fmt::format("{}: signed for job spec {}, but the job's spec is {}", what,
                         Short(st->spec_sha256), Short(*spec_hex)));
      good = false;
    }
    // The executor job the attempt ran as (SLURM): the signed id is the one stored.
    std::string stored_job;
    for (const auto& run : js.runs()) {
      if (run.attempt() == at.attempt()) stored_job = run.executor_job_id();
    }
    if (st->executor_job_id != stored_job) {
      auto name = [](const std::string& id) {
        return id.empty() ? std::string("no SLURM job") : "SLURM job " + id;
      };
      c.Fail(fmt::format("{}: signed for {}, but attempt {} is recorded as {}", what,
                         name(st->executor_job_id), at.attempt(), name(stored_job)));
      good = false;
    }
    if (good) {
      c.Ok(fmt::format("{}: signature by {} and digests hold{}", what, Short(key->keyid()),
                       stored_job.empty() ? "" : ", SLURM job " + stored_job));
    }
    // The checkpoint itself.
    if (auto s = steps.find(at.step()); s == steps.end()) {
      c.Note(fmt::format("{}: step {} is no longer in {} (retention)", what, at.step(), ckpt_dir));
    } else if (ckpt::ToHex(s->second.digest) != at.subject()) {
      c.Fail(fmt::format("{}: the manifest of step {} on disk is {}, not the attested {}", what,
                         at.step(), Short(ckpt::ToHex(s->second.digest)), Short(at.subject())));
    } else if (auto a = attempts.find(at.attempt());
               a != attempts.end() &&
               ckpt::ToHex(s->second.manifest.provenance_digest) != a->second->digest()) {
      c.Fail(fmt::format("{}: the manifest of step {} binds record {}, not attempt {}'s {}", what,
                         at.step(), Short(ckpt::ToHex(s->second.manifest.provenance_digest)),
                         at.attempt(), Short(a->second->digest())));
    } else {
      c.Ok(fmt::format("{}: checkpoint step {} on disk matches", what, at.step()));
    }
  }
}

}  // namespace

void RegisterLineageCommands(CLI::App& app, Context* ctx) {
  auto f = std::make_shared<LineageFlags>();
  auto* lineage = app.add_subcommand(
      "lineage",
      "Where a job's models come from (job -> attempts -> checkpoints -> inputs -> parent "
      "jobs): `cairn lineage JOB [--json]`; `cairn lineage verify JOB` checks every signature "
      "and that every digest still matches the files on disk");
  lineage->add_option("--state-dir", f->state_dir,
                      "Cluster state directory (default: CAIRN_STATE_DIR or ~/.cairn)");
  lineage->add_option("args", f->args, "JOB, or verify JOB")->required();
  lineage->add_flag("--json", f->json, "Machine-readable output (the job and its ancestors)");
  lineage->add_option("--depth", f->depth, "Generations of parent jobs to follow")
      ->capture_default_str();
  lineage->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      const bool verify = f->args.size() == 2 && f->args[0] == "verify";
      if (!(f->args.size() == 1 || verify)) {
        ctx->exit_code = 2;
        return MakeError(Code::kInvalidArgument,
                         "usage: cairn lineage JOB [--json] | cairn lineage verify JOB");
      }
      f->job_id = f->args.back();
      const std::string dir = coord::DefaultStateDir(f->state_dir);
      CAIRN_ASSIGN_OR_RETURN(auto client, coord::Client::Connect(dir));
      CAIRN_ASSIGN_OR_RETURN(auto all, Collect(*client, f->job_id, f->depth));
      if (verify) {
        Checks c;
        for (const auto& l : all) VerifyJob(l, dir, c);
        std::printf("%d check(s) passed, %d failed\n", c.passed, c.failed);
        if (c.failed > 0) {
          return MakeError(Code::kDataLoss, "lineage of {}: {} check(s) failed (see above)",
                           f->job_id, c.failed);
        }
        return OkStatus();
      }
      if (f->json) {
        nlohmann::json out = nlohmann::json::array();
        for (const auto& l : all) out.push_back(nlohmann::json::parse(ToJson(l)));
        std::printf("%s\n", out.dump(2).c_str());
        return OkStatus();
      }
      for (std::size_t i = 0; i < all.size(); ++i) PrintTree(all[i], i == 0 ? "" : "  ");
      return OkStatus();
    });
  });
}

}  // namespace cairn::cli
