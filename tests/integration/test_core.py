"""Issue 2 acceptance on the real broker: order, commits, backpressure, sparse offsets."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from pyrallel import HandlerError, Message, ParallelConsumer
from pyrallel.audit import Audit
from tests.support.consuming import audited, committed, config, end_offsets, running, wait_committed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


def test_key_order_and_commits_with_random_latency(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=4)
    produced = produce_keyed(topic, 20_000, keys=200)
    audit = Audit()
    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], max_in_flight_messages=1000),
        audited(audit, (0.0, 0.005)),
    )
    with running(consumer):
        wait_until(
            lambda: audit.processed >= 20_000,
            timeout=120,
            message=lambda: f"{audit.processed} processed",
        )
        wait_committed(consumer, topic, produced.end_offsets)
    report = audit.report(
        {(topic, r.partition): [r.offset] for r in produced.records}
        | _by_partition(topic, produced)
    )
    assert report.lost == 0
    assert report.overlaps == 0
    assert report.ordering_violations == 0
    assert report.duplicates == 0
    assert committed(bootstrap, group_id, topic, 4) == produced.end_offsets


def _by_partition(topic: str, produced: Any) -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = {}
    for r in produced.records:
        out.setdefault((topic, r.partition), []).append(r.offset)
    return out


def test_backpressure_bounds_in_flight_and_slow_work_is_not_evicted(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=2)
    produced = produce_keyed(topic, 600, keys=100)
    running_now = 0
    peak_running = 0
    lock = threading.Lock()

    async def slow(msg: Message) -> None:
        nonlocal running_now, peak_running
        with lock:
            running_now += 1
            peak_running = max(peak_running, running_now)
        await asyncio.sleep(1.0)
        with lock:
            running_now -= 1

    consumer = ParallelConsumer(
        config(
            bootstrap, group_id, [topic], max_in_flight_messages=50, max_poll_interval_ms=10_000
        ),
        slow,
    )
    peak_in_flight = 0
    saw_paused = False
    started = time.monotonic()
    with running(consumer):
        deadline = started + 60
        while time.monotonic() < deadline:
            snap = consumer.get_metrics()
            peak_in_flight = max(peak_in_flight, snap.total_in_flight)
            saw_paused = saw_paused or snap.is_paused
            if snap.counters["processed"] >= 600:
                break
            time.sleep(0.01)
        wait_committed(consumer, topic, produced.end_offsets)
        snap = consumer.get_metrics()
    elapsed = time.monotonic() - started
    assert elapsed > 10, "the run must outlast max.poll.interval.ms=10000 to prove anything"
    assert peak_in_flight <= 50
    assert peak_running <= 50
    assert saw_paused
    assert snap.counters["pauses"] >= 1 and snap.counters["resumes"] >= 1
    # One assignment, never revoked or lost: the slow run did not get us evicted.
    assert snap.counters["assigned"] == 2
    assert snap.counters["revoked"] == 0 and snap.counters["lost"] == 0


def test_transactional_topic_commits_reach_end_offsets(
    bootstrap: str, make_topic: Any, make_producer: Any, group_id: str, unique_name: Any
) -> None:
    """C1: control records take offsets; the commit must still reach the end offset."""
    topic = make_topic(partitions=2)
    producer = make_producer(**{"transactional.id": unique_name("tx")})
    producer.init_transactions(30)
    expected = 0
    for txn in range(6):
        producer.begin_transaction()
        for i in range(50):
            producer.produce(topic, key=f"k{i % 7}".encode(), value=f"{txn}-{i}".encode())
        if txn == 3:
            producer.abort_transaction(30)  # aborted records are never delivered
        else:
            producer.commit_transaction(30)
            expected += 50
    ends = wait_until(
        lambda: _stable_ends(bootstrap, topic), timeout=30, message="stable end offsets"
    )
    audit = Audit()
    consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), audited(audit))
    with running(consumer):
        wait_until(
            lambda: audit.processed >= expected,
            timeout=60,
            message=lambda: f"{audit.processed}/{expected}",
        )
        wait_committed(consumer, topic, ends)
    assert audit.processed == expected
    assert committed(bootstrap, group_id, topic, 2) == ends


def _stable_ends(bootstrap: str, topic: str) -> dict[int, int] | None:
    first = end_offsets(bootstrap, topic, 2)
    time.sleep(0.3)
    second = end_offsets(bootstrap, topic, 2)
    return first if first == second and all(v > 0 for v in first.values()) else None


def test_latest_reset_group_joining_mid_stream_commits_from_first_fetch(
    bootstrap: str, make_topic: Any, make_producer: Any, group_id: str
) -> None:
    """C2: auto.offset.reset=latest while producers write: commits advance and reach the end."""
    topic = make_topic(partitions=2)
    producer = make_producer({"linger.ms": 1})
    stop = threading.Event()
    sent = 0

    def produce() -> None:
        nonlocal sent
        while not stop.is_set():
            producer.produce(topic, key=f"k{sent % 11}".encode(), value=b"x")
            sent += 1
            producer.poll(0)
            time.sleep(0.002)
        producer.flush(10)

    for i in range(500):  # history the new group must not read
        producer.produce(topic, key=b"old", value=str(i).encode())
    producer.flush(10)
    writer = threading.Thread(target=produce)
    writer.start()
    audit = Audit()
    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], kafka={"auto.offset.reset": "latest"}), audited(audit)
    )
    try:
        with running(consumer):
            wait_until(
                lambda: audit.processed > 200, timeout=60, message="records fetched mid-stream"
            )
            first = {
                p: m.committed_offset for (t, p), m in consumer.get_metrics().partitions.items()
            }
            stop.set()
            writer.join()
            ends = end_offsets(bootstrap, topic, 2)
            wait_committed(consumer, topic, ends)
    finally:
        stop.set()
        writer.join()
    report = audit.report({})
    assert report.ordering_violations == 0 and report.overlaps == 0
    assert committed(bootstrap, group_id, topic, 2) == ends
    assert audit.processed < sent + 500  # it did not start from the beginning
    assert all(v is None or v > 0 for v in first.values())


def test_restart_resumes_at_committed_offsets(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=3)
    produced = produce_keyed(topic, 3000, keys=30)
    audit = Audit()
    first = ParallelConsumer(config(bootstrap, group_id, [topic]), audited(audit, (0.0, 0.002)))
    with running(first):
        wait_until(lambda: audit.processed >= 1000, timeout=60, message="half-way")
    between = committed(bootstrap, group_id, topic, 3)
    assert sum(between.values()) >= 1, "the first consumer committed something"
    assert all(between[p] <= produced.end_offsets[p] for p in between)
    second = ParallelConsumer(config(bootstrap, group_id, [topic]), audited(audit))
    with running(second):
        wait_committed(second, topic, produced.end_offsets)
    report = audit.report(_by_partition(topic, produced))
    assert report.lost == 0
    # Re-runs are bounded by what was in flight when the first consumer stopped.
    assert report.duplicates <= 1000


def test_handler_error_stops_with_coordinates_and_commits_nothing_past_it(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    """C5: no DLQ, default policy: stop; the failed offset is never committed as done."""
    topic = make_topic(partitions=1)
    produce_keyed(topic, 200, keys=5)
    failing_offset = 57

    async def handle(msg: Message) -> None:
        if msg.offset == failing_offset:
            raise ValueError("boom")

    consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), handle)
    consumer.start()
    assert consumer.wait(60), "the consumer should stop by itself"
    with pytest.raises(HandlerError) as info:
        consumer.stop()
    err = info.value
    assert (err.topic, err.partition, err.offset) == (topic, 0, failing_offset)
    assert f"offset={failing_offset}" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert committed(bootstrap, group_id, topic, 1)[0] <= failing_offset


def test_partition_order_keeps_every_partition_busy_under_backlog(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    """A window filled by one partition's backlog must not serialise the others."""
    topic = make_topic(partitions=4)
    produce_keyed(topic, 8000, keys=400)
    running_parts: dict[int, int] = {}
    peak = 0
    lock = threading.Lock()
    done = 0

    async def handle(msg: Message) -> None:
        nonlocal peak, done
        with lock:
            running_parts[msg.partition] = running_parts.get(msg.partition, 0) + 1
            assert running_parts[msg.partition] == 1, "partition order: one at a time"
            peak = max(peak, sum(1 for n in running_parts.values() if n))
        await asyncio.sleep(0.005)
        with lock:
            running_parts[msg.partition] -= 1
            done += 1

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], ordering="partition", max_in_flight_messages=400),
        handle,
    )
    with running(consumer):
        wait_until(lambda: done >= 400, timeout=60, message=lambda: f"{done} processed")
        share_pauses = consumer.get_metrics().counters["share_pauses"]
    assert peak >= 3, f"only {peak} partition(s) ever ran at once"
    assert share_pauses >= 1
