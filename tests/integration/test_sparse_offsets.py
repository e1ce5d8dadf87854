"""Field cases C3 and C4: offsets with holes from compaction and from retention."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from pyrallel import Message, ParallelConsumer
from pyrallel.audit import Audit
from tests.support.consuming import committed, config, end_offsets, running, wait_committed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


def _read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record now in partition 0, read by a plain client."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        out: list[tuple[int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                if m.error() is None:
                    out.append((m.offset() or 0, m.key(), m.value()))
            if out and out[-1][0] >= high - 1:
                break
        return out
    finally:
        c.close()


def test_compacted_topic_with_holes_and_tombstones(
    bootstrap: str, make_topic: Any, make_producer: Any, group_id: str
) -> None:
    """C3: every remaining record is processed once; commits reach the end offset."""
    topic = make_topic(
        partitions=1,
        config={
            "cleanup.policy": "compact",
            "segment.ms": 100,
            "min.cleanable.dirty.ratio": 0.001,
            "delete.retention.ms": 3_600_000,  # keep tombstones so the handler sees them
            "min.compaction.lag.ms": 0,
        },
    )
    producer = make_producer({"linger.ms": 0})
    for i in range(600):
        # Every third record has a key of its own and survives compaction, so the
        # cleaned log keeps holes in the middle, not only at its head.
        key = f"u{i}" if i % 3 == 0 else f"k{i % 20}"
        producer.produce(topic, key=key.encode(), value=f"v{i}".encode())
    for k in range(5):
        producer.produce(topic, key=f"k{k}".encode(), value=None)  # tombstones
    producer.flush(10)

    rolls = 0

    def compacted() -> list[tuple[int, bytes | None, bytes | None]] | None:
        nonlocal rolls
        # New records roll the active segment so the cleaner can take the old ones; unique
        # keys, so the cleaner never removes them and the log stops changing.
        rolls += 1
        producer.produce(topic, key=f"roll-{rolls}".encode(), value=b"r")
        producer.flush(10)
        records = _read_all(bootstrap, topic)
        offsets = [o for o, _, _ in records]
        holes = any(b - a > 1 for a, b in itertools.pairwise(offsets))
        return records if holes and len(records) < 300 else None

    wait_until(compacted, timeout=90, interval=1.0, message="the log cleaner to compact the topic")
    producer.produce(topic, key=b"last", value=b"last")
    producer.flush(10)
    ends = end_offsets(bootstrap, topic, 1)

    seen: list[tuple[int, bytes | None, bytes | None]] = []
    audit = Audit()

    async def handle(msg: Message) -> None:
        audit.begin(msg.topic, msg.partition, msg.offset, msg.key)
        seen.append((msg.offset, msg.key, msg.value))
        audit.end(msg.topic, msg.partition, msg.offset, msg.key)

    consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), handle)
    with running(consumer):
        wait_committed(consumer, topic, ends)
    # The cleaner only ever removes records, so whatever is still there now was there
    # while the consumer read: all of it must have been processed.
    remaining_offsets = {o for o, _, _ in _read_all(bootstrap, topic)}
    assert {o for o, _, _ in seen} >= remaining_offsets
    offsets = sorted(o for o, _, _ in seen)
    assert any(b - a > 1 for a, b in itertools.pairwise(offsets)), "the consumer met holes"
    assert len(seen) == len({o for o, _, _ in seen}), "each record processed once"
    tombstones = [k for _, k, v in seen if v is None]
    assert tombstones, "tombstones reach the handler with value None"
    assert committed(bootstrap, group_id, topic, 1) == ends


def test_retention_deleted_head_starts_at_log_start(
    bootstrap: str, make_topic: Any, produce_keyed: Any, admin: Any, group_id: str
) -> None:
    """C4: the head was deleted before the group started: start at log start, commit to end."""
    topic = make_topic(partitions=1)
    produced = produce_keyed(topic, 1000, keys=10)
    cut = 400
    futures = admin.delete_records([TopicPartition(topic, 0, cut)])
    for f in futures.values():
        f.result(30)
    audit = Audit()

    async def handle(msg: Message) -> None:
        audit.begin(msg.topic, msg.partition, msg.offset, msg.key)
        audit.end(msg.topic, msg.partition, msg.offset, msg.key)

    consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), handle)
    with running(consumer):
        wait_committed(consumer, topic, produced.end_offsets)
    report = audit.report({(topic, 0): list(range(cut, 1000))})
    assert report.lost == 0 and report.duplicates == 0
    assert audit.processed == 1000 - cut
    assert committed(bootstrap, group_id, topic, 1) == {0: 1000}
