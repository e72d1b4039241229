-- Conveyor PostgreSQL schema, version 3: the outcome that ended the last delivery, as
-- '<lease token>:<status>'. A finish clears lease_token; when the connection drops after its
-- commit, before its reply, the worker sends the outcome again and its token matches nothing.
-- finished_token tells that this very outcome was applied (the finish is reported done), where
-- an outcome of a lease that had passed to another worker is refused.

ALTER TABLE __schema__.jobs ADD COLUMN finished_token text;
