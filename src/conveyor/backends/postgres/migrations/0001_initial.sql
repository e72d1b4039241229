-- Conveyor PostgreSQL schema, version 1.
-- "__schema__" is replaced by the quoted schema name; times are epoch seconds (double precision).

CREATE TABLE __schema__.jobs (
    id               text PRIMARY KEY,
    task             text NOT NULL,
    queue            text NOT NULL,
    status           text NOT NULL CHECK (status IN ('waiting', 'scheduled', 'queued', 'running', 'retrying',
                                                     'succeeded', 'failed', 'cancelled', 'expired')),
    args             jsonb NOT NULL DEFAULT '[]',
    kwargs           jsonb NOT NULL DEFAULT '{}',
    priority         smallint NOT NULL DEFAULT 0,
    progress         jsonb,
    result           jsonb,
    error            jsonb,
    attempt          integer NOT NULL DEFAULT 1,
    max_retries      integer NOT NULL DEFAULT 3,
    timeout          double precision,
    depends_on       jsonb NOT NULL DEFAULT '[]',
    idempotency_key  text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    webhook          text,
    created_at       double precision NOT NULL,
    scheduled_at     double precision,
    started_at       double precision,
    finished_at      double precision,
    updated_at       double precision NOT NULL,
    deliveries       integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    revision         bigint NOT NULL DEFAULT 1,
    worker_id        text,
    lease_token      text,
    lease_expires_at double precision,
    -- internal columns (not part of the Job record)
    ready_at         double precision,           -- when the job became (or becomes) ready: FIFO and retention
    has_children     boolean NOT NULL DEFAULT false,  -- some job depends on this one
    webhook_attempts integer NOT NULL DEFAULT 0,
    webhook_next_at  double precision            -- the webhook outbox: due time of the next delivery
) WITH (fillfactor = 80);

-- Claim: ready jobs of one queue, 9 -> 0, then oldest first.
CREATE INDEX jobs_claim_idx ON __schema__.jobs (queue, priority DESC, ready_at, id)
    WHERE status IN ('queued', 'scheduled', 'retrying');
-- Retention sweep.
CREATE INDEX jobs_ready_idx ON __schema__.jobs (ready_at) WHERE status IN ('queued', 'scheduled', 'retrying');
-- Expired leases.
CREATE INDEX jobs_lease_idx ON __schema__.jobs (lease_expires_at) WHERE status = 'running';
-- result_ttl.
CREATE INDEX jobs_finished_idx ON __schema__.jobs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'expired');
-- Listing, newest first.
CREATE INDEX jobs_created_idx ON __schema__.jobs (created_at DESC, id DESC);
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON __schema__.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_webhook_idx ON __schema__.jobs (webhook_next_at) WHERE webhook_next_at IS NOT NULL;

CREATE TABLE __schema__.job_deps (
    parent_id text NOT NULL REFERENCES __schema__.jobs (id) ON DELETE CASCADE,
    child_id  text NOT NULL REFERENCES __schema__.jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX job_deps_child_idx ON __schema__.job_deps (child_id);

CREATE TABLE __schema__.queues (
    name               text PRIMARY KEY,
    retention          double precision NOT NULL,
    visibility_timeout double precision NOT NULL,
    max_deliveries     integer NOT NULL,
    result_ttl         double precision NOT NULL,
    paused             boolean NOT NULL DEFAULT false
);

CREATE TABLE __schema__.workers (
    id             text PRIMARY KEY,
    host           text NOT NULL,
    pid            integer NOT NULL,
    queues         jsonb NOT NULL DEFAULT '[]',
    concurrency    integer NOT NULL,
    running        jsonb NOT NULL DEFAULT '[]',
    started_at     double precision NOT NULL,
    last_heartbeat double precision NOT NULL
);

-- The webhook outbox: a job with a webhook that turns terminal becomes due at once.
CREATE FUNCTION __schema__.conveyor_webhook_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.webhook_next_at := NEW.updated_at;
    NEW.webhook_attempts := 0;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_webhook_due_upd BEFORE UPDATE OF status ON __schema__.jobs FOR EACH ROW
    WHEN (NEW.webhook IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired'))
    EXECUTE FUNCTION __schema__.conveyor_webhook_due();
CREATE TRIGGER jobs_webhook_due_ins BEFORE INSERT ON __schema__.jobs FOR EACH ROW
    WHEN (NEW.webhook IS NOT NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired'))
    EXECUTE FUNCTION __schema__.conveyor_webhook_due();
