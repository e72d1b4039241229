"""The embedded engine: one SQLite file in WAL mode, shared by every process on one machine."""

from __future__ import annotations

from conveyor.backends.sqlite.backend import SQLiteBackend

__all__ = ["SQLiteBackend"]
