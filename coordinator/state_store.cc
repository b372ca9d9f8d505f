#include "coordinator/state_store.h"

#include <sqlite3.h>

#include <algorithm>


namespace cairn::coord {
namespace {

// What the caller should do about an SQLite result code.
Code CodeFromSqlite(int rc) {
  switch (rc) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return Code::kDataLoss;
    case SQLITE_FULL: return Code::kResourceExhausted;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return Code::kUnavailable;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM: return Code::kPermissionDenied;
    default: return Code::kInternal;
  }
}

}  // namespace

// A prepared statement, finalized on destruction.
class StateStore::Stmt {
 public:
  Stmt(sqlite3* db, sqlite3_stmt* s) : db_(db), s_(s) {}
  Stmt(Stmt&& o) noexcept : db_(o.db_), s_(o.s_) { o.s_ = nullptr; }
  Stmt& operator=(Stmt&&) = delete;
  ~Stmt() {
    if (s_ != nullptr) sqlite3_finalize(s_);
  }

  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }

  // SQLITE_ROW: true; SQLITE_DONE: false; anything else: error.
  Result<bool> Step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return MakeError(CodeFromSqlite(rc), "{}", sqlite3_errmsg(db_));
  }
  Status Run() {
    CAIRN_ASSIGN_OR_RETURN(bool row, Step());
    (void)row;
    return OkStatus();
  }

  int64_t Int(int col) const { return sqlite3_column_int64(s_, col); }
  std::string Text(int col) const {
    const auto* p = sqlite3_column_blob(s_, col);
    int n = sqlite3_column_bytes(s_, col);
    return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), static_cast<std::size_t>(n));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_;
};

std::unexpected<Error> StateStore::DbError(const std::string& what) const {
  return MakeError(CodeFromSqlite(sqlite3_errcode(db_)), "{}: {}: {}", path_, what,
                   sqlite3_errmsg(db_));
}

Result<StateStore::Stmt> StateStore::Prepare(const char* sql) {
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) != SQLITE_OK) {
    return DbError(fmt::format("prepare '{}'", sql));
  }
  return Stmt(db_, s);
}

Status StateStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    std::string_view what(sql);
    if (what.size() > 40) what = what.substr(0, 40);
    return MakeError(CodeFromSqlite(sqlite3_errcode(db_)), "{}: {}: {}", path_, msg, what);
  }
  return OkStatus();
}

Result<std::unique_ptr<StateStore>> StateStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return MakeError(Code::kPermissionDenied, "{}: cannot open the state database: {}", path, msg);
  }
  std::unique_ptr<StateStore> s(new StateStore(db, path));
  sqlite3_busy_timeout(db, 5000);
  // journal_mode answers with a row; a corrupt or foreign file fails here.
  CAIRN_RETURN_IF_ERROR_CTX(s->Exec("PRAGMA journal_mode=WAL"), "not a usable SQLite database");
  CAIRN_RETURN_IF_ERROR(s->Exec("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"));
  CAIRN_RETURN_IF_ERROR(s->Migrate());
  return s;
}

StateStore::~StateStore() { sqlite3_close(db_); }

Status StateStore::Migrate() {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("PRAGMA user_version"));
  CAIRN_ASSIGN_OR_RETURN(bool row, q.Step());
  const int64_t version = row ? q.Int(0) : 0;
  if (version == kSchemaVersion) return OkStatus();
  if (version > kSchemaVersion) {
    return MakeError(Code::kFailedPrecondition,
                     "{}: state schema version {} is newer than this cairnd understands ({}); "
                     "run a newer cairnd",
                     path_, version, kSchemaVersion);
  }
  if (version == 0) {
    // An empty database, or a SQLite file that is not ours.
    CAIRN_ASSIGN_OR_RETURN(auto t, Prepare("SELECT count(*) FROM sqlite_master"));
    CAIRN_ASSIGN_OR_RETURN(bool trow, t.Step());
    if (trow && t.Int(0) > 0) {
      return MakeError(Code::kFailedPrecondition,
                       "{}: an SQLite database that is not a cairn state database", path_);
    }
  }
  if (version == 0) {
    CAIRN_RETURN_IF_ERROR(InTransaction([&]() -> Status {
    return Exec(R"sql(
      CREATE TABLE jobs(
        id TEXT PRIMARY KEY, seq INTEGER UNIQUE NOT NULL, spec BLOB NOT NULL,
        state INTEGER NOT NULL, restarts INTEGER NOT NULL DEFAULT 0,
        submitted_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        message TEXT NOT NULL DEFAULT '', ckpt_head TEXT NOT NULL DEFAULT '',
        ckpt_step INTEGER NOT NULL DEFAULT 0);
      CREATE TABLE runs(
        job_id TEXT NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,
        state INTEGER NOT NULL, started_ms INTEGER NOT NULL, finished_ms INTEGER NOT NULL DEFAULT 0,
        resumed_from_manifest TEXT NOT NULL DEFAULT '', resumed_from_step INTEGER NOT NULL DEFAULT 0,
        failure TEXT NOT NULL DEFAULT '', placement BLOB NOT NULL,
        PRIMARY KEY(job_id, attempt));
      CREATE TABLE nodes(
        id TEXT PRIMARY KEY, resources BLOB NOT NULL, address TEXT NOT NULL,
        last_seen_ms INTEGER NOT NULL, quarantined INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0);
      CREATE TABLE events(
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL, message TEXT NOT NULL);
      CREATE INDEX events_by_job ON events(job_id, id);
      CREATE TABLE replies(
        client_id TEXT NOT NULL, request_id INTEGER NOT NULL, method TEXT NOT NULL,
        reply BLOB NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY(client_id, request_id));
      PRAGMA user_version = 1;
    )sql");
    }));
  }
  // Version 2: provenance (records per attempt, submitted code, attestations, what each
  // attempt actually resumed from).
  if (version < 2) {
    CAIRN_RETURN_IF_ERROR(InTransaction([&]() -> Status {
    return Exec(R"sql(
      CREATE TABLE provenance(
        job_id TEXT NOT NULL REFERENCES jobs(id), attempt INTEGER NOT NULL,
        digest TEXT NOT NULL, record BLOB NOT NULL, PRIMARY KEY(job_id, attempt));
      CREATE TABLE job_code(job_id TEXT PRIMARY KEY REFERENCES jobs(id), code BLOB NOT NULL);
      CREATE TABLE attestations(
        id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL, step INTEGER NOT NULL, subject TEXT NOT NULL,
        name TEXT NOT NULL, path TEXT NOT NULL, at_ms INTEGER NOT NULL,
        ckpt_dir TEXT NOT NULL DEFAULT '',
        UNIQUE(job_id, subject, name));
      CREATE TABLE job_links(
        job_id TEXT NOT NULL REFERENCES jobs(id), parent_job TEXT NOT NULL,
        via TEXT NOT NULL, PRIMARY KEY(job_id, parent_job, via));
      ALTER TABLE runs ADD COLUMN resumed_loaded TEXT NOT NULL DEFAULT '';
      ALTER TABLE runs ADD COLUMN executor_id TEXT NOT NULL DEFAULT '';
      PRAGMA user_version = 2;
    )sql");
    }));
  }
  // Version 3: each attempt's last reported step; when a node's quarantine ends (a node
  // quarantined under version 2 keeps the quarantine it was given: no time limit).
  return InTransaction([&]() -> Status {
    return Exec(R"sql(
      ALTER TABLE runs ADD COLUMN last_step INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE nodes ADD COLUMN quarantined_until_ms INTEGER NOT NULL DEFAULT 0;
      PRAGMA user_version = 3;
    )sql");
  });
}

Status StateStore::InTransaction(const std::function<Status()>& body) {
  if (tx_depth_ > 0) {
    // Nested (inside another transaction or an open group): a savepoint, so a failing body
    // undoes only its own writes.
    const std::string name = fmt::format("sp{}", tx_depth_);
    CAIRN_RETURN_IF_ERROR(Exec(("SAVEPOINT " + name).c_str()));
    ++tx_depth_;
    Status st = body();
    --tx_depth_;
    if (!st) {
      (void)Exec(("ROLLBACK TO " + name).c_str());
      (void)Exec(("RELEASE " + name).c_str());
      return st;
    }
    return Exec(("RELEASE " + name).c_str());
  }
  CAIRN_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  ++tx_depth_;
  Status st = body();
  --tx_depth_;
  if (!st) {
    (void)Exec("ROLLBACK");
    return st;
  }
  if (auto c = Exec("COMMIT"); !c) {
    (void)Exec("ROLLBACK");
    return c;
  }
  return OkStatus();
}

Status StateStore::BeginGroup() {
  if (group_open_) return OkStatus();
  if (tx_depth_ > 0) {
    return MakeError(Code::kInternal, "{}: group opened inside a transaction", path_);
  }
  CAIRN_RETURN_IF_ERROR(WithContext(Exec("BEGIN IMMEDIATE"), path_ + ": begin group"));
  group_open_ = true;
  tx_depth_ = 1;
  return OkStatus();
}

Status StateStore::CommitGroup() {
  if (!group_open_) return OkStatus();
  group_open_ = false;
  tx_depth_ = 0;
  if (auto c = Exec("COMMIT"); !c) {
    (void)Exec("ROLLBACK");
    return WithContext(std::move(c), path_ + ": commit group");
  }
  return OkStatus();
}

Result<std::optional<std::string>> StateStore::FindReply(const std::string& client_id,
                                                         uint64_t request_id,
                                                         const std::string& method) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT method, reply FROM replies WHERE client_id=?1 "
                                         "AND request_id=?2"));
  q.Bind(1, client_id).Bind(2, static_cast<int64_t>(request_id));
  CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
  if (!row) return std::optional<std::string>();
  if (q.Text(0) != method) {
    return MakeError(Code::kInvalidArgument,
                     "request id {} of client {} was already used for {}, not {}", request_id,
                     client_id, q.Text(0), method);
  }
  return std::optional<std::string>(q.Text(1));
}

Status StateStore::SaveReply(const std::string& client_id, uint64_t request_id,
                             const std::string& method, const std::string& reply, int64_t now_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT INTO replies(client_id, request_id, method, "
                                         "reply, at_ms) VALUES(?1, ?2, ?3, ?4, ?5)"));
  q.Bind(1, client_id).Bind(2, static_cast<int64_t>(request_id)).Bind(3, method);
  q.BindBlob(4, reply).Bind(5, now_ms);
  return WithContext(q.Run(), path_ + ": save reply");
}

Status StateStore::PruneReplies(int64_t cutoff_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("DELETE FROM replies WHERE at_ms < ?1"));
  q.Bind(1, cutoff_ms);
  return WithContext(q.Run(), path_);
}

Result<std::string> StateStore::CreateJob(const proto::JobSpec& spec, int64_t now_ms) {
  std::string id;
  CAIRN_RETURN_IF_ERROR(InTransaction([&]() -> Status {
    CAIRN_ASSIGN_OR_RETURN(auto m, Prepare("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs"));
    CAIRN_ASSIGN_OR_RETURN(bool row, m.Step());
    const int64_t seq = row ? m.Int(0) : 1;
    id = fmt::format("job-{:06d}", seq);
    CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT INTO jobs(id, seq, spec, state, submitted_ms, "
                                           "updated_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?5)"));
    q.Bind(1, id).Bind(2, seq).BindBlob(3, spec.SerializeAsString());
    q.Bind(4, static_cast<int64_t>(proto::JOB_PENDING)).Bind(5, now_ms);
    return WithContext(q.Run(), path_ + ": insert job");
  }));
  return id;
}

namespace {
Status ExpectChanged(sqlite3* db, const std::string& what) {
  if (sqlite3_changes(db) == 0) return MakeError(Code::kNotFound, "no {}", what);
  return OkStatus();
}
}  // namespace

Status StateStore::SetJobState(const std::string& job_id, proto::JobState state,
                               const std::string& message, int64_t now_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE jobs SET state=?2, message=?3, updated_ms=?4 "
                                         "WHERE id=?1"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(state)).Bind(3, message).Bind(4, now_ms);
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, "job " + job_id);
}

Status StateStore::AddRestart(const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE jobs SET restarts=restarts+1 WHERE id=?1"));
  q.Bind(1, job_id);
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, "job " + job_id);
}

Status StateStore::SetRestarts(const std::string& job_id, uint32_t restarts) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE jobs SET restarts=?2 WHERE id=?1"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(restarts));
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, "job " + job_id);
}

Status StateStore::SetCheckpointHead(const std::string& job_id, uint64_t step,
                                     const std::string& digest_hex) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE jobs SET ckpt_step=?2, ckpt_head=?3 WHERE id=?1"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(step)).Bind(3, digest_hex);
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, "job " + job_id);
}

Result<proto::JobStatus> StateStore::GetJob(const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT id, spec, state, restarts, submitted_ms, "
                                         "ckpt_head, ckpt_step, message FROM jobs WHERE id=?1"));
  q.Bind(1, job_id);
  CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
  if (!row) return MakeError(Code::kNotFound, "no job {}", job_id);
  proto::JobStatus js;
  js.set_job_id(q.Text(0));
  if (!js.mutable_spec()->ParseFromString(q.Text(1))) {
    return MakeError(Code::kDataLoss, "{}: job {}: stored spec does not parse", path_, job_id);
  }
  js.set_state(static_cast<proto::JobState>(q.Int(2)));
  js.set_restarts(static_cast<uint32_t>(q.Int(3)));
  js.set_submitted_unix_ms(q.Int(4));
  js.set_checkpoint_head(q.Text(5));
  js.set_checkpoint_step(static_cast<uint64_t>(q.Int(6)));
  js.set_message(q.Text(7));
  CAIRN_ASSIGN_OR_RETURN(auto r, Prepare("SELECT attempt, state, started_ms, finished_ms, "
                                         "resumed_from_manifest, resumed_from_step, failure, "
                                         "executor_id, placement, last_step FROM runs WHERE "
                                         "job_id=?1 ORDER BY attempt"));
  r.Bind(1, job_id);
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool more, WithContext(r.Step(), path_));
    if (!more) break;
    auto* run = js.add_runs();
    run->set_run_id(fmt::format("{}.{}", job_id, r.Int(0)));
    run->set_attempt(static_cast<uint32_t>(r.Int(0)));
    run->set_state(static_cast<proto::RunState>(r.Int(1)));
    run->set_started_unix_ms(r.Int(2));
    run->set_finished_unix_ms(r.Int(3));
    run->set_resumed_from_manifest(r.Text(4));
    run->set_resumed_from_step(static_cast<uint64_t>(r.Int(5)));
    run->set_failure(r.Text(6));
    run->set_executor_job_id(r.Text(7));
    run->set_last_step(static_cast<uint64_t>(r.Int(9)));
    // Where the attempt ran: its gang's nodes in rank order (from the placement it began with).
    proto::PlacementRecord placement;
    if (placement.ParseFromString(r.Text(8))) {
      for (const auto& rp : placement.ranks()) {
        if (std::find(run->nodes().begin(), run->nodes().end(), rp.node_id()) == run->nodes().end()) {
          run->add_nodes(rp.node_id());
        }
      }
    }
    if (run->state() == proto::RUN_PREEMPTED) js.set_preemptions(js.preemptions() + 1);
  }
  // Where the job got to; the job manager puts a live attempt's progress over it.
  if (js.runs_size() > 0) js.set_step(js.runs(js.runs_size() - 1).last_step());
  return js;
}

Result<std::vector<proto::JobStatus>> StateStore::ListJobs(bool include_finished) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT id, state FROM jobs ORDER BY seq"));
  std::vector<std::string> ids;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    const auto st = static_cast<proto::JobState>(q.Int(1));
    const bool finished = st == proto::JOB_SUCCEEDED || st == proto::JOB_FAILED ||
                          st == proto::JOB_CANCELLED;
    if (include_finished || !finished) ids.push_back(q.Text(0));
  }
  std::vector<proto::JobStatus> out;
  for (const auto& id : ids) {
    CAIRN_ASSIGN_OR_RETURN(auto js, GetJob(id));
    out.push_back(std::move(js));
  }
  return out;
}

Result<uint32_t> StateStore::BeginRun(const std::string& job_id, const std::string& placement,
                                      const std::string& resumed_from_manifest,
                                      uint64_t resumed_from_step, int64_t now_ms) {
  uint32_t attempt = 0;
  CAIRN_RETURN_IF_ERROR(InTransaction([&]() -> Status {
    CAIRN_ASSIGN_OR_RETURN(auto m, Prepare("SELECT COALESCE(MAX(attempt), 0) + 1 FROM runs "
                                           "WHERE job_id=?1"));
    m.Bind(1, job_id);
    CAIRN_ASSIGN_OR_RETURN(bool row, m.Step());
    attempt = static_cast<uint32_t>(row ? m.Int(0) : 1);
    CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT INTO runs(job_id, attempt, state, started_ms, "
                                           "resumed_from_manifest, resumed_from_step, placement) "
                                           "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"));
    q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt));
    q.Bind(3, static_cast<int64_t>(proto::RUN_STARTING)).Bind(4, now_ms);
    q.Bind(5, resumed_from_manifest).Bind(6, static_cast<int64_t>(resumed_from_step));
    q.BindBlob(7, placement);
    return WithContext(q.Run(), fmt::format("{}: begin run of {}", path_, job_id));
  }));
  return attempt;
}

Status StateStore::FinishRun(const std::string& job_id, uint32_t attempt, proto::RunState state,
                             const std::string& failure, uint64_t last_step, int64_t now_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE runs SET state=?3, failure=?4, finished_ms=?5, "
                                         "last_step=?6 WHERE job_id=?1 AND attempt=?2"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt)).Bind(3, static_cast<int64_t>(state));
  q.Bind(4, failure).Bind(5, now_ms).Bind(6, static_cast<int64_t>(last_step));
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, fmt::format("run {} of job {}", attempt, job_id));
}

Status StateStore::SetRunState(const std::string& job_id, uint32_t attempt,
                               proto::RunState state) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE runs SET state=?3 WHERE job_id=?1 AND attempt=?2"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt)).Bind(3, static_cast<int64_t>(state));
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, fmt::format("run {} of job {}", attempt, job_id));
}

Result<std::string> StateStore::RunPlacement(const std::string& job_id, uint32_t attempt) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT placement FROM runs WHERE job_id=?1 AND "
                                         "attempt=?2"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt));
  CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
  if (!row) return MakeError(Code::kNotFound, "no run {} of job {}", attempt, job_id);
  return q.Text(0);
}

Status StateStore::UpsertNode(const NodeRecord& n) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare(
      "INSERT INTO nodes(id, resources, address, last_seen_ms, quarantined, failures, "
      "quarantined_until_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(id) DO UPDATE SET "
      "resources=excluded.resources, address=excluded.address, "
      "last_seen_ms=excluded.last_seen_ms"));
  q.Bind(1, n.id).BindBlob(2, n.resources.SerializeAsString()).Bind(3, n.address);
  q.Bind(4, n.last_seen_ms).Bind(5, int64_t{n.quarantined ? 1 : 0});
  q.Bind(6, static_cast<int64_t>(n.failures)).Bind(7, n.quarantined ? n.quarantined_until_ms : 0);
  return WithContext(q.Run(), path_ + ": upsert node " + n.id);
}

Status StateStore::TouchNode(const std::string& id, int64_t now_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE nodes SET last_seen_ms=?2 WHERE id=?1"));
  q.Bind(1, id).Bind(2, now_ms);
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, "node " + id);
}

Status StateStore::SetNodeHealth(const std::string& id, bool quarantined, uint32_t failures,
                                 int64_t quarantined_until_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE nodes SET quarantined=?2, failures=?3, "
                                         "quarantined_until_ms=?4 WHERE id=?1"));
  q.Bind(1, id).Bind(2, int64_t{quarantined ? 1 : 0}).Bind(3, static_cast<int64_t>(failures));
  q.Bind(4, quarantined ? quarantined_until_ms : int64_t{0});
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_));
  return ExpectChanged(db_, "node " + id);
}

Result<std::vector<NodeRecord>> StateStore::ListNodes() {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT id, resources, address, last_seen_ms, "
                                         "quarantined, failures, quarantined_until_ms FROM "
                                         "nodes ORDER BY id"));
  std::vector<NodeRecord> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    NodeRecord n;
    n.id = q.Text(0);
    if (!n.resources.ParseFromString(q.Text(1))) {
      return MakeError(Code::kDataLoss, "{}: node {}: stored resources do not parse", path_, n.id);
    }
    n.address = q.Text(2);
    n.last_seen_ms = q.Int(3);
    n.quarantined = q.Int(4) != 0;
    n.failures = static_cast<uint32_t>(q.Int(5));
    n.quarantined_until_ms = q.Int(6);
    out.push_back(std::move(n));
  }
  return out;
}

Status StateStore::AppendEvent(const std::string& job_id, const std::string& kind,
                               const std::string& message, int64_t now_ms) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT INTO events(job_id, at_ms, kind, message) "
                                         "VALUES(?1, ?2, ?3, ?4)"));
  q.Bind(1, job_id).Bind(2, now_ms).Bind(3, kind).Bind(4, message);
  return WithContext(q.Run(), path_ + ": append event");
}

Result<std::vector<EventRecord>> StateStore::Events(const std::string& job_id, int64_t after_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT id, job_id, at_ms, kind, message FROM events "
                                         "WHERE job_id=?1 AND id>?2 ORDER BY id LIMIT 10000"));
  q.Bind(1, job_id).Bind(2, after_id);
  std::vector<EventRecord> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    out.push_back({q.Int(0), q.Text(1), q.Int(2), q.Text(3), q.Text(4)});
  }
  return out;
}

// ---- provenance -----------------------------------------------------------------

Status StateStore::SaveJobCode(const std::string& job_id, const std::string& code) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT OR REPLACE INTO job_code(job_id, code) "
                                         "VALUES(?1, ?2)"));
  q.Bind(1, job_id).BindBlob(2, code);
  return WithContext(q.Run(), path_ + ": save code version");
}

Result<std::optional<std::string>> StateStore::JobCode(const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT code FROM job_code WHERE job_id=?1"));
  q.Bind(1, job_id);
  CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(q.Text(0));
}

Status StateStore::SaveProvenance(const std::string& job_id, uint32_t attempt,
                                  const std::string& digest_hex, const std::string& record) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT OR REPLACE INTO provenance(job_id, attempt, "
                                         "digest, record) VALUES(?1, ?2, ?3, ?4)"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt)).Bind(3, digest_hex).BindBlob(4, record);
  return WithContext(q.Run(), path_ + ": save provenance");
}

Result<std::vector<ProvenanceRow>> StateStore::Provenance(const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare(
      "SELECT p.attempt, p.digest, p.record, COALESCE(r.resumed_loaded, '') FROM provenance p "
      "LEFT JOIN runs r ON r.job_id = p.job_id AND r.attempt = p.attempt "
      "WHERE p.job_id=?1 ORDER BY p.attempt"));
  q.Bind(1, job_id);
  std::vector<ProvenanceRow> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    ProvenanceRow r;
    r.attempt = static_cast<uint32_t>(q.Int(0));
    r.digest_hex = q.Text(1);
    r.record = q.Text(2);
    r.resumed_loaded = q.Text(3);
    out.push_back(std::move(r));
  }
  return out;
}

Status StateStore::SetRunExecutorId(const std::string& job_id, uint32_t attempt,
                                    const std::string& id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE runs SET executor_id=?3 WHERE job_id=?1 AND "
                                         "attempt=?2"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt)).Bind(3, id);
  return WithContext(q.Run(), path_);
}

Status StateStore::SetResumedLoaded(const std::string& job_id, uint32_t attempt,
                                    const std::string& manifest_hex) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("UPDATE runs SET resumed_loaded=?3 WHERE job_id=?1 AND "
                                         "attempt=?2"));
  q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt)).Bind(3, manifest_hex);
  return WithContext(q.Run(), path_);
}

Result<bool> StateStore::AddAttestation(const AttestationRow& a) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare(
      "INSERT OR IGNORE INTO attestations(job_id, attempt, step, subject, name, path, at_ms, "
      "ckpt_dir) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"));
  q.Bind(1, a.job_id).Bind(2, static_cast<int64_t>(a.attempt)).Bind(3, static_cast<int64_t>(a.step));
  q.Bind(4, a.subject_hex).Bind(5, a.name).Bind(6, a.path).Bind(7, a.at_ms).Bind(8, a.ckpt_dir);
  CAIRN_RETURN_IF_ERROR(WithContext(q.Run(), path_ + ": record attestation"));
  return sqlite3_changes(db_) > 0;
}

Result<std::vector<AttestationRow>> StateStore::Attestations(const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT job_id, attempt, step, subject, name, path, "
                                         "at_ms, ckpt_dir FROM attestations WHERE job_id=?1 "
                                         "ORDER BY id"));
  q.Bind(1, job_id);
  std::vector<AttestationRow> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    AttestationRow a;
    a.job_id = q.Text(0);
    a.attempt = static_cast<uint32_t>(q.Int(1));
    a.step = static_cast<uint64_t>(q.Int(2));
    a.subject_hex = q.Text(3);
    a.name = q.Text(4);
    a.path = q.Text(5);
    a.at_ms = q.Int(6);
    a.ckpt_dir = q.Text(7);
    out.push_back(std::move(a));
  }
  return out;
}

Result<std::vector<std::pair<std::string, std::string>>> StateStore::CheckpointDirs() {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT DISTINCT job_id, ckpt_dir FROM attestations "
                                         "WHERE ckpt_dir != '' ORDER BY job_id"));
  std::vector<std::pair<std::string, std::string>> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    out.emplace_back(q.Text(0), q.Text(1));
  }
  return out;
}

Result<std::vector<std::string>> StateStore::JobsWithSubject(const std::string& subject_hex) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT DISTINCT job_id FROM attestations WHERE "
                                         "subject=?1 ORDER BY job_id"));
  q.Bind(1, subject_hex);
  std::vector<std::string> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    out.push_back(q.Text(0));
  }
  return out;
}

Status StateStore::AddLink(const std::string& job_id, const std::string& parent_job,
                           const std::string& via) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("INSERT OR IGNORE INTO job_links(job_id, parent_job, "
                                         "via) VALUES(?1, ?2, ?3)"));
  q.Bind(1, job_id).Bind(2, parent_job).Bind(3, via);
  return WithContext(q.Run(), path_ + ": link jobs");
}

Result<std::vector<std::pair<std::string, std::string>>> StateStore::Links(
    const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto q, Prepare("SELECT parent_job, via FROM job_links WHERE job_id=?1 "
                                         "ORDER BY parent_job, via"));
  q.Bind(1, job_id);
  std::vector<std::pair<std::string, std::string>> out;
  for (;;) {
    CAIRN_ASSIGN_OR_RETURN(bool row, WithContext(q.Step(), path_));
    if (!row) break;
    out.emplace_back(q.Text(0), q.Text(1));
  }
  return out;
}

}  // namespace cairn::coord
