"""Helpers for tests that run a ParallelConsumer against a broker."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from pyrallel import ConsumerConfig, Message, ParallelConsumer
from pyrallel.audit import Audit
from tests.support.waiting import wait_until

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def config(bootstrap: str, group: str, topics: list[str], **overrides: Any) -> ConsumerConfig:
    kafka = {**FAST_GROUP, **overrides.pop("kafka", {})}
    overrides.setdefault("commit_interval_ms", 200)
    return ConsumerConfig(
        bootstrap_servers=bootstrap, group_id=group, topics=topics, kafka=kafka, **overrides
    )


def audited(
    audit: Audit,
    latency: tuple[float, float] = (0.0, 0.0),
    before: Callable[[Message], Any] | None = None,
) -> Callable[[Message], Any]:
    """An async handler that records begin/end in ``audit`` and sleeps ``latency`` seconds."""
    lo, hi = latency

    async def handle(msg: Message) -> None:
        audit.begin(msg.topic, msg.partition, msg.offset, msg.key)
        try:
            if before is not None:
                result = before(msg)
                if asyncio.iscoroutine(result):
                    await result
            if hi > 0:
                await asyncio.sleep(random.uniform(lo, hi))
        except asyncio.CancelledError:
            audit.abort(msg.topic, msg.partition, msg.offset, msg.key)
            raise
        except BaseException:
            audit.abort(msg.topic, msg.partition, msg.offset, msg.key)
            raise
        audit.end(msg.topic, msg.partition, msg.offset, msg.key)

    return handle


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=15)}
    finally:
        c.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """High watermarks (read_committed: the last stable offset)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "end-offsets-probe"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        c.close()


@contextmanager
def running(consumer: ParallelConsumer, stop_timeout: float = 30) -> Iterator[ParallelConsumer]:
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop(timeout=stop_timeout)


def wait_committed(
    consumer: ParallelConsumer, topic: str, ends: dict[int, int], timeout: float = 60
) -> None:
    """Wait until the broker confirmed commits equal to ``ends`` for every partition."""

    def done() -> bool:
        parts = consumer.get_metrics().partitions
        return all(
            (p := parts.get((topic, part))) is not None and p.committed_offset == end
            for part, end in ends.items()
        )

    wait_until(
        done,
        timeout=timeout,
        message=lambda: (
            f"commits {ends} (now {_commits(consumer, topic)}), error={consumer.error!r}"
        ),
    )


def _commits(consumer: ParallelConsumer, topic: str) -> dict[int, int | None]:
    return {
        p: m.committed_offset
        for (t, p), m in consumer.get_metrics().partitions.items()
        if t == topic
    }


class Gate:
    """A handler hook that blocks chosen messages until released (thread-safe)."""

    def __init__(self, predicate: Callable[[Message], bool]) -> None:
        self._predicate = predicate
        self._event = threading.Event()
        self.blocked = 0

    async def __call__(self, msg: Message) -> None:
        if self._predicate(msg):
            self.blocked += 1
            while not self._event.is_set():
                await asyncio.sleep(0.01)

    def release(self) -> None:
        self._event.set()
