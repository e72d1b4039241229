-- Conveyor's named queries, loaded by name (``-- name: <name>``).
-- Placeholders: __schema__ (the quoted schema), __JOB__ (the Job columns of alias ``j``, in Job's
-- field order). Parameters are psycopg named placeholders. Times are epoch seconds.

-- name: insert_jobs
-- Insert a batch (a JSON array of records); rows whose id or idempotency key exists are skipped.
-- The batch is read as json, not jsonb: json_to_recordset hands the json columns (arguments,
-- metadata, ...) their text as sent, where jsonb would rewrite their numbers (1e16 -> 10000000000000000).
WITH ins AS (
    INSERT INTO __schema__.jobs AS j (
        id, task, queue, status, args, kwargs, priority, progress, result, error, attempt, max_retries,
        timeout, depends_on, idempotency_key, metadata, webhook, created_at, scheduled_at, started_at,
        finished_at, updated_at, deliveries, cancel_requested, revision, ready_at, has_children,
        limit_key, concurrency_limit, rate_limit)
    SELECT r.id, r.task, r.queue, r.status, coalesce(r.args, '[]'), coalesce(r.kwargs, '{}'), r.priority,
           r.progress, r.result, r.error, r.attempt, r.max_retries, r.timeout, coalesce(r.depends_on, '[]'),
           r.idempotency_key, coalesce(r.metadata, '{}'), r.webhook, r.created_at, r.scheduled_at,
           r.started_at, r.finished_at, r.updated_at, r.deliveries, r.cancel_requested, r.revision, r.ready_at,
           coalesce(r.has_children, false), r.limit_key, r.concurrency_limit, r.rate_limit
    FROM json_to_recordset(%(jobs)s::json) AS r(
        id text, task text, queue text, status text, args json, kwargs json, priority smallint,
        progress json, result json, error json, attempt integer, max_retries integer,
        timeout double precision, depends_on jsonb, idempotency_key text, metadata json, webhook text,
        created_at double precision, scheduled_at double precision, started_at double precision,
        finished_at double precision, updated_at double precision, deliveries integer,
        cancel_requested boolean, revision bigint, ready_at double precision, has_children boolean,
        limit_key text, concurrency_limit integer, rate_limit jsonb)
    ON CONFLICT DO NOTHING
    RETURNING __JOB__
), n AS (
    SELECT pg_notify(%(channel)s, q) FROM unnest(%(notify)s::text[]) AS q
), d AS (
    -- delayed jobs: ``<queue> <due>`` on the due channel, ``<channel>:due`` (waiters shorten their wait)
    SELECT pg_notify(%(channel)s || ':due', p) FROM unnest(%(due)s::text[]) AS p
)
SELECT ins.*, (SELECT count(*) FROM n) + (SELECT count(*) FROM d) AS notified FROM ins;

-- name: select_jobs
SELECT __JOB__ FROM __schema__.jobs j WHERE j.id = ANY(%(ids)s::text[]);

-- name: select_by_keys
SELECT __JOB__ FROM __schema__.jobs j WHERE j.idempotency_key = ANY(%(keys)s::text[]);

-- name: mark_parents
-- Lock the parents of new jobs (in id order) and flag them; their status decides the children's.
UPDATE __schema__.jobs j SET has_children = true
FROM (SELECT p.id FROM __schema__.jobs p WHERE p.id = ANY(%(ids)s::text[]) ORDER BY p.id FOR UPDATE) AS p
WHERE j.id = p.id
RETURNING j.id, j.status;

-- name: insert_deps
INSERT INTO __schema__.job_deps (parent_id, child_id)
SELECT * FROM unnest(%(parents)s::text[], %(children)s::text[])
ON CONFLICT DO NOTHING;

-- name: claim
-- Up to %(limit)s ready jobs of the unpaused queues, 9 -> 0 then oldest first, one statement.
-- Only while no limited job is ready in these queues (``limited`` tells the caller to take the
-- limit-aware path instead: claim_candidates, limit_lock, claim_picked in one transaction).
WITH lim AS MATERIALIZED (
    SELECT EXISTS (SELECT 1 FROM __schema__.jobs l WHERE l.queue = ANY(%(queues)s::text[])
                   AND l.limit_key IS NOT NULL AND l.status IN ('queued', 'scheduled', 'retrying')) AS limited
), c AS (
    SELECT x.id, x.priority, x.ready_at, coalesce(q.visibility_timeout, %(d_vt)s) AS vt
    FROM unnest(%(queues)s::text[]) AS qn(name)
    LEFT JOIN __schema__.queues q ON q.name = qn.name
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.ready_at FROM __schema__.jobs j
        WHERE j.queue = qn.name AND j.status IN ('queued', 'scheduled', 'retrying')
          AND (j.status = 'queued' OR j.ready_at <= %(now)s)
          AND NOT (SELECT lim.limited FROM lim)
        ORDER BY j.priority DESC, j.ready_at, j.id
        LIMIT %(limit)s
        FOR UPDATE OF j SKIP LOCKED
    ) AS x
    WHERE NOT coalesce(q.paused, false)
    ORDER BY x.priority DESC, x.ready_at, x.id
    LIMIT %(limit)s
), u AS (
    UPDATE __schema__.jobs j
    SET status = 'running', worker_id = %(worker_id)s, lease_token = gen_random_uuid()::text,
        lease_expires_at = %(now)s + c.vt, deliveries = j.deliveries + 1, started_at = %(now)s,
        updated_at = %(now)s, revision = j.revision + 1,
        attempts = (CASE WHEN jsonb_array_length(j.attempts) >= 50 THEN j.attempts - 0 ELSE j.attempts END)
            || jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'worker_id', %(worker_id)s::text,
               'started_at', %(now)s::double precision, 'finished_at', NULL, 'status', 'running', 'error', NULL))
    FROM c WHERE j.id = c.id
    RETURNING __JOB__, j.ready_at AS _ready_at
)
SELECT u.*, lim.limited FROM lim LEFT JOIN u ON true ORDER BY u.priority DESC, u._ready_at, u.id;

-- name: claim_candidates
-- Up to %(limit)s claimable jobs in claim order with their limits, leaving out the keys found
-- full (%(full)s) and the ids already picked (%(picked)s) by this transaction.
SELECT x.id, x.limit_key, x.concurrency_limit, x.rate_limit
FROM unnest(%(queues)s::text[]) AS qn(name)
LEFT JOIN __schema__.queues q ON q.name = qn.name
CROSS JOIN LATERAL (
    SELECT j.id, j.priority, j.ready_at, j.limit_key, j.concurrency_limit, j.rate_limit FROM __schema__.jobs j
    WHERE j.queue = qn.name AND j.status IN ('queued', 'scheduled', 'retrying')
      AND (j.status = 'queued' OR j.ready_at <= %(now)s)
      AND (j.limit_key IS NULL OR j.limit_key <> ALL(%(full)s::text[]))
      AND j.id <> ALL(%(picked)s::text[])
    ORDER BY j.priority DESC, j.ready_at, j.id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
) AS x
WHERE NOT coalesce(q.paused, false)
ORDER BY x.priority DESC, x.ready_at, x.id
LIMIT %(limit)s;

-- name: limit_lock
-- One claimer at a time decides on a limit key (until its transaction ends); others skip the key.
SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock)s, 0));

-- name: limit_gates
-- limit_lock and limit_running for many keys in one round trip (a claim looking past many keys
-- at their limits): for each key, whether this claimer holds its lock now, and if so its count.
SELECT k.key, l.got,
       CASE WHEN l.got THEN (SELECT count(*) FROM __schema__.jobs j
                             WHERE j.limit_key = k.key AND j.status = 'running') END
FROM unnest(%(keys)s::text[]) AS k(key)
CROSS JOIN LATERAL (SELECT pg_try_advisory_xact_lock(hashtextextended(%(lock_prefix)s || k.key, 0)) AS got) l;

-- name: limit_windows
-- limit_starts for many (key, window) pairs in one round trip.
SELECT w.key, w.per, count(s.at), min(s.at)
FROM unnest(%(keys)s::text[], %(pers)s::double precision[]) AS w(key, per)
LEFT JOIN __schema__.limit_starts s ON s.key = w.key AND s.at > %(now)s - w.per
GROUP BY w.key, w.per;

-- name: limit_running
SELECT count(*) FROM __schema__.jobs j WHERE j.limit_key = %(key)s AND j.status = 'running';

-- name: limit_starts
SELECT count(*), min(s.at) FROM __schema__.limit_starts s WHERE s.key = %(key)s AND s.at > %(since)s;

-- name: log_starts
INSERT INTO __schema__.limit_starts (key, at, until)
SELECT * FROM unnest(%(keys)s::text[], %(ats)s::double precision[], %(untils)s::double precision[]);

-- name: claim_picked
UPDATE __schema__.jobs j
SET status = 'running', worker_id = %(worker_id)s, lease_token = gen_random_uuid()::text,
    lease_expires_at = %(now)s + coalesce(
        (SELECT q.visibility_timeout FROM __schema__.queues q WHERE q.name = j.queue), %(d_vt)s),
    deliveries = j.deliveries + 1, started_at = %(now)s, updated_at = %(now)s, revision = j.revision + 1,
    attempts = (CASE WHEN jsonb_array_length(j.attempts) >= 50 THEN j.attempts - 0 ELSE j.attempts END)
            || jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'worker_id', %(worker_id)s::text,
               'started_at', %(now)s::double precision, 'finished_at', NULL, 'status', 'running', 'error', NULL))
WHERE j.id = ANY(%(ids)s::text[]) AND j.status IN ('queued', 'scheduled', 'retrying')
RETURNING __JOB__, j.ready_at AS _ready_at;

-- name: prune_limit_starts
DELETE FROM __schema__.limit_starts s
WHERE s.ctid IN (SELECT x.ctid FROM __schema__.limit_starts x WHERE x.until < %(now)s LIMIT %(limit)s);

-- name: heartbeat
WITH w AS (
    INSERT INTO __schema__.workers AS w (id, host, pid, queues, concurrency, running, started_at, last_heartbeat)
    VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s::jsonb, %(concurrency)s, %(running)s::jsonb,
            %(started_at)s, %(now)s)
    ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
        concurrency = EXCLUDED.concurrency, running = EXCLUDED.running, last_heartbeat = EXCLUDED.last_heartbeat
    RETURNING 1
), l AS (
    SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::text[]) AS l(id, token)
), u AS (
    UPDATE __schema__.jobs j
    SET lease_expires_at = %(now)s + coalesce(
            (SELECT q.visibility_timeout FROM __schema__.queues q WHERE q.name = j.queue), %(d_vt)s)
    FROM l WHERE j.id = ANY(%(ids)s::text[]) AND j.id = l.id AND j.lease_token = l.token  -- (see finish)
    RETURNING j.id, j.cancel_requested
)
SELECT l.id, u.id IS NOT NULL AS held, coalesce(u.cancel_requested, false) AS cancel_requested,
       (SELECT count(*) FROM w) AS registered
FROM l LEFT JOIN u ON u.id = l.id;

-- name: finish
-- Apply outcomes whose token still holds. With %(guard)s, terminal outcomes of jobs that have
-- dependents are left alone (the caller applies them in a transaction that also moves the children).
-- A 'queued' outcome (hand-back) of a job whose cancel was requested ends it 'cancelled' instead
-- (``hb_cancel``: cancellation is stored); ``j.cancel_requested`` is read from the locked row.
-- A lease token is set only while a job runs (claims set it; every move out of 'running' clears
-- it), so a matching token is the running check. The rows are found by primary key
-- (``j.id = ANY(ids)``): a ``status = 'running'`` condition lets the planner pick jobs_lease_idx,
-- whose dead entries pile up during a drain until vacuum (each claim adds one), and scan them all
-- on every batch.
WITH o AS (
    SELECT * FROM json_to_recordset(%(outcomes)s::json) AS o(  -- (json: results as sent, see insert_jobs)
        job_id text, token text, status text, result json, error json,
        scheduled_at double precision, attempt integer, uncount boolean)
), u AS (
    UPDATE __schema__.jobs j
    SET status = CASE WHEN o.status = 'queued' AND j.cancel_requested THEN 'cancelled' ELSE o.status END,
        result = CASE WHEN o.status = 'succeeded' THEN o.result ELSE j.result END,
        error = CASE WHEN o.status = 'succeeded' THEN NULL
                     WHEN o.status = 'queued' AND j.cancel_requested THEN %(hb_cancel)s::json
                     WHEN o.status = 'queued' THEN j.error
                     ELSE coalesce(o.error, j.error) END,
        finished_at = CASE WHEN o.status IN ('succeeded', 'failed', 'cancelled')
                             OR (o.status = 'queued' AND j.cancel_requested) THEN %(now)s END,
        scheduled_at = CASE WHEN o.status = 'retrying' THEN o.scheduled_at ELSE j.scheduled_at END,
        -- a hand-back keeps its place in line (the ready_at it was claimed with); its retention restarts
        ready_at = CASE WHEN o.status = 'retrying' THEN coalesce(o.scheduled_at, %(now)s)
                        WHEN o.status = 'queued' AND NOT j.cancel_requested THEN j.ready_at END,
        put_back_at = CASE WHEN o.status = 'queued' AND NOT j.cancel_requested THEN %(now)s ELSE j.put_back_at END,
        attempt = coalesce(o.attempt, j.attempt),
        deliveries = CASE WHEN o.status = 'queued' AND coalesce(o.uncount, false) AND NOT j.cancel_requested
                          THEN greatest(j.deliveries - 1, 0) ELSE j.deliveries END,
        attempts = CASE WHEN j.attempts->-1->>'status' = 'running' THEN jsonb_set(j.attempts, '{-1}',
            (j.attempts->-1) || CASE WHEN o.status = 'queued' AND j.cancel_requested
                THEN jsonb_build_object('finished_at', %(now)s::double precision, 'status', 'cancelled',
                                        'error', jsonb_build_object('type', %(hb_cancel)s::jsonb->'type',
                                                                    'message', %(hb_cancel)s::jsonb->'message'))
                ELSE jsonb_build_object('finished_at', %(now)s::double precision, 'status', CASE WHEN o.status <> 'queued' THEN o.status WHEN o.error IS NULL THEN 'handed_back' ELSE 'lost' END,
                                        'error', CASE WHEN o.error IS NULL THEN NULL ELSE jsonb_build_object('type', o.error->'type', 'message', o.error->'message') END) END) ELSE j.attempts END,
        worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, finished_token = o.token || ':' || o.status,
        updated_at = %(now)s, revision = j.revision + 1
    FROM o
    WHERE j.id = ANY(%(ids)s::text[]) AND j.id = o.job_id AND j.lease_token = o.token
      AND NOT (%(guard)s AND j.has_children
               AND (o.status IN ('succeeded', 'failed', 'cancelled') OR (o.status = 'queued' AND j.cancel_requested)))
    RETURNING j.id, j.status, j.queue, j.has_children, j.limit_key, j.ready_at
), n AS (
    -- a queued job, or a freed limit slot: a waiting worker may have work now
    SELECT pg_notify(%(channel)s, x.queue)
    FROM (SELECT DISTINCT u.queue FROM u WHERE u.status = 'queued' OR u.limit_key IS NOT NULL) AS x
), d AS (
    -- a retry: when it comes due, per queue (see insert_jobs)
    SELECT pg_notify(%(channel)s || ':due', u.queue || ' ' || min(u.ready_at)::text)
    FROM u WHERE u.status = 'retrying' GROUP BY u.queue
)
SELECT u.*, (SELECT count(*) FROM n) + (SELECT count(*) FROM d) AS notified FROM u;

-- name: finished_already
-- Outcomes sent again after a reply lost with the connection: those that ended the job's
-- delivery already (``finish`` stores their token and status), applied by the first send; nothing
-- is changed. Another outcome with that token (a second decision) is refused.
SELECT j.id FROM __schema__.jobs j
JOIN json_to_recordset(%(outcomes)s::json) AS o(job_id text, token text, status text)
  ON j.id = o.job_id AND j.finished_token = o.token || ':' || o.status
WHERE j.id = ANY(%(ids)s::text[]);

-- name: lost_claims
-- The jobs that claims of this worker leased although their replies never came (the connection
-- dropped after the commit): still running under its id, started at those claims' times
-- (``started_at`` is the claim's ``now``). The worker never saw their tokens; they are handed
-- back rather than left until their leases expire. (A lease ends no sooner than its claim: the
-- bound on lease_expires_at lets jobs_lease_idx find them.)
SELECT __JOB__ FROM __schema__.jobs j
WHERE j.status = 'running' AND j.lease_expires_at >= %(since)s
  AND j.worker_id = %(worker_id)s AND j.started_at = ANY(%(nows)s::double precision[]);

-- name: lock_children
-- Lock the waiting children of ``ids`` (id order), so that the release below sees every parent's
-- committed status (two parents finishing at once cannot both miss the release).
SELECT c.id FROM __schema__.jobs c
WHERE c.status = 'waiting' AND c.id IN (SELECT d.child_id FROM __schema__.job_deps d WHERE d.parent_id = ANY(%(ids)s::text[]))
ORDER BY c.id
FOR UPDATE;

-- name: release_children
UPDATE __schema__.jobs j
SET status = CASE WHEN j.scheduled_at > %(now)s THEN 'scheduled' ELSE 'queued' END,
    ready_at = greatest(coalesce(j.scheduled_at, %(now)s), %(now)s),
    updated_at = %(now)s, revision = j.revision + 1
WHERE j.id = ANY(%(ids)s::text[]) AND j.status = 'waiting'
  AND NOT EXISTS (SELECT 1 FROM __schema__.job_deps d JOIN __schema__.jobs p ON p.id = d.parent_id
                  WHERE d.child_id = j.id AND p.status <> 'succeeded')
RETURNING j.id, j.queue, j.status, j.ready_at;

-- name: cascade_cancel
-- Cancel the waiting dependents of ``ids`` (which ended failed/cancelled/expired), transitively.
WITH RECURSIVE tree(child_id, parent_id, parent_status) AS (
    SELECT d.child_id, d.parent_id, p.status
    FROM __schema__.job_deps d
    JOIN __schema__.jobs p ON p.id = d.parent_id
    JOIN __schema__.jobs c ON c.id = d.child_id AND c.status = 'waiting'
    WHERE d.parent_id = ANY(%(ids)s::text[])
  UNION
    SELECT d.child_id, d.parent_id, 'cancelled'
    FROM tree t
    JOIN __schema__.job_deps d ON d.parent_id = t.child_id
    JOIN __schema__.jobs c ON c.id = d.child_id AND c.status = 'waiting'
), pick AS (
    SELECT DISTINCT ON (child_id) child_id, parent_id, parent_status FROM tree ORDER BY child_id, parent_id
)
UPDATE __schema__.jobs j
SET status = 'cancelled',
    error = json_build_object('type', 'DependencyFailed',
                              'message', 'parent ' || pick.parent_id || ' ended ' || pick.parent_status),
    finished_at = %(now)s, ready_at = NULL, updated_at = %(now)s, revision = j.revision + 1
FROM pick
WHERE j.id = pick.child_id AND j.status = 'waiting'
RETURNING j.id;

-- name: set_progress
UPDATE __schema__.jobs j SET progress = %(progress)s::json, updated_at = %(now)s, revision = j.revision + 1
WHERE j.id = %(id)s AND j.lease_token = %(token)s AND j.status = 'running'
RETURNING j.id;

-- name: revisions
SELECT j.id, j.revision FROM __schema__.jobs j WHERE j.id = ANY(%(ids)s::text[]);

-- name: list_jobs
SELECT __JOB__ FROM __schema__.jobs j
WHERE __WHERE__
ORDER BY j.created_at DESC, j.id DESC
LIMIT %(limit)s;

-- name: cancel
UPDATE __schema__.jobs j
SET status = CASE WHEN j.status = 'running' THEN 'running' ELSE 'cancelled' END,
    cancel_requested = true,
    finished_at = CASE WHEN j.status = 'running' THEN j.finished_at ELSE %(now)s END,
    ready_at = CASE WHEN j.status = 'running' THEN j.ready_at END,
    updated_at = %(now)s, revision = j.revision + 1
WHERE j.id = %(id)s
  AND (j.status IN ('waiting', 'scheduled', 'queued', 'retrying') OR (j.status = 'running' AND NOT j.cancel_requested))
RETURNING j.status, j.has_children;

-- name: requeue_candidates
-- The jobs a retry or redrive may move, with their parents (locked next, by mark_parents).
SELECT j.id, j.depends_on FROM __schema__.jobs j WHERE __WHERE__ ORDER BY j.id;

-- name: requeue
-- Back to 'queued', or to 'waiting' for the %(waiting)s ids (a parent is pending); only the
-- %(picked)s ids, and only while still in the statuses asked for (the row is locked here).
WITH u AS (
    UPDATE __schema__.jobs j
    SET status = CASE WHEN j.id = ANY(%(waiting)s::text[]) THEN 'waiting' ELSE 'queued' END,
        attempt = 1, deliveries = 0, error = NULL, result = NULL, progress = NULL,
        scheduled_at = NULL, started_at = NULL, finished_at = NULL,
        ready_at = CASE WHEN j.id = ANY(%(waiting)s::text[]) THEN NULL ELSE %(now)s END,
        cancel_requested = false, worker_id = NULL, lease_token = NULL, lease_expires_at = NULL,
        webhook_attempts = 0, webhook_next_at = NULL,  -- the old outcome's delivery is moot now
        updated_at = %(now)s, revision = j.revision + 1
    WHERE __WHERE__ AND j.id = ANY(%(picked)s::text[])
    RETURNING __JOB__
), n AS (
    SELECT pg_notify(%(channel)s, x.queue) FROM (SELECT DISTINCT u.queue FROM u WHERE u.status = 'queued') AS x
)
SELECT u.*, (SELECT count(*) FROM n) AS notified FROM u ORDER BY u.created_at, u.id;

-- name: purge
WITH s AS (
    SELECT p.id FROM __schema__.jobs p
    WHERE p.queue = %(queue)s AND p.status IN ('queued', 'scheduled', 'retrying')
    FOR UPDATE SKIP LOCKED
)
UPDATE __schema__.jobs j
SET status = 'cancelled', finished_at = %(now)s, ready_at = NULL, updated_at = %(now)s,
    revision = j.revision + 1
FROM s WHERE j.id = s.id
RETURNING j.id, j.has_children;

-- name: get_queue
SELECT retention, visibility_timeout, max_deliveries, result_ttl, paused
FROM __schema__.queues WHERE name = %(name)s;

-- name: save_queue
INSERT INTO __schema__.queues AS q (name, retention, visibility_timeout, max_deliveries, result_ttl, paused)
VALUES (%(name)s, %(retention)s, %(visibility_timeout)s, %(max_deliveries)s, %(result_ttl)s, %(paused)s)
-- an existing queue gets only the settings named in __SET__ (a concurrent change of another stays)
ON CONFLICT (name) DO UPDATE SET __SET__
RETURNING q.name;

-- name: notify
-- Wake the workers waiting on %(queues)s (the work channel), or, on the due channel, tell them
-- when a delayed job comes due (payloads ``<queue> <due>``).
SELECT pg_notify(%(channel)s, q) FROM unnest(%(queues)s::text[]) AS q;

-- name: next_due
-- When the first delayed or retrying job of the unpaused queues among %(queues)s becomes
-- claimable after %(now)s (NULL: none). Ten probes of jobs_claim_idx per queue, one per
-- priority (the index orders by ready_at within a queue and priority only).
SELECT min(x.ready_at)
FROM unnest(%(queues)s::text[]) AS qn(name)
LEFT JOIN __schema__.queues q ON q.name = qn.name
CROSS JOIN generate_series(0, 9) AS p(priority)
CROSS JOIN LATERAL (
    SELECT j.ready_at FROM __schema__.jobs j
    WHERE j.queue = qn.name AND j.priority = p.priority AND j.status IN ('scheduled', 'retrying')
      AND j.ready_at > %(now)s
    ORDER BY j.ready_at
    LIMIT 1
) AS x
WHERE NOT coalesce(q.paused, false);

-- name: all_queue_settings
SELECT name, retention, visibility_timeout, max_deliveries, result_ttl, paused FROM __schema__.queues;

-- name: queue_counts
SELECT j.queue, j.status, count(*) FROM __schema__.jobs j
WHERE %(names)s::text[] IS NULL OR j.queue = ANY(%(names)s::text[])
GROUP BY j.queue, j.status;

-- name: due_webhooks
WITH d AS (
    SELECT w.id FROM __schema__.jobs w
    WHERE w.webhook_next_at IS NOT NULL AND w.webhook_next_at <= %(now)s
    ORDER BY w.webhook_next_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE __schema__.jobs j SET webhook_next_at = %(now)s + %(lease)s
FROM d WHERE j.id = d.id
RETURNING __JOB__, j.webhook_attempts;

-- name: webhook_attempted
UPDATE __schema__.jobs j
SET webhook_attempts = j.webhook_attempts + 1,
    webhook_next_at = CASE WHEN %(done)s THEN NULL ELSE %(next_at)s::double precision END
WHERE j.id = %(id)s;

-- name: sweep_leases
-- Expired leases: back to queued in their place in line (retention restarts), failed at the
-- delivery limit, or cancelled when a user asked (cancellation is stored: a cancelled job whose
-- worker died is not run again).
WITH s AS (
    SELECT e.id, coalesce(q.max_deliveries, %(d_md)s) AS md
    FROM __schema__.jobs e LEFT JOIN __schema__.queues q ON q.name = e.queue
    WHERE e.status = 'running' AND e.lease_expires_at < %(now)s
    ORDER BY e.lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE __schema__.jobs j
SET status = CASE WHEN j.cancel_requested THEN 'cancelled' WHEN j.deliveries >= s.md THEN 'failed' ELSE 'queued' END,
    error = CASE WHEN j.cancel_requested THEN %(lost_cancel)s::json
                 WHEN j.deliveries >= s.md
                 THEN json_build_object('type', 'DeliveryLimitExceeded', 'message',
                      'delivered ' || j.deliveries || ' times without finishing (lease expired; max_deliveries ' || s.md || ')')
                 ELSE j.error END,
    finished_at = CASE WHEN j.cancel_requested OR j.deliveries >= s.md THEN %(now)s END,
    ready_at = CASE WHEN j.cancel_requested OR j.deliveries >= s.md THEN NULL ELSE j.ready_at END,
    put_back_at = CASE WHEN j.cancel_requested OR j.deliveries >= s.md THEN j.put_back_at ELSE %(now)s END,
    attempts = CASE WHEN j.attempts->-1->>'status' = 'running' THEN jsonb_set(j.attempts, '{-1}',
            (j.attempts->-1) || CASE WHEN j.cancel_requested
                THEN jsonb_build_object('finished_at', %(now)s::double precision, 'status', 'cancelled',
                                        'error', jsonb_build_object('type', %(lost_cancel)s::jsonb->'type',
                                                                    'message', %(lost_cancel)s::jsonb->'message'))
                ELSE jsonb_build_object('finished_at', %(now)s::double precision, 'status', 'lost',
                                        'error', jsonb_build_object('type', 'LeaseExpired', 'message', 'the worker stopped renewing its lease')) END) ELSE j.attempts END,
    worker_id = NULL, lease_token = NULL, lease_expires_at = NULL,
    updated_at = %(now)s, revision = j.revision + 1
FROM s WHERE j.id = s.id
RETURNING j.id, j.status, j.queue, j.has_children, j.limit_key;

-- name: sweep_retention
-- Ready jobs past their queue's retention, counted from when they became ready or were put back.
WITH s AS (
    SELECT e.id
    FROM __schema__.jobs e LEFT JOIN __schema__.queues q ON q.name = e.queue
    WHERE e.status IN ('queued', 'scheduled', 'retrying')
      AND e.ready_at < %(now)s - least(%(d_ret)s, (SELECT min(m.retention) FROM __schema__.queues m))
      AND e.ready_at < %(now)s - coalesce(q.retention, %(d_ret)s)
      AND (e.put_back_at IS NULL OR e.put_back_at < %(now)s - coalesce(q.retention, %(d_ret)s))
    ORDER BY e.ready_at
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE __schema__.jobs j
SET status = 'expired', finished_at = %(now)s, ready_at = NULL, updated_at = %(now)s,
    revision = j.revision + 1
FROM s WHERE j.id = s.id
RETURNING j.id, j.has_children;

-- name: sweep_ttl
WITH s AS (
    SELECT e.id
    FROM __schema__.jobs e LEFT JOIN __schema__.queues q ON q.name = e.queue
    WHERE e.status IN ('succeeded', 'failed', 'cancelled', 'expired')
      AND e.finished_at <= %(now)s - least(%(d_ttl)s, (SELECT min(m.result_ttl) FROM __schema__.queues m))
      AND e.finished_at <= %(now)s - coalesce(q.result_ttl, %(d_ttl)s)
      AND e.webhook_next_at IS NULL
    ORDER BY e.finished_at
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
)
DELETE FROM __schema__.jobs j USING s WHERE j.id = s.id;

-- name: sweep_workers
DELETE FROM __schema__.workers w
WHERE w.id IN (SELECT x.id FROM __schema__.workers x WHERE x.last_heartbeat < %(cutoff)s LIMIT %(limit)s);

-- name: unregister_worker
DELETE FROM __schema__.workers WHERE id = %(id)s;

-- name: workers
SELECT id, host, pid, queues, concurrency, running, started_at, last_heartbeat
FROM __schema__.workers WHERE last_heartbeat > %(cutoff)s ORDER BY started_at, id;
