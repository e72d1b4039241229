"""The Redis engine (``redis://host:6379/0?prefix=conveyor``)."""

from conveyor.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
