-- Conveyor PostgreSQL schema, version 4: a job put back without an outcome (its worker died, or
-- handed it back at a stop) keeps its place in line, as on Redis: its ready_at (kept while it
-- runs) stays as it was, and put_back_at, when it went back, restarts its retention clock, which
-- counts from the later of ready_at and put_back_at. Every other way into the line sets ready_at
-- at or after its own time, so a put_back_at left from an earlier delivery is never the later one.

ALTER TABLE __schema__.jobs ADD COLUMN put_back_at double precision;
