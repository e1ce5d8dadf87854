"""Dead-letter writes: a failed message is done only once its DLQ copy is confirmed.

The producer's delivery report is the only proof of a write; ``flush()`` returning is
not. A refused write is retried with backoff, and until it succeeds the source offset
stays pending, so the partition's blocking offset shows exactly which message is stuck.
Delivery reports are served by :meth:`poll`, which the poll thread calls each loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Producer

from pyrallel.message import Message

log = logging.getLogger(__name__)

# Producer settings copied from the consumer's pass-through: connection and security only.
_SHARED_PREFIXES = (
    "security.",
    "sasl.",
    "ssl.",
    "socket.",
    "client.dns",
    "broker.address",
    "reconnect.",
)

HEADER_PREFIX = "pyrallel."


def producer_settings(
    bootstrap: str, client_id: str, kafka: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        k: v
        for k, v in kafka.items()
        if k.startswith(_SHARED_PREFIXES) or k.startswith("test.mock.")
    }
    settings.update(
        {
            "bootstrap.servers": bootstrap,
            "client.id": f"{client_id}-dlq",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 30_000,
        }
    )
    settings.update(overrides)
    return settings


def dlq_headers(
    msg: Message, error: BaseException, attempts: int, first: float, last: float
) -> list[tuple[str, str | bytes | None]]:
    text = str(error)[:2000]
    pairs = {
        "original.topic": msg.topic,
        "original.partition": str(msg.partition),
        "original.offset": str(msg.offset),
        "exception.type": f"{type(error).__module__}.{type(error).__qualname__}",
        "exception.message": text,
        "attempts": str(attempts),
        "first.failure.ms": str(int(first * 1000)),
        "last.failure.ms": str(int(last * 1000)),
    }
    headers: list[tuple[str, str | bytes | None]] = [
        (HEADER_PREFIX + k, v.encode()) for k, v in pairs.items()
    ]
    if msg.key is not None:
        headers.append((HEADER_PREFIX + "original.key", msg.key))
    # The original headers travel too, after ours.
    headers.extend((k, v if v is not None else b"") for k, v in msg.headers)
    return headers


class DeadLetterWriter:
    def __init__(
        self,
        settings: dict[str, Any],
        topic_for: Callable[[str], str],
        on_delivered: Callable[[Message], None],
        on_failed: Callable[[Message, str], None],
    ) -> None:
        self._settings = settings
        self._topic_for = topic_for
        self._on_delivered = on_delivered
        self._on_failed = on_failed
        self._producer: Producer | None = None
        self.outstanding = 0

    def send(self, msg: Message, error: BaseException, attempts: int, first_failure: float) -> None:
        if self._producer is None:
            self._producer = Producer(self._settings)
        topic = self._topic_for(msg.topic)

        def report(err: KafkaError | None, _record: Any) -> None:
            self.outstanding -= 1
            if err is None:
                self._on_delivered(msg)
            else:
                self._on_failed(msg, f"{err.name()}: {err.str()}")

        headers = dlq_headers(msg, error, attempts, first_failure, time.time())
        try:
            self._producer.produce(
                topic, value=msg.value, key=msg.key, headers=headers, on_delivery=report
            )
        except (BufferError, Exception) as exc:  # queue full or invalid: retried later
            self._on_failed(msg, f"{type(exc).__name__}: {exc}")
            return
        self.outstanding += 1

    def poll(self) -> None:
        if self._producer is not None and self.outstanding:
            self._producer.poll(0)

    def close(self, timeout: float) -> None:
        if self._producer is not None:
            remaining = self._producer.flush(timeout)
            self._producer = None  # release its connections now, not at garbage collection
            if remaining:
                log.warning(
                    "dead-letter writes not confirmed at shutdown: %d (offsets stay uncommitted)",
                    remaining,
                )
