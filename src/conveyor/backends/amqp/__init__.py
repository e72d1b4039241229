"""RabbitMQ for delivery, with the job records in ``CONVEYOR_STORE_URL`` (see ``backend.py``)."""

from conveyor.backends.amqp.backend import AMQPBackend

__all__ = ["AMQPBackend"]
