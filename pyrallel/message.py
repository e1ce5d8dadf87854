"""The message a handler receives."""

from __future__ import annotations

from typing import Any, Protocol


class KafkaMessage(Protocol):
    """The parts of ``confluent_kafka.Message`` Pyrallel reads (lets pure code type-check)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...
    def error(self) -> Any: ...


class Message:
    """One Kafka record as handed to a handler.

    ``timestamp`` is milliseconds since the epoch (``None`` when the record has none);
    ``attempt`` is 1 for the first call and grows with each retry. Instances are
    picklable so the process engine can ship them to workers.
    """

    __slots__ = (
        "_epoch",
        "attempt",
        "headers",
        "key",
        "offset",
        "partition",
        "timestamp",
        "topic",
        "value",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None = None,
        timestamp: int | None = None,
        attempt: int = 1,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers or []
        self.timestamp = timestamp
        self.attempt = attempt
        self._epoch = 0  # assignment epoch, set by the consumer; never sent to workers

    @classmethod
    def from_kafka(cls, raw: KafkaMessage) -> Message:
        ts_type, ts = raw.timestamp()
        return cls(
            raw.topic() or "",
            raw.partition() or 0,
            raw.offset() or 0,
            raw.key(),
            raw.value(),
            raw.headers(),
            ts if ts_type else None,
        )

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None``."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, s) for s in _PUBLIC_FIELDS)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(_PUBLIC_FIELDS, state, strict=True):
            setattr(self, name, value)
        self._epoch = 0

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
            f"key={self.key!r}, attempt={self.attempt})"
        )


_PUBLIC_FIELDS = tuple(s for s in Message.__slots__ if not s.startswith("_"))
