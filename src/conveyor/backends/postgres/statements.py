"""The engine's SQL, read from the package's files: the named queries and the schema's migrations.

``queries.sql`` holds every statement under a ``-- name:`` line; :func:`load_queries` fills in
the schema and the Job columns. ``migrations/NNNN_*.sql`` are applied in order, once each, by
:func:`migrate` (the ``schema_version`` table records which), one migrator per schema at a time;
a schema a newer release migrated is refused.
"""

from __future__ import annotations

import importlib.resources
import re

from conveyor.backends.postgres.connection import AConn
from conveyor.backends.postgres.rows import JOB_FIELDS
from conveyor.core.errors import ConfigurationError


def _load_text(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def load_queries(schema_ident: str) -> dict[str, str]:
    """The named queries of ``queries.sql`` with the schema and the Job columns filled in."""
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    job_cols = ", ".join(f"j.{c}" for c in JOB_FIELDS)
    for line in _load_text("queries.sql").splitlines():
        if line.startswith("-- name:"):
            if name:
                queries[name] = "\n".join(lines).strip().rstrip(";")
            name, lines = line.split(":", 1)[1].strip(), []
        elif name is not None and not line.startswith("--"):
            lines.append(line)
    if name:
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return {k: v.replace("__schema__", schema_ident).replace("__JOB__", job_cols) for k, v in queries.items()}


def migrations() -> list[tuple[int, str, str]]:
    """The ordered migrations: (version, file name, SQL with ``__schema__`` placeholders)."""
    found = []
    for entry in importlib.resources.files(__package__).joinpath("migrations").iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: AConn, schema: str, schema_ident: str) -> None:
    """Create ``schema`` if need be and apply the migrations it lacks, in one transaction."""
    async with conn.transaction():
        # One migrator at a time, per schema, across processes.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"conveyor:{schema}",))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_ident}")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema_ident}.schema_version "
                           "(version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL "
                           "DEFAULT now())")
        cur = await conn.execute(f"SELECT version FROM {schema_ident}.schema_version")
        applied = {row[0] for row in await cur.fetchall()}
        steps = migrations()
        latest = steps[-1][0]
        if applied and max(applied) > latest:  # a newer release migrated it: this one's SQL may not fit
            raise ConfigurationError(
                f"PostgreSQL schema {schema!r} has schema version {max(applied)}, newer than this Conveyor "
                f"knows ({latest}): upgrade Conveyor")
        for version, name, text in steps:
            if version in applied:
                continue
            await conn.execute(text.replace("__schema__", schema_ident))
            await conn.execute(f"INSERT INTO {schema_ident}.schema_version (version, name) VALUES (%s, %s)",
                               (version, name))
