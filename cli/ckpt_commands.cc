// `cairn ckpt ...`: keygen, ls, verify, inspect, export, import, rekey, gc.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "checkpoint/h5_plain.h"
#include "checkpoint/reader.h"
#include "checkpoint/store.h"
#include "checkpoint/writer.h"
#include "cli/commands.h"
#include "provenance/digest.h"

namespace cairn::cli {
namespace {

using ckpt::MasterKey;

struct KeyFlags {
  std::string key_file;
  std::string key_command;
};

void AddKeyFlags(CLI::App* cmd, KeyFlags* k) {
  cmd->add_option("--key-file", k->key_file,
                  "Master key file (0600; default: $CAIRN_KEY_FILE)");
  cmd->add_option("--key-command", k->key_command,
                  "Command that prints the hex master key (KMS hook; default: "
                  "$CAIRN_KEY_COMMAND)");
}

// Flags first, then the environment: CAIRN_KEY_FILE, CAIRN_KEY_COMMAND, CAIRN_MASTER_KEY.
Result<std::shared_ptr<const MasterKey>> ResolveCliKey(const KeyFlags& k, bool required) {
  ckpt::KeySource src;
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  if (!k.key_file.empty() && !k.key_command.empty()) {
    return MakeError(Code::kInvalidArgument, "give either --key-file or --key-command, not both");
  }
  if (!k.key_file.empty()) {
    src.file = k.key_file;
  } else if (!k.key_command.empty()) {
    src.command = k.key_command;
  } else if (!env("CAIRN_KEY_FILE").empty()) {
    src.file = env("CAIRN_KEY_FILE");
  } else if (!env("CAIRN_KEY_COMMAND").empty()) {
    src.command = env("CAIRN_KEY_COMMAND");
  } else if (!env("CAIRN_MASTER_KEY").empty()) {
    src.env_var = "CAIRN_MASTER_KEY";
  } else if (!required) {
    return std::shared_ptr<const MasterKey>();
  }
  CAIRN_ASSIGN_OR_RETURN(auto key, ckpt::ResolveKey(src));
  return std::make_shared<const MasterKey>(std::move(key));
}

std::string FormatTime(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string HumanBytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", n) : fmt::format("{:.1f} {}", v, units[u]);
}

std::string Shape(const std::vector<uint64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Runs a command body; prints its error and sets the exit code.
template <typename F>
void Run(Context* ctx, F&& body) {
  Status st = body();
  if (!st) ctx->exit_code = ReportError("cairn", st.error());
}


}  // namespace

void RegisterCheckpointCommands(CLI::App& app, Context* ctx) {
  auto* ck = app.add_subcommand("ckpt", "Inspect, verify and manage encrypted checkpoints");
  ck->require_subcommand(1);

  // keygen
  {
    auto* cmd = ck->add_subcommand("keygen", "Create a new random master key file (mode 0600)");
    auto out = std::make_shared<std::string>();
    cmd->add_option("--out", *out, "Key file to create (must not exist)")->required();
    cmd->callback([ctx, out] {
      Run(ctx, [&]() -> Status {
        CAIRN_RETURN_IF_ERROR(ckpt::WriteNewKeyFile(*out));
        CAIRN_ASSIGN_OR_RETURN(auto key, ckpt::LoadKeyFile(*out));
        std::printf("wrote %s (key id %s)\n", out->c_str(), key.id.c_str());
        return OkStatus();
      });
    });
  }

  // ls
  {
    auto* cmd = ck->add_subcommand("ls", "List the checkpoints of a run directory");
    auto dir = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    cmd->add_option("DIR", *dir, "Checkpoint directory of a run")->required();
    cmd->add_flag("--json", *json, "Machine-readable output");
    cmd->callback([ctx, dir, json] {
      Run(ctx, [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto scan, ckpt::ScanChain(io::DefaultFileSystem(), *dir));
        if (*json) {
          nlohmann::json j;
          j["run_id"] = scan.run_id;
          j["head"] = scan.head_file ? nlohmann::json(ckpt::ToHex(scan.head_file->digest)) : nlohmann::json();
          j["chain_ok"] = scan.ok();
          j["problems"] = scan.problems;
          j["incomplete"] = scan.incomplete;
          j["steps"] = nlohmann::json::array();
          for (const auto& s : scan.steps) {
            uint64_t bytes = 0;
            for (const auto& e : s.manifest.shards) bytes += e.file_size;
            j["steps"].push_back({{"step", s.step},
                                  {"state", ckpt::StepStateName(s.state)},
                                  {"digest", ckpt::ToHex(s.digest)},
                                  {"previous", ckpt::ToHex(s.manifest.previous_digest)},
                                  {"world_size", s.manifest.world_size},
                                  {"bytes", bytes},
                                  {"key_id", s.manifest.key_id},
                                  {"created_unix_ms", s.manifest.created_unix_ms},
                                  {"problem", s.problem}});
          }
          std::printf("%s\n", j.dump(2).c_str());
          return OkStatus();
        }
        if (scan.steps.empty()) {
          std::printf("%s: no checkpoints\n", dir->c_str());
        } else {
          std::printf("run %s%s\n", scan.run_id.c_str(),
                      scan.head_file ? fmt::format(", head step {} {}", scan.head_file->step,
                                                   ckpt::ToHex(scan.head_file->digest).substr(0, 16))
                                           .c_str()
                                     : "");
          std::printf("%12s  %-9s  %5s  %10s  %-20s  %-16s  %s\n", "STEP", "STATE", "RANKS",
                      "SIZE", "CREATED", "DIGEST", "KEY ID");
          for (const auto& s : scan.steps) {
            uint64_t bytes = 0;
            for (const auto& e : s.manifest.shards) bytes += e.file_size;
            std::printf("%12llu  %-9s  %5u  %10s  %-20s  %-16s  %s%s\n",
                        static_cast<unsigned long long>(s.step),
                        std::string(ckpt::StepStateName(s.state)).c_str(), s.manifest.world_size,
                        HumanBytes(bytes).c_str(), FormatTime(s.manifest.created_unix_ms).c_str(),
                        ckpt::ToHex(s.digest).substr(0, 16).c_str(), s.manifest.key_id.c_str(),
                        s.problem.empty() ? "" : ("  (" + s.problem + ")").c_str());
          }
        }
        for (const auto& p : scan.incomplete) std::printf("incomplete (no manifest): %s\n", p.c_str());
        for (const auto& p : scan.problems) std::printf("PROBLEM: %s\n", p.c_str());
        if (!scan.ok()) return MakeError(Code::kDataLoss, "the checkpoint chain does not verify");
        return OkStatus();
      });
    });
  }

  // verify
  {
    auto* cmd = ck->add_subcommand(
        "verify",
        "Verify the chain and every shard; exit 0 only if everything verifies. Without a key: "
        "structure and ciphertext digests; with a key: every chunk is authenticated too");
    auto dir = std::make_shared<std::string>();
    auto head = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    auto keys = std::make_shared<KeyFlags>();
    cmd->add_option("DIR", *dir, "Checkpoint directory of a run")->required();
    cmd->add_option("--head", *head, "Expected head digest (hex), e.g. the one cairnd holds");
    cmd->add_flag("--json", *json, "Machine-readable output");
    AddKeyFlags(cmd, keys.get());
    cmd->callback([ctx, dir, head, json, keys] {
      Run(ctx, [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto key, ResolveCliKey(*keys, false));
        ckpt::VerifyOptions o;
        o.key = key.get();
        if (!head->empty()) {
          CAIRN_ASSIGN_OR_RETURN(auto d, WithContext(ckpt::DigestFromHex(*head), "--head"));
          o.scan.expected_head = d;
        }
        const auto start = std::chrono::steady_clock::now();
        CAIRN_ASSIGN_OR_RETURN(auto rep, ckpt::VerifyDirectory(io::DefaultFileSystem(), *dir, o));
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (*json) {
          nlohmann::json j;
          j["ok"] = rep.ok();
          j["authenticated"] = key != nullptr;
          j["steps"] = rep.scan.steps.size();
          j["shards_checked"] = rep.shards_checked;
          j["bytes_checked"] = rep.bytes_checked;
          j["failures"] = nlohmann::json::array();
          for (const auto& f : rep.failures) {
            j["failures"].push_back({{"step", f.step ? nlohmann::json(*f.step) : nlohmann::json()},
                                     {"rank", f.rank ? nlohmann::json(*f.rank) : nlohmann::json()},
                                     {"message", f.message}});
          }
          std::printf("%s\n", j.dump(2).c_str());
        } else if (rep.ok()) {
          std::printf("OK: %zu steps, %llu shards (%s) verified%s in %.2f s; head %s\n",
                      rep.scan.steps.size(), static_cast<unsigned long long>(rep.shards_checked),
                      HumanBytes(rep.bytes_checked).c_str(),
                      key ? " and authenticated" : " (structure and digests; no key given)", secs,
                      ckpt::ToHex(rep.scan.steps.back().digest).c_str());
        } else {
          const auto& f = rep.failures.front();
          std::printf("FAILED: %s%s%s\n",
                      f.step ? fmt::format("step {}: ", *f.step).c_str() : "",
                      f.rank ? fmt::format("shard of rank {}: ", *f.rank).c_str() : "",
                      f.message.c_str());
          for (std::size_t i = 1; i < rep.failures.size(); ++i) {
            std::printf("also: %s\n", rep.failures[i].message.c_str());
          }
        }
        if (!rep.ok()) {
          return MakeError(Code::kDataLoss, "{} problem(s) found in {}", rep.failures.size(), *dir);
        }
        return OkStatus();
      });
    });
  }

  // inspect
  {
    auto* cmd = ck->add_subcommand("inspect", "List the tensors of one step (needs the key)");
    auto dir = std::make_shared<std::string>();
    auto step = std::make_shared<uint64_t>(0);
    auto rank = std::make_shared<int>(-1);
    auto json = std::make_shared<bool>(false);
    auto keys = std::make_shared<KeyFlags>();
    cmd->add_option("DIR", *dir, "Checkpoint directory of a run")->required();
    cmd->add_option("--step", *step, "Step to inspect")->required();
    cmd->add_option("--rank", *rank, "Only this rank's shard (default: all)");
    cmd->add_flag("--json", *json, "Machine-readable output");
    AddKeyFlags(cmd, keys.get());
    cmd->callback([ctx, dir, step, rank, json, keys] {
      Run(ctx, [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto key, ResolveCliKey(*keys, true));
        ckpt::ReaderOptions ro{key};
        ro.step = *step;
        CAIRN_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(*dir, ro));
        nlohmann::json j = nlohmann::json::array();
        for (uint32_t r = 0; r < reader->world_size(); ++r) {
          if (*rank >= 0 && static_cast<uint32_t>(*rank) != r) continue;
          CAIRN_ASSIGN_OR_RETURN(auto shard, reader->Shard(r));
          if (!*json) {
            std::printf("step %llu rank %u/%u: %zu tensors, blobs: %s\n",
                        static_cast<unsigned long long>(reader->step()), r, reader->world_size(),
                        shard->tensors().size(),
                        shard->blobs().empty()
                            ? "none"
                            : fmt::format("{}", fmt::join(shard->blobs(), ", ")).c_str());
          }
          for (const auto& t : shard->tensors()) {
            if (*json) {
              j.push_back({{"rank", r}, {"name", t.name}, {"dtype", ckpt::DTypeName(t.dtype)},
                           {"shape", t.shape}, {"bytes", t.size_bytes}});
            } else {
              std::printf("  %-40s %-5s %-20s %s\n", t.name.c_str(),
                          std::string(ckpt::DTypeName(t.dtype)).c_str(), Shape(t.shape).c_str(),
                          HumanBytes(t.size_bytes).c_str());
            }
          }
        }
        if (*json) std::printf("%s\n", j.dump(2).c_str());
        return OkStatus();
      });
    });
  }

  // export
  {
    auto* cmd = ck->add_subcommand(
        "export", "Write one step's tensors to a PLAIN (unencrypted) HDF5 file that h5py reads");
    auto dir = std::make_shared<std::string>();
    auto step = std::make_shared<uint64_t>(0);
    auto rank = std::make_shared<uint32_t>(0);
    auto out = std::make_shared<std::string>();
    auto keys = std::make_shared<KeyFlags>();
    cmd->add_option("DIR", *dir, "Checkpoint directory of a run")->required();
    cmd->add_option("--step", *step, "Step to export")->required();
    cmd->add_option("--rank", *rank, "Rank whose shard to export (default 0)");
    cmd->add_option("--out", *out, "Plain HDF5 file to create (must not exist)")->required();
    AddKeyFlags(cmd, keys.get());
    cmd->callback([ctx, dir, step, rank, out, keys] {
      Run(ctx, [&]() -> Status {
        if (io::DefaultFileSystem().Stat(*out)) {
          return MakeError(Code::kFailedPrecondition, "{} exists; refusing to overwrite it", *out);
        }
        CAIRN_ASSIGN_OR_RETURN(auto key, ResolveCliKey(*keys, true));
        ckpt::ReaderOptions ro{key};
        ro.step = *step;
        CAIRN_ASSIGN_OR_RETURN(auto reader, ckpt::CheckpointReader::Open(*dir, ro));
        CAIRN_ASSIGN_OR_RETURN(auto shard, reader->Shard(*rank));
        std::vector<std::vector<std::byte>> storage;
        std::vector<ckpt::TensorRef> tensors;
        storage.reserve(shard->tensors().size() + shard->blobs().size());
        for (const auto& t : shard->tensors()) {
          storage.emplace_back(t.size_bytes);
          CAIRN_RETURN_IF_ERROR(shard->ReadTensor(t.name, storage.back()));
          tensors.push_back({t.name, t.dtype, t.shape, storage.back()});
        }
        std::vector<ckpt::BlobRef> blobs;
        for (const auto& b : shard->blobs()) {
          CAIRN_ASSIGN_OR_RETURN(auto data, shard->ReadBlob(b));
          storage.push_back(std::move(data));
          blobs.push_back({b, storage.back()});
        }
        std::map<std::string, std::string> attrs = {
            {"run_id", reader->manifest().run_id},
            {"step", std::to_string(reader->step())},
            {"rank", std::to_string(*rank)},
            {"world_size", std::to_string(reader->world_size())},
            {"manifest_digest", ckpt::ToHex(reader->digest())}};
        CAIRN_RETURN_IF_ERROR(ckpt::WritePlainH5(*out, tensors, blobs, attrs));
        // Lineage: what this file is an export of, for cairnd to link a job that starts
        // from it (the file's digest ties the note to these exact bytes).
        CAIRN_ASSIGN_OR_RETURN(auto file_digest, prov::Sha256File(*out));
        std::error_code ec;
        nlohmann::json note = {
            {"format", "cairn-export/v1"},
            {"file_sha256", ckpt::ToHex(file_digest)},
            {"source_dir", std::filesystem::absolute(*dir, ec).lexically_normal().string()},
            {"step", reader->step()},
            {"rank", *rank},
            {"run_id", reader->manifest().run_id},
            {"manifest_sha256", ckpt::ToHex(reader->digest())}};
        CAIRN_RETURN_IF_ERROR(io::WriteFileAtomic(io::DefaultFileSystem(), *out + ".lineage.json",
                                                  note.dump(2) + "\n", 0644));
        std::printf("exported step %llu rank %u (%zu tensors) to %s (UNENCRYPTED); lineage in "
                    "%s.lineage.json\n",
                    static_cast<unsigned long long>(reader->step()), *rank, tensors.size(),
                    out->c_str(), out->c_str());
        return OkStatus();
      });
    });
  }

  // import
  {
    auto* cmd = ck->add_subcommand(
        "import", "Bring the tensors of a plain HDF5 file (e.g. pretrained weights) into a chain");
    auto in = std::make_shared<std::string>();
    auto dir = std::make_shared<std::string>();
    auto step = std::make_shared<uint64_t>(0);
    auto run_id = std::make_shared<std::string>();
    auto keys = std::make_shared<KeyFlags>();
    cmd->add_option("PLAIN_H5", *in, "Plain HDF5 file")->required();
    cmd->add_option("--into", *dir, "Checkpoint directory of a run")->required();
    cmd->add_option("--step", *step, "Step to record the tensors as")->required();
    cmd->add_option("--run-id", *run_id,
                    "Run id for a new directory (default: taken from the existing chain, or "
                    "'import')");
    AddKeyFlags(cmd, keys.get());
    cmd->callback([ctx, in, dir, step, run_id, keys] {
      Run(ctx, [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto key, ResolveCliKey(*keys, true));
        CAIRN_ASSIGN_OR_RETURN(auto plain, ckpt::ReadPlainH5(*in));
        std::string rid = *run_id;
        if (rid.empty() && io::DefaultFileSystem().Stat(*dir)) {
          CAIRN_ASSIGN_OR_RETURN(auto scan, ckpt::ScanChain(io::DefaultFileSystem(), *dir));
          rid = scan.run_id;
        }
        if (rid.empty()) rid = "import";
        std::vector<ckpt::TensorRef> tensors;
        for (const auto& t : plain.tensors) {
          tensors.push_back({t.info.name, t.info.dtype, t.info.shape, t.data});
        }
        std::vector<ckpt::BlobRef> blobs;
        for (const auto& [name, data] : plain.blobs) blobs.push_back({name, data});
        ckpt::WriterOptions wo;
        wo.dir = *dir;
        wo.run_id = rid;
        wo.key = key;
        wo.retention.keep_last = 1 << 30;
        CAIRN_ASSIGN_OR_RETURN(auto writer, ckpt::CheckpointWriter::Open(wo));
        CAIRN_ASSIGN_OR_RETURN(auto info, writer->Save(*step, tensors, blobs));
        std::printf("imported %zu tensors from %s as step %llu of run %s; manifest %s\n",
                    tensors.size(), in->c_str(), static_cast<unsigned long long>(info.step),
                    rid.c_str(), ckpt::ToHex(info.manifest_digest).c_str());
        return OkStatus();
      });
    });
  }

  // rekey
  {
    auto* cmd = ck->add_subcommand(
        "rekey", "Re-wrap every step's data keys for a new master key (data is not rewritten)");
    auto dir = std::make_shared<std::string>();
    auto old_file = std::make_shared<std::string>();
    auto new_file = std::make_shared<std::string>();
    cmd->add_option("DIR", *dir, "Checkpoint directory of a run")->required();
    cmd->add_option("--old-key-file", *old_file, "Current master key file")->required();
    cmd->add_option("--new-key-file", *new_file, "New master key file")->required();
    cmd->callback([ctx, dir, old_file, new_file] {
      Run(ctx, [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto old_key, ckpt::LoadKeyFile(*old_file));
        CAIRN_ASSIGN_OR_RETURN(auto new_key, ckpt::LoadKeyFile(*new_file));
        CAIRN_ASSIGN_OR_RETURN(int n, ckpt::Rekey(io::DefaultFileSystem(), *dir, old_key, new_key));
        std::printf("rekeyed %d step(s) from key id %s to %s\n", n, old_key.id.c_str(),
                    new_key.id.c_str());
        return OkStatus();
      });
    });
  }

  // gc
  {
    auto* cmd = ck->add_subcommand(
        "gc", "Remove the shards of old steps (manifests stay, so the chain still verifies)");
    auto dir = std::make_shared<std::string>();
    auto keep = std::make_shared<ckpt::Retention>();
    cmd->add_option("DIR", *dir, "Checkpoint directory of a run")->required();
    cmd->add_option("--keep-last", keep->keep_last, "Keep the newest N steps")->required();
    cmd->add_option("--keep-every", keep->keep_every, "Also keep steps divisible by K");
    cmd->callback([ctx, dir, keep] {
      Run(ctx, [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto scan, ckpt::ScanChain(io::DefaultFileSystem(), *dir));
        if (!scan.ok()) {
          return MakeError(Code::kDataLoss, "refusing to prune a chain that does not verify: {}",
                           scan.problems.front());
        }
        CAIRN_ASSIGN_OR_RETURN(auto pruned, ckpt::Prune(io::DefaultFileSystem(), *dir, *keep));
        std::printf("pruned %zu step(s)%s\n", pruned.size(),
                    pruned.empty() ? "" : fmt::format(": {}", fmt::join(pruned, ", ")).c_str());
        return OkStatus();
      });
    });
  }
}

}  // namespace cairn::cli
