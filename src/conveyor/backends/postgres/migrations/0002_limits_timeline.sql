-- Conveyor PostgreSQL schema, version 2: global limits and the job timeline.
-- A limited job carries its resolved key and limits (at most concurrency_limit running, at most
-- rate_limit = [count, per_seconds] starts per window). Its key's running jobs are counted through
-- jobs_limit_running_idx (so every way a job stops running frees its slot); its recent starts are
-- logged in limit_starts (a sliding log, pruned by the sweep once `until` has passed). Claims of
-- limited jobs serialize per key on a transaction-level advisory lock. attempts is the timeline:
-- the last 50 deliveries.

ALTER TABLE __schema__.jobs
    ADD COLUMN limit_key text,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN rate_limit jsonb,
    ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]';

CREATE INDEX jobs_limit_running_idx ON __schema__.jobs (limit_key)
    WHERE status = 'running' AND limit_key IS NOT NULL;
CREATE INDEX jobs_limit_ready_idx ON __schema__.jobs (queue)
    WHERE limit_key IS NOT NULL AND status IN ('queued', 'scheduled', 'retrying');

CREATE TABLE __schema__.limit_starts (
    key   text NOT NULL,
    at    double precision NOT NULL,
    until double precision NOT NULL
);
CREATE INDEX limit_starts_key_idx ON __schema__.limit_starts (key, at);
CREATE INDEX limit_starts_until_idx ON __schema__.limit_starts (until);
