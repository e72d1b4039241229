-- Conveyor's SQLite schema, as an ordered list of migrations.
--
-- Each migration starts with a line `-- migration: N` (N = 1, 2, 3, ... in order). A file's
-- `PRAGMA user_version` is the last migration applied; on open, the backend applies every
-- later one inside one `BEGIN IMMEDIATE` transaction, so that many processes opening the same
-- file at once migrate it exactly once. Never edit a released migration: append a new one.
-- Statements are separated by a `;` at the end of a line.
--
-- Times are epoch seconds (REAL). JSON columns hold compact JSON text.

-- migration: 1
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,      -- UUIDv7: sorts by creation
    task             TEXT NOT NULL,
    queue            TEXT NOT NULL,
    status           TEXT NOT NULL,
    args             TEXT NOT NULL,         -- JSON array
    kwargs           TEXT NOT NULL,         -- JSON object
    priority         INTEGER NOT NULL,      -- 0..9, 9 first
    progress         TEXT,                  -- JSON object or NULL
    result           TEXT,                  -- JSON or NULL
    error            TEXT,                  -- JSON object or NULL
    attempt          INTEGER NOT NULL,
    max_retries      INTEGER NOT NULL,
    timeout          REAL,
    depends_on       TEXT NOT NULL,         -- JSON array of parent ids, as submitted (see job_deps)
    idempotency_key  TEXT,
    metadata         TEXT NOT NULL,         -- JSON object
    webhook          TEXT,
    created_at       REAL NOT NULL,
    scheduled_at     REAL,
    started_at       REAL,
    finished_at      REAL,
    updated_at       REAL NOT NULL,
    ready_at         REAL,                  -- while claimable: since when (FIFO order, retention)
    deliveries       INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    revision         INTEGER NOT NULL DEFAULT 1,   -- bumped on every visible change (ETag, SSE id)
    worker_id        TEXT,                  -- the lease: holder, fencing token, end
    lease_token      TEXT,
    lease_expires_at REAL,
    webhook_state    TEXT,                  -- NULL, 'pending', 'delivered', 'gave_up' (the outbox)
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_next_at  REAL
);

-- Partial indexes test `col IS NOT NULL`, which costs nothing per write (an `IN (...)` test
-- costs more than the index itself). Hence these invariants, kept by every statement:
--   ready_at         IS NOT NULL  <=>  status IN ('queued', 'scheduled', 'retrying')
--   lease_expires_at IS NOT NULL  <=>  status = 'running'
--   finished_at      IS NOT NULL  <=>  status IN ('succeeded', 'failed', 'cancelled', 'expired')
--   webhook_next_at  IS NOT NULL  <=>  webhook_state = 'pending'

-- A change of status touches only the indexes below whose rows it enters or leaves: the hot
-- path (queued → running → succeeded) enters and leaves jobs_ready, jobs_lease and
-- jobs_finished once each, and never jobs_cold.

-- claim (per queue: 9→0, then oldest ready first), retention, the next due time; counts
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, ready_at, id, status) WHERE ready_at IS NOT NULL;
-- sweep: expired leases; running jobs
CREATE INDEX jobs_lease ON jobs (lease_expires_at, queue) WHERE lease_expires_at IS NOT NULL;
-- sweep: result_ttl; counts
CREATE INDEX jobs_finished ON jobs (queue, finished_at) WHERE finished_at IS NOT NULL;
-- listing and counting the statuses off the hot path (dead letters among them)
CREATE INDEX jobs_cold ON jobs (queue, status, id) WHERE status NOT IN ('queued', 'running', 'succeeded');
-- the webhook outbox
CREATE INDEX jobs_webhook_due ON jobs (webhook_next_at) WHERE webhook_next_at IS NOT NULL;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- listing by task
CREATE INDEX jobs_task ON jobs (task, id);

-- the dependency graph: child runs after every parent succeeded
CREATE TABLE job_deps (
    child  TEXT NOT NULL,
    parent TEXT NOT NULL,
    PRIMARY KEY (child, parent)
) WITHOUT ROWID;
CREATE INDEX job_deps_parent ON job_deps (parent, child);

CREATE TABLE queues (
    name               TEXT PRIMARY KEY,
    retention          REAL NOT NULL,
    visibility_timeout REAL NOT NULL,
    max_deliveries     INTEGER NOT NULL,
    result_ttl         REAL NOT NULL,
    paused             INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE workers (
    id             TEXT PRIMARY KEY,
    host           TEXT NOT NULL,
    pid            INTEGER NOT NULL,
    queues         TEXT NOT NULL,           -- JSON array
    concurrency    INTEGER NOT NULL,
    running        TEXT NOT NULL,           -- JSON array of job ids
    started_at     REAL NOT NULL,
    last_heartbeat REAL NOT NULL
);
CREATE INDEX workers_heartbeat ON workers (last_heartbeat);

-- migration: 2
-- Global limits and the job timeline. A limited job carries its resolved key and limits (at
-- most concurrency_limit running, at most rate_count starts per rate_per seconds); the running
-- jobs of a key are counted through jobs_limit_running (so every way a job stops running frees
-- its slot), its recent starts in limit_starts (a sliding log, pruned by the sweep once `until`
-- has passed). attempts is the timeline: a JSON array of the last 50 deliveries.
ALTER TABLE jobs ADD COLUMN limit_key TEXT;
ALTER TABLE jobs ADD COLUMN concurrency_limit INTEGER;
ALTER TABLE jobs ADD COLUMN rate_count INTEGER;
ALTER TABLE jobs ADD COLUMN rate_per REAL;
ALTER TABLE jobs ADD COLUMN attempts TEXT;
CREATE INDEX jobs_limit_running ON jobs (limit_key) WHERE limit_key IS NOT NULL AND lease_expires_at IS NOT NULL;
CREATE INDEX jobs_limit_ready ON jobs (queue) WHERE limit_key IS NOT NULL AND ready_at IS NOT NULL;
CREATE TABLE limit_starts (
    key   TEXT NOT NULL,
    at    REAL NOT NULL,
    until REAL NOT NULL
);
CREATE INDEX limit_starts_key ON limit_starts (key, at);
CREATE INDEX limit_starts_until ON limit_starts (until);

-- migration: 3
-- A job put back without an outcome (its worker died, or handed it back at a stop) keeps its
-- place in line, as on Redis. ready_at is NULL while a job runs, so a claim keeps it in
-- claimed_ready_at and a put-back restores it; put_back_at (when it went back) restarts the
-- retention clock, which counts from the later of ready_at and put_back_at. Every other way
-- into the line sets ready_at at or after its own time, so a put_back_at left from an earlier
-- delivery is never the later one.
ALTER TABLE jobs ADD COLUMN claimed_ready_at REAL;
ALTER TABLE jobs ADD COLUMN put_back_at REAL;
