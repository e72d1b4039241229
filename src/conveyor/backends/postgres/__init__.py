"""The PostgreSQL engine (``postgresql://user@host/db?schema=conveyor``)."""

from conveyor.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
