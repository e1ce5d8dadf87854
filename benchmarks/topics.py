"""Topics of a benchmark: created and filled once, before any run; live producing."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic, but its stubs do not say so (mypy --strict).
from confluent_kafka.cimpl import NewTopic

VALUE_BYTES = 100
"""Payload size of the pre-produced records (the value is this many bytes)."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    messages: int
    keys: int
    stuck_head: bool = False
    """Offset 0 of partition 0 gets the value ``b"stuck"`` and a key of its own."""


def create_topics(bootstrap: str, topics: Iterable[tuple[str, int]], timeout: float = 60) -> None:
    """Create ``(name, partitions)`` topics; return once every partition has a leader."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})
    wanted = dict(topics)
    if not wanted:
        return
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in wanted.items()],
        operation_timeout=timeout,
    )
    for future in futures.values():
        future.result(timeout)
    deadline = time.monotonic() + timeout
    while wanted:
        metadata = admin.list_topics(timeout=10).topics
        for name in list(wanted):
            meta = metadata.get(name)
            if (
                meta is not None
                and meta.error is None
                and len(meta.partitions) == wanted[name]
                and all(p.leader >= 0 for p in meta.partitions.values())
            ):
                del wanted[name]
        if wanted and time.monotonic() > deadline:
            raise RuntimeError(f"topics without leaders after {timeout:g} s: {sorted(wanted)}")
        if wanted:
            time.sleep(0.1)


def _producer(bootstrap: str, **extra: Any) -> Producer:
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "compression.type": "none",
        "log_level": 4,
    }
    settings.update(extra)
    return Producer(settings)


def fill(bootstrap: str, spec: TopicSpec) -> float:
    """Produce ``spec.messages`` keyed records (key ``i % keys``); returns seconds taken."""
    began = time.perf_counter()
    producer = _producer(bootstrap)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    pad = b"x" * VALUE_BYTES
    if spec.stuck_head:
        producer.produce(spec.name, key=b"stuck", value=b"stuck", partition=0)
        producer.flush(30)
    keys = [f"key-{k}".encode() for k in range(spec.keys)]
    for i in range(spec.messages):
        while True:
            try:
                producer.produce(spec.name, key=keys[i % spec.keys], value=pad, on_delivery=None)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"could not deliver every record to {spec.name} in 120 s")
    if errors:
        raise RuntimeError(f"{len(errors)} records to {spec.name} failed, e.g. {errors[0]}")
    return time.perf_counter() - began


WARMUP = b"w"
"""Values of warm-up records start with this; their latency is not recorded."""


def produce_at_rate(
    bootstrap: str, topic: str, rate: float, count: int, warmup: int = 0, keys: int = 1000
) -> dict[str, float]:
    """Produce ``warmup + count`` records at ``rate``/s, each value the send time in epoch ns.

    The first ``warmup`` values are prefixed with :data:`WARMUP`: they carry the
    connection set-up and the consumer's first fetches, which are not steady-state
    latency. Pacing is by schedule (record ``i`` is due at ``start + i / rate``), so a late
    wake-up is caught up instead of lowering the rate. ``linger.ms=0``: no batching delay.
    """
    producer = _producer(bootstrap, **{"linger.ms": 0})
    producer.list_topics(topic, timeout=10)  # metadata and connection before the clock starts
    key_list = [f"key-{k}".encode() for k in range(keys)]
    total = warmup + count
    start = time.perf_counter()
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        value = str(time.time_ns()).encode()
        producer.produce(
            topic, key=key_list[i % keys], value=WARMUP + value if i < warmup else value
        )
        producer.poll(0)
    elapsed = time.perf_counter() - start
    producer.flush(30)
    return {
        "produced": total,
        "warmup": warmup,
        "seconds": round(elapsed, 3),
        "rate": round(total / elapsed, 1),
    }
