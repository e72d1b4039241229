"""Opening the file: its ``sqlite://`` URL, a WAL-mode connection on the migrated schema, outages.

``schema.sql`` holds numbered migrations; a file records the last one applied in ``PRAGMA
user_version``, and ``connect`` applies the rest under one write lock, so that processes opening
one file together migrate it once. Engine errors that mean "the file cannot be used right now"
(locked, missing, full, read-only, corrupt) become ``BackendUnavailable``; others are bugs and
stay as they are.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from importlib import resources
from urllib.parse import unquote, urlsplit

from conveyor.core.errors import BackendUnavailable, ConfigurationError

BUSY_TIMEOUT = 5.0  #: seconds a statement waits for another process's write lock

# Engine errors that mean "the file cannot be used right now", as opposed to a bug in a query.
_UNAVAILABLE_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH,
})


#: Each connection to ``:memory:`` is a new, empty database: a job enqueued by one command, thread or
#: event loop (the sync API runs on its own) was never seen by a worker, ``get_job`` or ``jobs``.
IN_MEMORY_REFUSED = (
    "sqlite:///:memory: cannot hold jobs: each connection (every command, worker, thread and event loop) "
    "gets its own empty database, so jobs would be lost; use a file, e.g. sqlite:////tmp/conveyor-test.db "
    "(in tests, one in the test's temporary directory)"
)


def path_from_url(url: str) -> str:
    """The file of ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {url!r}")
    if parts.query:  # e.g. '?mode=ro' would silently open the file read-write
        raise ConfigurationError(f"the SQLite URL {url!r} takes no options: use sqlite:///path/to/file.db")
    path = unquote(parts.netloc + parts.path)
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigurationError(f"the SQLite URL {url!r} names no file: use sqlite:///conveyor.db")
    if path == ":memory:":
        raise ConfigurationError(IN_MEMORY_REFUSED)
    return path


def migrations() -> list[tuple[int, list[str]]]:
    """The numbered migrations of ``schema.sql``, each as its list of statements."""
    text = resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")
    chunks = re.split(r"^-- migration: (\d+)\s*$", text, flags=re.MULTILINE)
    out = []
    for number, body in zip(chunks[1::2], chunks[2::2], strict=True):
        statements = [s.strip() for s in re.split(r";\s*$", body, flags=re.MULTILINE)]
        out.append((int(number), [s for s in statements if _has_code(s)]))
    if [n for n, _ in out] != list(range(1, len(out) + 1)):
        raise RuntimeError("schema.sql migrations must be numbered 1, 2, 3, ... in order")
    return out


def _has_code(statement: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


def connect(path: str) -> sqlite3.Connection:
    """A connection in WAL mode on a migrated file. Switching a file to WAL fails at once,
    without waiting, while another connection writes in the old journal mode (processes
    that open a new file together): that is retried until ``BUSY_TIMEOUT``."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.001
    while True:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False, cached_statements=256)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn, path)
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            if not is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        except BaseException:
            conn.close()
            raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    steps = migrations()
    latest = steps[-1][0]
    if conn.execute("PRAGMA user_version").fetchone()[0] == latest:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > latest:
            raise ConfigurationError(
                f"{path} has schema version {version}, newer than this Conveyor knows ({latest}): "
                "upgrade Conveyor")
        for number, statements in steps[version:]:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock ``exc`` waited for."""
    return ((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def unavailable(path: str, exc: sqlite3.Error) -> BackendUnavailable:
    """The ``BackendUnavailable`` that names the file ``path`` and what is wrong with it."""
    if is_busy(exc):
        return BackendUnavailable(f"the SQLite database {path} is locked by another process "
                                  f"(still busy after {BUSY_TIMEOUT:g} s): {exc}")
    return BackendUnavailable(f"cannot use the SQLite database {os.path.abspath(path)}: {exc}")


def is_unavailable(exc: sqlite3.Error) -> bool:
    """``exc`` says the file cannot be used right now (rather than that a query is wrong)."""
    code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
    return code in _UNAVAILABLE_CODES or (isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "unable to open" in str(exc)))
