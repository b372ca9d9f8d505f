// cairnd's durable state in SQLite: jobs, run attempts, nodes, events, checkpoint heads,
// and the replies of requests already answered (for idempotent RPCs).
//
// Promise: the database runs in WAL mode with synchronous=FULL, so a call that returned
// OK survives kill -9 of cairnd and a power cut; several writes that belong together go
// through InTransaction (BEGIN IMMEDIATE ... COMMIT), so a crash leaves all of them or
// none. A file that is not a cairn state database, is corrupt, or has a newer schema is
// an error naming the file, never silently recreated. Job ids are "job-" + a decimal
// sequence number that is never reused.
//
// Idempotency: FindReply/SaveReply key replies by (client id, request id); the
// coordinator looks a request up first and, inside the same transaction as the effect,
// saves the reply, so a retried request gets the first reply and has no second effect.
//
// Threading: not thread-safe; owned by the coordinator's io_context (one connection).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "proto/cairn.pb.h"

struct sqlite3;

namespace cairn::coord {

struct NodeRecord {
  std::string id;
  proto::NodeResources resources;
  std::string address;
  int64_t last_seen_ms = 0;
  bool quarantined = false;
  uint32_t failures = 0;
  int64_t quarantined_until_ms = 0;  // quarantined: when it ends (0: no time limit)
};

struct EventRecord {
  int64_t id = 0;
  std::string job_id;
  int64_t at_ms = 0;
  std::string kind;
  std::string message;
};

struct ProvenanceRow {
  uint32_t attempt = 0;
  std::string digest_hex;      // RecordDigest of the record
  std::string record;          // serialized proto::ProvenanceRecord
  std::string resumed_loaded;  // manifest (hex) the attempt reported it loaded, if any
};

// One signed attestation (a DSSE file under the state directory).
struct AttestationRow {
  std::string job_id;
  uint32_t attempt = 0;
  uint64_t step = 0;          // checkpoint step; for the final model, its step too
  std::string subject_hex;    // manifest digest
  std::string name;           // "checkpoint step N" or "final"
  std::string path;           // the envelope file
  int64_t at_ms = 0;
  std::string ckpt_dir;       // the checkpoint directory the rank reported
};

class StateStore {
 public:
  static constexpr int kSchemaVersion = 3;  // 1 -> 2 -> 3 migrate in place

  static Result<std::unique_ptr<StateStore>> Open(const std::string& path);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  const std::string& path() const { return path_; }

  // Runs body in one transaction: committed if it returns OK, rolled back otherwise.
  // Nested calls (and calls while a group is open) are savepoints: a failing body undoes
  // its own writes only, and the outer transaction or group decides what is committed.
  Status InTransaction(const std::function<Status()>& body);

  // Group commit: BeginGroup opens one transaction that every write until CommitGroup
  // joins (InTransaction bodies as savepoints, single statements directly), so many
  // requests share one WAL fsync. Nothing written in a group is durable before
  // CommitGroup returns OK; the caller holds back every effect visible outside (replies)
  // until then. A failed CommitGroup has rolled the whole group back.
  Status BeginGroup();
  Status CommitGroup();
  bool group_open() const { return group_open_; }

  // The saved reply of (client, request id), if answered before. The same id reused for
  // another method is kInvalidArgument.
  Result<std::optional<std::string>> FindReply(const std::string& client_id, uint64_t request_id,
                                               const std::string& method);
  Status SaveReply(const std::string& client_id, uint64_t request_id, const std::string& method,
                   const std::string& reply, int64_t now_ms);
  // Forgets replies older than cutoff (clients retry within minutes, not days).
  Status PruneReplies(int64_t cutoff_ms);

  // Jobs.
  Result<std::string> CreateJob(const proto::JobSpec& spec, int64_t now_ms);
  Status SetJobState(const std::string& job_id, proto::JobState state, const std::string& message,
                     int64_t now_ms);
  Status AddRestart(const std::string& job_id);
  Status SetRestarts(const std::string& job_id, uint32_t restarts);
  Status SetCheckpointHead(const std::string& job_id, uint64_t step, const std::string& digest_hex);
  // Status with its runs, oldest attempt first.
  Result<proto::JobStatus> GetJob(const std::string& job_id);
  Result<std::vector<proto::JobStatus>> ListJobs(bool include_finished);

  // Run attempts (1, 2, ...).
  Result<uint32_t> BeginRun(const std::string& job_id, const std::string& placement,
                            const std::string& resumed_from_manifest, uint64_t resumed_from_step,
                            int64_t now_ms);
  // The attempt's outcome, with the newest step its ranks reported (0: none known);
  // GetJob returns it as RunStatus.last_step, and as the job's step while no attempt is live.
  Status FinishRun(const std::string& job_id, uint32_t attempt, proto::RunState state,
                   const std::string& failure, uint64_t last_step, int64_t now_ms);
  Result<std::string> RunPlacement(const std::string& job_id, uint32_t attempt);
  Status SetRunState(const std::string& job_id, uint32_t attempt, proto::RunState state);
  // The executor's id of the attempt (SLURM job id).
  Status SetRunExecutorId(const std::string& job_id, uint32_t attempt, const std::string& id);

  // Nodes.
  Status UpsertNode(const NodeRecord& node);
  Status TouchNode(const std::string& id, int64_t now_ms);
  // quarantined_until_ms: when a quarantine ends (0: no time limit; ignored when not
  // quarantined).
  Status SetNodeHealth(const std::string& id, bool quarantined, uint32_t failures,
                       int64_t quarantined_until_ms);
  Result<std::vector<NodeRecord>> ListNodes();

  // Events (append-only log per job; job_id may be empty for cluster events).
  Status AppendEvent(const std::string& job_id, const std::string& kind,
                     const std::string& message, int64_t now_ms);
  Result<std::vector<EventRecord>> Events(const std::string& job_id, int64_t after_id = 0);

  // Provenance: the code a job was submitted from (serialized proto::CodeVersion), one
  // record per attempt, attestations, links between jobs.
  Status SaveJobCode(const std::string& job_id, const std::string& code);
  Result<std::optional<std::string>> JobCode(const std::string& job_id);
  Status SaveProvenance(const std::string& job_id, uint32_t attempt, const std::string& digest_hex,
                        const std::string& record);
  Result<std::vector<ProvenanceRow>> Provenance(const std::string& job_id);
  Status SetResumedLoaded(const std::string& job_id, uint32_t attempt,
                          const std::string& manifest_hex);
  // False when this (job, subject, name) was attested already.
  Result<bool> AddAttestation(const AttestationRow& a);
  Result<std::vector<AttestationRow>> Attestations(const std::string& job_id);
  Result<std::vector<std::string>> JobsWithSubject(const std::string& subject_hex);
  // (job, checkpoint directory) of every job with an attested checkpoint.
  Result<std::vector<std::pair<std::string, std::string>>> CheckpointDirs();
  Status AddLink(const std::string& job_id, const std::string& parent_job, const std::string& via);
  // (parent job, via) pairs.
  Result<std::vector<std::pair<std::string, std::string>>> Links(const std::string& job_id);

 private:
  class Stmt;
  StateStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  Status Exec(const char* sql);
  std::unexpected<Error> DbError(const std::string& what) const;
  Result<Stmt> Prepare(const char* sql);
  Status Migrate();

  sqlite3* db_;
  std::string path_;
  int tx_depth_ = 0;
  bool group_open_ = false;
};

}  // namespace cairn::coord
