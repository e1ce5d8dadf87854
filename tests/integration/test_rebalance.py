"""Issue 4 on the real broker, in one process: commit metadata, revoke, fencing."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from pyrallel import Message, ParallelConsumer
from pyrallel.audit import Audit
from pyrallel.offsets import metadata as codec
from tests.support.consuming import audited, committed, config, running, wait_committed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


def _committed_tp(bootstrap: str, group: str, topic: str, partition: int) -> TopicPartition:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        result: TopicPartition = c.committed([TopicPartition(topic, partition)], timeout=15)[0]
        return result
    finally:
        c.close()


def test_stuck_head_keeps_metadata_small_and_restart_skips_finished_work(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    """C9 / metadata budget: head stuck, 20,000 later ones complete; nothing re-runs."""
    topic = make_topic(partitions=1)
    produced = produce_keyed(topic, 20_001, keys=500)
    release = threading.Event()
    audit = Audit()

    async def head_blocks(msg: Message) -> None:
        if msg.offset == 0:
            while not release.is_set():
                await asyncio.sleep(0.01)

    cfg = config(bootstrap, group_id, [topic], ordering="unordered", max_in_flight_messages=2000)
    first = ParallelConsumer(cfg, audited(audit, before=head_blocks))
    first.start()
    try:
        wait_until(
            lambda: audit.processed >= 20_000, timeout=120, message=lambda: f"{audit.processed}"
        )

        def metadata_committed() -> TopicPartition | None:
            tp = _committed_tp(bootstrap, group_id, topic, 0)
            return (
                tp
                if tp.metadata and codec.decode(tp.metadata, tp.offset) == [(1, 20_000)]
                else None
            )

        tp = wait_until(metadata_committed, timeout=30, message="metadata naming offsets 1..20000")
        assert tp.offset == 0, "the stuck head holds the commit point"
        assert len(tp.metadata.encode()) <= 4096
        snap = first.get_metrics().partitions[(topic, 0)]
        assert snap.blocking_offset == 0 and snap.gap_count == 1 and snap.true_lag == 20_001
    finally:
        first.stop(timeout=1)  # the head never finishes: bounded drain, it stays uncommitted
    assert _committed_tp(bootstrap, group_id, topic, 0).offset == 0

    release.set()
    second = ParallelConsumer(cfg, audited(audit))
    with running(second):
        wait_committed(second, topic, produced.end_offsets)
        skipped = second.get_metrics().counters["skipped_done"]
    report = audit.report({(topic, 0): [r.offset for r in produced.records]})
    assert report.lost == 0
    # Only the head ran twice (once cancelled at stop, once to completion).
    assert report.duplicates == 0
    assert skipped == 20_000


def test_revoke_commits_finished_work_and_fences_late_results(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    """C11: finished work is committed before the revoke returns; late results dropped."""
    topic = make_topic(partitions=4)
    produced = produce_keyed(topic, 400, keys=40)
    audit = Audit()
    slow_started = threading.Event()

    async def some_slow(msg: Message) -> None:
        if msg.offset % 25 == 7:  # a few handlers outlast the revoke grace
            slow_started.set()
            await asyncio.sleep(4)

    cfg = config(bootstrap, group_id, [topic], max_revoke_grace_ms=500)
    first = ParallelConsumer(cfg, audited(audit, (0, 0.01), before=some_slow))
    second = ParallelConsumer(cfg, audited(audit, (0, 0.01)))
    with running(first):
        wait_until(slow_started.is_set, timeout=60, message="a slow handler running")
        with running(second):
            wait_until(
                lambda: first.get_metrics().counters["revoked"] > 0,
                timeout=60,
                message="the first consumer to give up partitions",
            )
            for tp_key, end in produced.end_offsets.items():
                got = _committed_tp(bootstrap, group_id, topic, tp_key).offset
                assert got <= end
            wait_until(
                lambda: all(
                    _committed_tp(bootstrap, group_id, topic, p).offset == end
                    for p, end in produced.end_offsets.items()
                ),
                timeout=90,
                message="both consumers together to commit everything",
            )
    report = audit.report(
        {(topic, p): [r.offset for r in produced.records if r.partition == p] for p in range(4)}
    )
    assert report.lost == 0
    assert report.ordering_violations == 0
    assert committed(bootstrap, group_id, topic, 4) == produced.end_offsets


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_second_member_takes_over_without_loss(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str, strategy: str
) -> None:
    topic = make_topic(partitions=6)
    total = 12_000
    produced = produce_keyed(topic, total, keys=30)
    audit = Audit()
    cfg = config(bootstrap, group_id, [topic], kafka={"partition.assignment.strategy": strategy})
    first = ParallelConsumer(cfg, audited(audit, (0.005, 0.015)))
    second = ParallelConsumer(cfg, audited(audit, (0.005, 0.015)))
    with running(first):
        wait_until(lambda: audit.processed > 500, timeout=60, message="progress")
        with running(second):
            wait_until(
                lambda: second.get_metrics().counters["processed"] > 0,
                timeout=60,
                message="the second member to get partitions and process",
            )
            assert first.get_metrics().counters["revoked"] >= 1
            assert audit.processed < total, "work was left when the group rebalanced"
            wait_until(
                lambda: audit.processed >= total, timeout=120, message=lambda: f"{audit.processed}"
            )
            wait_until(
                lambda: committed(bootstrap, group_id, topic, 6) == produced.end_offsets,
                timeout=60,
                message="commits at end offsets",
            )
    report = audit.report(
        {(topic, p): [r.offset for r in produced.records if r.partition == p] for p in range(6)}
    )
    assert report.lost == 0
    assert report.ordering_violations == 0
    assert report.overlaps == 0


def test_stop_while_handlers_run_drains_then_commits_only_finished(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    """C8: stop during work: bounded drain, final commit never passes unfinished offsets."""
    topic = make_topic(partitions=1)
    produce_keyed(topic, 300, keys=300)
    audit = Audit()
    hang_at = 150

    async def maybe_hang(msg: Message) -> None:
        if msg.offset == hang_at:
            await asyncio.sleep(3600)

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], ordering="unordered"),
        audited(audit, (0.05, 0.2), maybe_hang),
    )
    consumer.start()
    wait_until(lambda: audit.processed >= 200, timeout=60, message="most work done")
    started = time.monotonic()
    consumer.stop(timeout=2)
    assert time.monotonic() - started < 10, "the drain is bounded by the stop timeout"
    assert committed(bootstrap, group_id, topic, 1)[0] == hang_at


def test_scattered_completions_block_admission_and_metadata_stays_in_budget(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    """Every other offset stuck: the completed map would outgrow 4,096 bytes.

    The partition stops fetching once the map nears the budget, every committed
    metadata string stays within it, and fetching resumes once the map shrinks.
    """
    topic = make_topic(partitions=1)
    total = 30_000
    produced = produce_keyed(topic, total, keys=1000)
    gate: dict[str, Any] = {}

    async def even_offsets_wait(msg: Message) -> None:
        if msg.offset % 2 == 0:
            if "event" not in gate:
                gate["loop"] = asyncio.get_running_loop()
                gate["event"] = asyncio.Event()
            await gate["event"].wait()

    audit = Audit()
    cfg = config(bootstrap, group_id, [topic], ordering="unordered", max_in_flight_messages=50_000)
    consumer = ParallelConsumer(cfg, audited(audit, before=even_offsets_wait))
    sizes: list[int] = []
    with running(consumer):
        wait_until(
            lambda: consumer.get_metrics().counters["admission_blocks"] >= 1,
            timeout=120,
            message=lambda: f"admission to block ({audit.processed} done)",
        )
        for _ in range(5):
            tp = _committed_tp(bootstrap, group_id, topic, 0)
            sizes.append(len((tp.metadata or "").encode()))
            time.sleep(0.3)
        fetched_while_blocked = consumer.get_metrics().partitions[(topic, 0)].last_fetched_offset
        gate["loop"].call_soon_threadsafe(gate["event"].set)
        wait_committed(consumer, topic, produced.end_offsets, timeout=120)
        counters = consumer.get_metrics().counters
    assert max(sizes) <= 4096
    assert max(sizes) > 1000, "the map was large, so the budget mattered"
    assert fetched_while_blocked is not None and fetched_while_blocked < total - 1
    assert counters["admission_unblocks"] >= 1
    report = audit.report({(topic, 0): [r.offset for r in produced.records]})
    assert report.lost == 0
