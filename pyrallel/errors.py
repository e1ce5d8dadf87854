"""Exception hierarchy. Everything Pyrallel raises derives from :class:`PyrallelError`.

Errors about a message carry its Kafka coordinates (topic, partition, offset) and say
whether retrying could help, so an operator reading a log line knows where to look.
"""

from __future__ import annotations


class PyrallelError(Exception):
    """Root of every Pyrallel error."""

    retriable: bool = False


class ConfigError(PyrallelError, ValueError):
    """A configuration value is invalid. Names the field, the bad value and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is invalid: {allowed}")


class HandlerError(PyrallelError):
    """A handler failed for a message and the failure policy stopped the consumer."""

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        cause: BaseException | None,
        attempts: int = 1,
        reason: str | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.attempts = attempts
        what = reason or (f"{type(cause).__name__}: {cause}" if cause else "failed")
        super().__init__(
            f"handler failed for topic={topic} partition={partition} offset={offset} "
            f"after {attempts} attempt(s): {what}"
        )


class HandlerTimeoutError(PyrallelError, TimeoutError):
    """A handler call ran longer than ``handler_timeout_ms``."""

    retriable = True


class WorkerDiedError(PyrallelError):
    """A worker process died while it held the message."""

    retriable = True


class KafkaClientError(PyrallelError):
    """librdkafka reported a fatal error; the consumer stopped."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        self.retriable = retriable
        super().__init__(message)


class ConsumerStateError(PyrallelError, RuntimeError):
    """The consumer was used in a state that does not allow it (e.g. started twice)."""
