"""RabbitMQ for delivery, with the job records in ``CONVEYOR_STORE_URL``.

``backend.py`` is the engine, ``AMQPBackend`` (its docstring says who decides what). Beside it:
``url.py`` reads the URL; ``outbox.py`` makes the tickets and tops them up; ``outage.py``
recognises a lost connection in errors and keeps the AMQP client's records of it at DEBUG.
"""

from conveyor.backends.amqp.backend import AMQPBackend

__all__ = ["AMQPBackend"]
