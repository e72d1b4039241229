"""The SQL text of the engine: one named constant (or builder) per statement or shared clause.

Each statement is one fixed text, so that sqlite3's statement cache prepares it once per
connection: the constants are built here at import, the builders (``claim_sql``,
``candidates_sql``) give one text per number of queues, a shared clause gets its placeholder
numbers (``?1``, ``?2``, ...) through ``str.format``, and a list of ids travels as one JSON
parameter (``IDS``). The tables and indexes named here are those of ``schema.sql``.
"""

from __future__ import annotations

from conveyor.core.queues import QueueSettings

_DEFAULTS = QueueSettings()

_PENDING_SQL = "('waiting', 'scheduled', 'queued', 'retrying')"

#: The columns that make a ``Job``, in the order ``job_from_row()`` reads them.
COLS = ("id, task, queue, status, args, kwargs, priority, progress, result, error, attempt, "
        "max_retries, timeout, depends_on, idempotency_key, metadata, webhook, created_at, "
        "scheduled_at, started_at, finished_at, updated_at, deliveries, cancel_requested, revision, "
        "worker_id, lease_token, lease_expires_at, limit_key, concurrency_limit, rate_count, rate_per, attempts")
NCOLS = COLS.count(",") + 1

#: A job id list passed as one JSON array parameter.
IDS = "(SELECT value FROM json_each(?{n}))"

#: The lease a claim or heartbeat hands out: the queue's visibility timeout from ``now``.
_LEASE_END = (f"?{{now}} + COALESCE((SELECT q.visibility_timeout FROM queues q WHERE q.name = jobs.queue), "
              f"{_DEFAULTS.visibility_timeout})")

#: SET clause of every change that makes a job terminal at ``?{now}``: the lease ends, the
#: outbox gets a pending delivery when the job has a webhook.
TERMINAL_SET = (
    "finished_at = ?{now}, updated_at = ?{now}, revision = revision + 1, ready_at = NULL, "
    "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, "
    "webhook_state = CASE WHEN webhook IS NULL THEN webhook_state ELSE 'pending' END, "
    "webhook_next_at = CASE WHEN webhook IS NULL THEN webhook_next_at ELSE ?{now} END, "
    "webhook_attempts = CASE WHEN webhook IS NULL THEN webhook_attempts ELSE 0 END"
)

INSERT = (
    "INSERT INTO jobs (id, task, queue, status, args, kwargs, priority, progress, result, error, attempt, "
    "max_retries, timeout, depends_on, idempotency_key, metadata, webhook, created_at, scheduled_at, "
    "finished_at, updated_at, ready_at, revision, webhook_state, webhook_next_at, limit_key, concurrency_limit, "
    "rate_count, rate_per) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)"
)

#: The timeline entry of the delivery that ends: its end ``?{now}``, label ``?{st}``, error ``?{err}``.
END_ATTEMPT = (
    "attempts = CASE WHEN json_extract(attempts, '$[#-1].status') = 'running' THEN json_set(attempts, "
    "'$[#-1].finished_at', ?{now}, '$[#-1].status', ?{st}, '$[#-1].error', json(?{err})) ELSE attempts END"
)
#: A new timeline entry for a delivery to worker ``?2`` starting at ``?1`` (the last 50 kept).
_NEW_ATTEMPT = (
    "attempts = (SELECT CASE WHEN json_array_length(a) > 50 THEN json_remove(a, '$[0]') ELSE a END FROM "
    "(SELECT json_insert(coalesce(attempts, '[]'), '$[#]', json_object('attempt', attempt, 'worker_id', ?2, "
    "'started_at', ?1, 'finished_at', NULL, 'status', 'running', 'error', NULL)) AS a))"
)
#: The SET clause of a claim at ``?1`` by worker ``?2`` (its place in line kept for a put-back).
_LEASE_SET = (
    f"status = 'running', lease_token = {{token}}, worker_id = ?2, ready_at = NULL, claimed_ready_at = ready_at, "
    f"lease_expires_at = {_LEASE_END.format(now=1)}, started_at = ?1, updated_at = ?1, "
    f"deliveries = deliveries + 1, revision = revision + 1, {_NEW_ATTEMPT}"
)
INSERT_DEP = "INSERT OR IGNORE INTO job_deps (child, parent) VALUES (?, ?)"

FINISH = (
    "UPDATE jobs SET status = ?1, "
    "result = CASE ?1 WHEN 'succeeded' THEN ?2 WHEN 'queued' THEN result ELSE NULL END, "
    "error = CASE ?1 WHEN 'succeeded' THEN NULL WHEN 'queued' THEN error ELSE ?3 END, "  # lost: in the timeline
    "attempt = coalesce(?4, attempt), "
    "scheduled_at = CASE ?1 WHEN 'retrying' THEN ?5 ELSE scheduled_at END, "
    "ready_at = CASE ?1 WHEN 'retrying' THEN ?5 WHEN 'queued' THEN coalesce(claimed_ready_at, ?7) ELSE ready_at END, "
    "put_back_at = CASE ?1 WHEN 'queued' THEN ?7 ELSE put_back_at END, "
    "deliveries = max(deliveries - ?6, 0), "
    "finished_at = NULL, updated_at = ?7, revision = revision + 1, "
    "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, "
    + END_ATTEMPT.format(now=7, st=9, err=10) + " WHERE id = ?8"
)
FINISH_TERMINAL = (
    "UPDATE jobs SET status = ?1, result = ?2, error = ?3, attempt = coalesce(?4, attempt), "
    + TERMINAL_SET.format(now=7) + ", " + END_ATTEMPT.format(now=7, st=9, err=10) + " WHERE id = ?8"
)

#: Waiting children of ``?2`` whose parents all succeeded become ready.
RELEASE = (
    "UPDATE jobs SET status = CASE WHEN scheduled_at > ?1 THEN 'scheduled' ELSE 'queued' END, "
    "ready_at = max(?1, coalesce(scheduled_at, ?1)), updated_at = ?1, revision = revision + 1 "
    f"WHERE id IN (SELECT child FROM job_deps WHERE parent IN {IDS.format(n=2)}) "
    "AND status = 'waiting' AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent "
    "WHERE d.child = jobs.id AND p.status <> 'succeeded')"
)

#: Pending children of ``?2`` (which ended badly) are cancelled, each naming its parent.
CASCADE = (
    "UPDATE jobs SET status = 'cancelled', "
    "error = json_object('type', 'DependencyFailed', 'message', 'parent ' || d.parent || ' ended ' || d.ended), "
    + TERMINAL_SET.format(now=1)
    + " FROM (SELECT dd.child AS child, min(dd.parent) AS parent, p.status AS ended "
    f"FROM job_deps dd JOIN jobs p ON p.id = dd.parent WHERE dd.parent IN {IDS.format(n=2)} "
    f"GROUP BY dd.child) AS d WHERE jobs.id = d.child AND jobs.status IN {_PENDING_SQL} RETURNING jobs.id"
)

HEARTBEAT_WORKER = (
    "INSERT INTO workers (id, host, pid, queues, concurrency, running, started_at, last_heartbeat) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
    "queues = excluded.queues, concurrency = excluded.concurrency, running = excluded.running, "
    "last_heartbeat = excluded.last_heartbeat"
)
EXTEND = f"UPDATE jobs SET lease_expires_at = {_LEASE_END.format(now=1)} WHERE id IN {IDS.format(n=2)}"

#: A retry or redrive at ``?1``: ``{status}`` is 'queued', or 'waiting' (``{ready_at}`` NULL) for a
#: job with a pending parent.
REQUEUE_SET = (
    "status = {status}, attempt = 1, deliveries = 0, error = NULL, result = NULL, progress = NULL, "
    "scheduled_at = NULL, started_at = NULL, finished_at = NULL, cancel_requested = 0, ready_at = {ready_at}, "
    "worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, webhook_state = NULL, "
    "webhook_attempts = 0, webhook_next_at = NULL, updated_at = ?1, revision = revision + 1"
)

SETTINGS_COLS = "name, retention, visibility_timeout, max_deliveries, result_ttl, paused"

#: The statuses off the hot path, indexed by ``jobs_cold`` (this text must match the index's).
COLD = "status NOT IN ('queued', 'running', 'succeeded')"


def _queue_names(where: str) -> str:
    """The distinct queues of the jobs matching ``where``: one index seek per queue, not a scan."""
    return (
        f"WITH RECURSIVE q(name) AS (SELECT (SELECT min(queue) FROM jobs WHERE {where}) UNION ALL "
        f"SELECT (SELECT min(queue) FROM jobs WHERE {where} AND queue > q.name) FROM q WHERE q.name IS NOT NULL) "
        "SELECT name FROM q WHERE name IS NOT NULL"
    )


READY_QUEUES = _queue_names("ready_at IS NOT NULL")
FINISHED_QUEUES = _queue_names("finished_at IS NOT NULL")
COLD_QUEUES = _queue_names(COLD)
#: Jobs per queue and status, each count from the index that holds that status.
COUNTS = (
    "SELECT queue, 'queued', count(*) FROM jobs WHERE ready_at IS NOT NULL AND status = 'queued' GROUP BY queue "
    "UNION ALL SELECT queue, 'running', count(*) FROM jobs WHERE lease_expires_at IS NOT NULL GROUP BY queue "
    f"UNION ALL SELECT queue, status, count(*) FROM jobs WHERE {COLD} GROUP BY queue, status "
    "UNION ALL SELECT queue, 'finished', count(*) FROM jobs WHERE finished_at IS NOT NULL GROUP BY queue"
)

#: A fresh random UUIDv4 per row, computed by the engine (no Python call per claimed job).
_NEW_TOKEN = (
    "(lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))))"
)

#: The ready jobs of queue ``?{q}`` at priority ``p``, in claim order, ``{cond}`` holding.
_BY_PRIORITY = ("SELECT * FROM (SELECT id, ready_at FROM jobs WHERE queue = ?{q} AND priority = {p} "
                "AND ready_at IS NOT NULL AND {cond} ORDER BY ready_at, id LIMIT ?{limit})")


def _per_priority(q: int, cond: str, limit: int) -> str:
    """One index range per priority 9→0 of one queue (SQLite cannot skip through the index alone)."""
    return " UNION ALL ".join(_BY_PRIORITY.format(q=q, p=p, cond=cond, limit=limit) for p in range(9, -1, -1))


#: Ready jobs of queue ``?2`` that became ready (or were put back) before ``?3``: at most ``?4``.
PAST_RETENTION = ("SELECT id FROM ("
                  f"{_per_priority(2, 'ready_at < ?3 AND (put_back_at IS NULL OR put_back_at < ?3)', 4)}) LIMIT ?4")
#: The earliest time after ``?2`` at which a job of queue ``?1`` becomes ready (none while it is paused).
NEXT_DUE = (f"SELECT min(ready_at) FROM ({_per_priority(1, 'ready_at > ?2', 3)}) "
            "WHERE NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused)")


def claim_sql(n_queues: int) -> str:
    """One statement that leases up to ``?3`` jobs from ``n_queues`` queues (``?4``, ``?5``, ...)."""
    per_queue = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, priority, ready_at FROM jobs WHERE queue = ?{4 + i} "
        "AND ready_at IS NOT NULL AND (status = 'queued' OR ready_at <= ?1) "
        f"AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?{4 + i} AND paused) "
        "ORDER BY priority DESC, ready_at, id LIMIT ?3)"
        for i in range(n_queues)
    )
    return (
        f"UPDATE jobs SET {_LEASE_SET.format(token=_NEW_TOKEN)} "
        f"WHERE id IN (SELECT id FROM ({per_queue}) ORDER BY priority DESC, ready_at, id LIMIT ?3) "
        f"RETURNING {COLS}, claimed_ready_at"
    )


#: Is any limited job ready in the queues of the JSON list ``?1``? (``jobs_limit_ready``)
LIMITED_READY = ("SELECT 1 FROM jobs WHERE queue IN (SELECT value FROM json_each(?1)) "
                 "AND limit_key IS NOT NULL AND ready_at IS NOT NULL LIMIT 1")
#: Lease the ready jobs among the JSON list of ids ``?3``.
CLAIM_IDS = (f"UPDATE jobs SET {_LEASE_SET.format(token=_NEW_TOKEN)} "
             f"WHERE id IN {IDS.format(n=3)} AND ready_at IS NOT NULL RETURNING {COLS}, claimed_ready_at")
RUNNING_OF_KEY = "SELECT count(*) FROM jobs WHERE limit_key = ?1 AND lease_expires_at IS NOT NULL"
STARTS_OF_KEY = "SELECT count(*), min(at) FROM limit_starts WHERE key = ?1 AND at > ?2"


def candidates_sql(n_queues: int) -> str:
    """Up to ``?2`` claimable jobs of queues ``?5``, ... in claim order, with their limits.

    Jobs of the keys in the JSON list ``?3`` (full) and the ids in ``?4`` (picked) are left out.
    """
    per_queue = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, priority, ready_at, limit_key, concurrency_limit, rate_count, rate_per "
        f"FROM jobs WHERE queue = ?{5 + i} AND ready_at IS NOT NULL AND (status = 'queued' OR ready_at <= ?1) "
        f"AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?{5 + i} AND paused) "
        f"AND (limit_key IS NULL OR limit_key NOT IN {IDS.format(n=3)}) AND id NOT IN {IDS.format(n=4)} "
        "ORDER BY priority DESC, ready_at, id LIMIT ?2)"
        for i in range(n_queues)
    )
    return (f"SELECT id, limit_key, concurrency_limit, rate_count, rate_per FROM ({per_queue}) "
            "ORDER BY priority DESC, ready_at, id LIMIT ?2")
