-- Conveyor PostgreSQL schema, version 5: the JSON that users and tasks give (arguments, metadata,
-- progress, result, error) is stored as json, its text as it was sent, where jsonb stored its
-- numbers as numeric and wrote them back otherwise: 1e16 and 1.7976931348623157e308 as integers
-- (read back as Python ints), -0.0 as 0.0, and object keys in its own order. No statement looks
-- into these columns. Those that statements build or search with jsonb operators stay jsonb:
-- attempts, depends_on, rate_limit and the workers' lists. Rows written before keep the values
-- jsonb made of them. (The change rewrites the table, under its lock, once.)

ALTER TABLE __schema__.jobs
    ALTER COLUMN args TYPE json USING args::json, ALTER COLUMN args SET DEFAULT '[]',
    ALTER COLUMN kwargs TYPE json USING kwargs::json, ALTER COLUMN kwargs SET DEFAULT '{}',
    ALTER COLUMN progress TYPE json USING progress::json,
    ALTER COLUMN result TYPE json USING result::json,
    ALTER COLUMN error TYPE json USING error::json,
    ALTER COLUMN metadata TYPE json USING metadata::json, ALTER COLUMN metadata SET DEFAULT '{}';
