"""Issue 3 acceptance on the real broker: retries, dead letters, skip, timeouts.

Every wait is a deadline (``wait_until``); timestamps recorded by the handlers prove
what ran when, so no test relies on a sleep for synchronisation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from pyrallel import Message, ParallelConsumer
from pyrallel.audit import Audit
from tests.support.consuming import committed, config, end_offsets, running, wait_committed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker

PREFIX = "pyrallel."


class Boom(Exception):
    """The handler's own error type: its module-qualified name must reach the DLQ."""


@dataclass
class Call:
    offset: int
    partition: int
    key: bytes | None
    attempt: int
    started: float  # monotonic
    started_wall_ms: float = 0.0
    ended: float = 0.0  # monotonic
    failed_wall_ms: float = 0.0  # time.time() * 1000 when it raised
    ok: bool = False


@dataclass
class Calls:
    """Thread-safe record of every handler call."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: list[Call] = field(default_factory=list)

    def begin(self, msg: Message) -> Call:
        call = Call(
            msg.offset, msg.partition, msg.key, msg.attempt, time.monotonic(), time.time() * 1000
        )
        with self.lock:
            self.calls.append(call)
        return call

    def end(self, call: Call, ok: bool) -> None:
        call.ended = time.monotonic()
        call.ok = ok
        if not ok:
            call.failed_wall_ms = time.time() * 1000

    def of(self, partition: int, offset: int) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if (c.partition, c.offset) == (partition, offset)]

    def succeeded(self) -> set[tuple[int, int]]:
        with self.lock:
            return {(c.partition, c.offset) for c in self.calls if c.ok}

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


def recording(calls: Calls, body: Callable[[Message], Any]) -> Callable[[Message], Any]:
    """An async handler that records each call and runs ``body`` (sync or async)."""

    async def handle(msg: Message) -> None:
        call = calls.begin(msg)
        ok = False
        try:
            result = body(msg)
            if asyncio.iscoroutine(result):
                await result
            ok = True
        finally:
            calls.end(call, ok)

    return handle


def read_topic(
    make_consumer: Any, unique_name: Any, topic: str, count: int, timeout: float = 30
) -> list[Any]:
    """Read ``count`` records of partition 0 of ``topic`` from the beginning (raw client)."""
    reader = make_consumer({"group.id": unique_name("reader")})
    reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    records: list[Any] = []

    def got_all() -> bool:
        for rec in reader.consume(count, 0.2):
            assert rec.error() is None, rec.error()
            records.append(rec)
        return len(records) >= count

    wait_until(got_all, timeout=timeout, message=lambda: f"{len(records)}/{count} from {topic}")
    reader.close()
    assert len(records) == count
    return records


def headers_of(rec: Any) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in rec.headers() or []:
        assert key not in out, f"header {key} repeated"
        out[key] = value
    return out


def pyrallel_headers(rec: Any) -> dict[str, bytes]:
    return {k[len(PREFIX) :]: v for k, v in headers_of(rec).items() if k.startswith(PREFIX)}


def qualname(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


# -- 1: DLQ after retries, other keys not held ---------------------------------------------


def test_failing_key_is_dead_lettered_after_retries_and_other_keys_flow(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    make_consumer: Any,
    group_id: str,
    unique_name: Any,
) -> None:
    topic = make_topic(partitions=2)
    dlq = make_topic(name=f"{topic}.dlq")
    produced = produce_keyed(topic, 100, keys=10, value=lambda i: f"value-{i}".encode())
    by_coord = {(r.partition, r.offset): r for r in produced.records}
    bad = sorted((r.partition, r.offset) for r in produced.records if r.key == b"k3")
    good = set(by_coord) - set(bad)
    assert len(bad) == 10
    calls = Calls()

    def body(msg: Message) -> None:
        if msg.key == b"k3":
            raise Boom(f"boom at offset {msg.offset}")

    consumer = ParallelConsumer(
        config(
            bootstrap,
            group_id,
            [topic],
            on_failure="dlq",
            max_retries=2,
            retry_backoff_ms=100,
            retry_backoff_max_ms=200,
        ),
        recording(calls, body),
    )
    started_ms = time.time() * 1000
    with running(consumer):
        wait_until(
            lambda: good <= calls.succeeded(),
            timeout=60,
            message=lambda: f"{len(good & calls.succeeded())}/{len(good)} good offsets",
        )
        # Every other key is done while k3 (10 records, ~300 ms of backoff each, one at a
        # time in its lane) is still being retried: its failures do not hold them.
        at_good_done = consumer.get_metrics()
        assert at_good_done.counters["dead_lettered"] < len(bad)
        wait_until(
            lambda: consumer.get_metrics().counters["dead_lettered"] == len(bad),
            timeout=60,
            message=lambda: f"dead letters: {consumer.get_metrics().counters}",
        )
        wait_committed(consumer, topic, produced.end_offsets)
        snap = consumer.get_metrics()
    finished_ms = time.time() * 1000

    all_calls = calls.snapshot()
    last_good_end = max(c.ended for c in all_calls if (c.partition, c.offset) in good)
    last_bad_start = max(c.started for c in all_calls if (c.partition, c.offset) in bad)
    assert last_good_end < last_bad_start, "other keys waited for k3's retries"

    for coord in good:
        assert [c.attempt for c in calls.of(*coord)] == [1], coord
    for coord in bad:
        attempts = calls.of(*coord)
        assert [c.attempt for c in attempts] == [1, 2, 3], (coord, attempts)
        assert not any(c.ok for c in attempts)

    assert snap.counters["failed"] == 3 * len(bad)
    assert snap.counters["retried"] == 2 * len(bad)
    assert snap.counters["dead_lettered"] == len(bad)
    assert snap.counters["dlq_failures"] == 0
    assert snap.counters["skipped_failures"] == 0

    records = read_topic(make_consumer, unique_name, dlq, len(bad))
    assert end_offsets(bootstrap, dlq, 1) == {0: len(bad)}, "exactly one DLQ record each"
    seen = []
    for rec in records:
        h = pyrallel_headers(rec)
        assert set(h) == {
            "original.topic",
            "original.partition",
            "original.offset",
            "original.key",
            "exception.type",
            "exception.message",
            "attempts",
            "first.failure.ms",
            "last.failure.ms",
        }
        coord = (int(h["original.partition"]), int(h["original.offset"]))
        seen.append(coord)
        source = by_coord[coord]
        assert h["original.topic"] == topic.encode()
        assert h["original.key"] == b"k3"
        assert h["exception.type"].decode() == qualname(Boom)
        assert h["exception.type"].decode().endswith("test_failures.Boom")
        assert h["exception.message"] == f"boom at offset {coord[1]}".encode()
        assert h["attempts"] == b"3"
        first, last = int(h["first.failure.ms"]), int(h["last.failure.ms"])
        attempts = calls.of(*coord)
        assert started_ms - 1 <= first <= last <= finished_ms + 1
        # first = the first attempt's failure, last = the final one's.
        assert attempts[0].failed_wall_ms - 1 <= first
        assert first <= attempts[1].started_wall_ms + 1
        assert last >= attempts[2].failed_wall_ms - 1
        assert last - first >= 0.8 * (100 + 200), "two backoffs lie between first and last"
        assert rec.key() == source.key
        assert rec.value() == source.value
    assert sorted(seen) == bad

    assert committed(bootstrap, group_id, topic, 2) == produced.end_offsets


# -- 2: per-key order while a key retries ------------------------------------------------


def test_key_order_holds_while_an_offset_is_retried(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=1)
    produced = produce_keyed(topic, 60, keys=3)
    k1 = [r.offset for r in produced.records if r.key == b"k1"]
    target = k1[1]  # one earlier k1 offset, many later ones
    later = [o for o in k1 if o > target]
    calls = Calls()
    audit = Audit()

    async def body(msg: Message) -> None:
        audit.begin(msg.topic, msg.partition, msg.offset, msg.key)
        try:
            await asyncio.sleep(0.002)
            if msg.offset == target and msg.attempt <= 2:
                raise Boom(f"transient {msg.attempt}")
        finally:
            audit.end(msg.topic, msg.partition, msg.offset, msg.key)

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], max_retries=3, retry_backoff_ms=100),
        recording(calls, body),
    )
    with running(consumer):
        wait_committed(consumer, topic, produced.end_offsets)
        snap = consumer.get_metrics()

    tries = calls.of(0, target)
    assert [(c.attempt, c.ok) for c in tries] == [(1, False), (2, False), (3, True)]
    success_end = tries[-1].ended
    for offset in later:
        (call,) = calls.of(0, offset)
        assert call.started >= success_end, f"k1 offset {offset} started before {target} succeeded"
    # Only k1 was held: other keys' later offsets ran while the target was retrying.
    others_during = [
        c
        for c in calls.snapshot()
        if c.key != b"k1" and c.offset > target and c.started < tries[-1].started
    ]
    assert others_during, "other keys were held by k1's retries"
    report = audit.report({(topic, 0): [r.offset for r in produced.records]})
    assert report.lost == 0
    assert report.ordering_violations == 0
    assert report.overlaps == 0
    assert snap.counters["failed"] == 2
    assert snap.counters["retried"] == 2
    assert snap.counters["dead_lettered"] == 0 and snap.counters["skipped_failures"] == 0
    assert committed(bootstrap, group_id, topic, 1) == produced.end_offsets


# -- 3: DLQ refuses the write --------------------------------------------------------------


def test_unwritable_dlq_keeps_offset_uncommitted_until_it_recovers(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    make_consumer: Any,
    admin: Any,
    group_id: str,
    unique_name: Any,
) -> None:
    topic = make_topic(partitions=1)
    # The broker refuses any batch above 100 bytes: MSG_SIZE_TOO_LARGE.
    dlq = make_topic(name=f"{topic}.dlq", config={"max.message.bytes": "100"})
    produced = produce_keyed(topic, 20, keys=4, value=lambda i: b"x" * 1000 + str(i).encode())
    end = produced.end_offsets
    failing = 5
    calls = Calls()

    def body(msg: Message) -> None:
        if msg.offset == failing:
            raise Boom("cannot handle")

    consumer = ParallelConsumer(
        config(
            bootstrap,
            group_id,
            [topic],
            on_failure="dlq",
            retry_backoff_ms=100,
            retry_backoff_max_ms=500,
        ),
        recording(calls, body),
        dlq_kafka={"message.timeout.ms": 5000},
    )
    failing_key = next(r.key for r in produced.records if r.offset == failing)
    # Later records of the failing key wait in its lane until the DLQ write lands.
    others = {(0, r.offset) for r in produced.records if r.key != failing_key}
    with running(consumer):
        # Everything else is done and committed up to the stuck offset; the DLQ write
        # has been refused, and retried.
        def stuck() -> bool:
            snap = consumer.get_metrics()
            part = snap.partitions.get((topic, 0))
            return (
                others <= calls.succeeded()
                and snap.counters["dlq_failures"] >= 2
                and part is not None
                and part.committed_offset == failing
            )

        wait_until(stuck, timeout=60, message=lambda: f"stuck at {failing}: {_state(consumer)}")
        snap = consumer.get_metrics()
        part = snap.partitions[(topic, 0)]
        assert part.blocking_offset == failing
        assert part.committed_offset is not None and part.committed_offset <= failing
        assert part.blocking_duration_sec > 0
        assert snap.counters["dead_lettered"] == 0
        assert snap.running and consumer.error is None
        assert committed(bootstrap, group_id, topic, 1)[0] <= failing
        assert end_offsets(bootstrap, dlq, 1) == {0: 0}
        assert [c.attempt for c in calls.of(0, failing)] == [1], "the handler is not re-run"

        resource = ConfigResource(
            ResourceType.TOPIC,
            dlq,
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes",
                    "1048588",
                    incremental_operation=AlterConfigOpType.SET,
                )
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=30)

        wait_until(
            lambda: consumer.get_metrics().counters["dead_lettered"] == 1,
            timeout=60,
            message=lambda: f"DLQ recovered: {_state(consumer)}",
        )
        wait_committed(consumer, topic, end)
        assert calls.succeeded() == {(0, o) for o in range(end[0])} - {(0, failing)}
        failures_before = consumer.get_metrics().counters["dlq_failures"]
    assert failures_before >= 2
    assert committed(bootstrap, group_id, topic, 1) == end
    (rec,) = read_topic(make_consumer, unique_name, dlq, 1)
    h = pyrallel_headers(rec)
    assert h["original.offset"] == str(failing).encode()
    assert h["attempts"] == b"1"
    assert h["exception.type"].decode() == qualname(Boom)
    source = next(r for r in produced.records if r.offset == failing)
    assert rec.value() == source.value and rec.key() == source.key


def _state(consumer: ParallelConsumer) -> str:
    snap = consumer.get_metrics()
    parts = {
        k: (p.blocking_offset, p.committed_offset, p.in_flight) for k, p in snap.partitions.items()
    }
    return f"counters={snap.counters} parts={parts} error={consumer.error!r}"


# -- 4: skip ---------------------------------------------------------------------------------


def test_skip_commits_past_failure_counts_and_logs_coordinates(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    group_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = make_topic(partitions=1)
    produced = produce_keyed(topic, 20, keys=4)
    failing = 7
    calls = Calls()

    def body(msg: Message) -> None:
        if msg.offset == failing:
            raise Boom("skip me")

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], on_failure="skip", max_retries=1, retry_backoff_ms=50),
        recording(calls, body),
    )
    with caplog.at_level(logging.WARNING, logger="pyrallel"), running(consumer):
        wait_committed(consumer, topic, produced.end_offsets)
        snap = consumer.get_metrics()
    assert [(c.attempt, c.ok) for c in calls.of(0, failing)] == [(1, False), (2, False)]
    assert calls.succeeded() == {(0, o) for o in range(produced.end_offsets[0])} - {(0, failing)}
    assert snap.counters["skipped_failures"] == 1
    assert snap.counters["failed"] == 2 and snap.counters["retried"] == 1
    assert snap.counters["dead_lettered"] == 0
    assert consumer.error is None
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name.startswith("pyrallel")
        and f"topic={topic}" in r.getMessage()
        and "partition=0" in r.getMessage()
        and f"offset={failing}" in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert committed(bootstrap, group_id, topic, 1) == produced.end_offsets


# -- 5: handler timeouts ---------------------------------------------------------------------


def _watch_blocking(consumer: ParallelConsumer, topic: str, offset: int, timeout: float) -> float:
    """Sample the metrics until ``offset`` is dead-lettered; the longest blocking seen."""
    longest = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = consumer.get_metrics()
        part = snap.partitions.get((topic, 0))
        if part is not None and part.blocking_offset == offset:
            longest = max(longest, part.blocking_duration_sec)
        if snap.counters["dead_lettered"] >= 1:
            return longest
        time.sleep(0.01)  # sampling period, not synchronisation
    raise AssertionError(f"offset {offset} not dead-lettered in {timeout} s: {_state(consumer)}")


def _check_timeout_dlq(
    make_consumer: Any, unique_name: Any, dlq: str, topic: str, offset: int
) -> None:
    (rec,) = read_topic(make_consumer, unique_name, dlq, 1)
    h = pyrallel_headers(rec)
    assert h["exception.type"] == b"pyrallel.errors.HandlerTimeoutError"
    assert b"handler_timeout_ms=500" in h["exception.message"]
    assert (h["original.topic"], h["original.offset"]) == (topic.encode(), str(offset).encode())
    assert h["attempts"] == b"2"


def test_async_handler_timeout_is_retried_then_dead_lettered(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    make_consumer: Any,
    group_id: str,
    unique_name: Any,
) -> None:
    topic = make_topic(partitions=1)
    dlq = make_topic(name=f"{topic}.dlq")
    produced = produce_keyed(topic, 30, keys=5)
    hang = 7
    calls = Calls()
    cancelled = 0

    async def body(msg: Message) -> None:
        nonlocal cancelled
        if msg.offset == hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled += 1
                raise

    consumer = ParallelConsumer(
        config(
            bootstrap,
            group_id,
            [topic],
            on_failure="dlq",
            max_retries=1,
            retry_backoff_ms=50,
            handler_timeout_ms=500,
        ),
        recording(calls, body),
    )
    with running(consumer):
        longest = _watch_blocking(consumer, topic, hang, timeout=30)
        wait_committed(consumer, topic, produced.end_offsets)
        # It keeps going: records produced after the dead letter are processed too.
        more = produce_keyed(topic, 10, keys=5)
        wait_committed(consumer, topic, more.end_offsets)
        snap = consumer.get_metrics()
    assert longest > 0.4, f"blocking_duration_sec peaked at {longest}"
    tries = calls.of(0, hang)
    assert [(c.attempt, c.ok) for c in tries] == [(1, False), (2, False)]
    for c in tries:
        assert 0.45 <= c.ended - c.started < 5, "each attempt ended by the timeout"
    assert cancelled == 2, "the hung coroutine is cancelled at the timeout"
    assert calls.succeeded() == {(0, o) for o in range(more.end_offsets[0])} - {(0, hang)}
    assert snap.counters["dead_lettered"] == 1 and snap.counters["retried"] == 1
    _check_timeout_dlq(make_consumer, unique_name, dlq, topic, hang)
    assert committed(bootstrap, group_id, topic, 1) == more.end_offsets


def test_thread_handler_timeout_is_dead_lettered_and_stop_does_not_deadlock(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    make_consumer: Any,
    group_id: str,
    unique_name: Any,
) -> None:
    topic = make_topic(partitions=1)
    dlq = make_topic(name=f"{topic}.dlq")
    produced = produce_keyed(topic, 30, keys=5)
    hang = 7
    release = threading.Event()
    calls = Calls()

    def handle(msg: Message) -> None:
        call = calls.begin(msg)
        ok = False
        try:
            if msg.offset == hang:
                release.wait(120)  # blocks its thread: threads cannot be cancelled
                raise Boom("released after the test")
            ok = True
        finally:
            calls.end(call, ok)

    consumer = ParallelConsumer(
        config(
            bootstrap,
            group_id,
            [topic],
            engine="thread",
            thread_count=8,
            on_failure="dlq",
            max_retries=1,
            retry_backoff_ms=50,
            handler_timeout_ms=500,
        ),
        handle,
    )
    stopper: threading.Thread | None = None
    try:
        consumer.start()
        longest = _watch_blocking(consumer, topic, hang, timeout=30)
        wait_committed(consumer, topic, produced.end_offsets)
        more = produce_keyed(topic, 10, keys=5)
        wait_committed(consumer, topic, more.end_offsets)
        snap = consumer.get_metrics()
        # Both attempts are still blocked in their threads: stop() must not wait for them.
        assert len(calls.of(0, hang)) == 2 and all(c.ended == 0.0 for c in calls.of(0, hang))
        stop_error: list[BaseException] = []

        def stop() -> None:
            try:
                consumer.stop(timeout=5)
            except BaseException as exc:
                stop_error.append(exc)

        stopper = threading.Thread(target=stop, name="test-stopper", daemon=True)
        began = time.monotonic()
        stopper.start()
        stopper.join(30)
        assert not stopper.is_alive(), "stop() deadlocked on a hung handler thread"
        assert time.monotonic() - began < 15
        assert not stop_error, stop_error
        assert not consumer.is_running
    finally:
        release.set()
        if stopper is None:
            consumer.stop(timeout=5)
    assert longest > 0.4, f"blocking_duration_sec peaked at {longest}"
    assert [c.attempt for c in calls.of(0, hang)] == [1, 2]
    assert calls.succeeded() == {(0, o) for o in range(more.end_offsets[0])} - {(0, hang)}
    assert snap.counters["dead_lettered"] == 1 and snap.counters["retried"] == 1
    _check_timeout_dlq(make_consumer, unique_name, dlq, topic, hang)
    assert committed(bootstrap, group_id, topic, 1) == more.end_offsets
    # The late results of the released threads are ignored: nothing more was recorded.
    wait_until(lambda: all(c.ended for c in calls.of(0, hang)), timeout=10, message="released")
    assert consumer.get_metrics().counters["dead_lettered"] == 1


# -- 6: deserialiser-style error -------------------------------------------------------------


def test_malformed_value_goes_to_dlq_alone(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    make_consumer: Any,
    group_id: str,
    unique_name: Any,
) -> None:
    topic = make_topic(partitions=1)
    dlq = make_topic(name=f"{topic}.dlq")
    bad_index = 9
    produced = produce_keyed(
        topic,
        30,
        keys=3,
        value=lambda i: b"{not json" if i == bad_index else json.dumps({"i": i}).encode(),
    )
    bad = produced.records[bad_index]
    assert bad.value == b"{not json"
    parsed: list[int] = []
    lock = threading.Lock()

    async def handle(msg: Message) -> None:
        assert msg.value is not None
        doc = json.loads(msg.value)
        with lock:
            parsed.append(doc["i"])

    consumer = ParallelConsumer(config(bootstrap, group_id, [topic], on_failure="dlq"), handle)
    with running(consumer):
        wait_until(
            lambda: consumer.get_metrics().counters["dead_lettered"] == 1,
            timeout=60,
            message=lambda: _state(consumer),
        )
        wait_committed(consumer, topic, produced.end_offsets)
        snap = consumer.get_metrics()
    assert sorted(parsed) == [i for i in range(30) if i != bad_index]
    assert snap.counters["failed"] == 1 and snap.counters["dead_lettered"] == 1
    (rec,) = read_topic(make_consumer, unique_name, dlq, 1)
    h = pyrallel_headers(rec)
    assert h["exception.type"] == qualname(json.JSONDecodeError).encode()
    assert h["exception.type"] == b"json.decoder.JSONDecodeError"
    assert h["original.offset"] == str(bad.offset).encode()
    assert h["attempts"] == b"1"
    assert rec.value() == b"{not json" and rec.key() == bad.key
    assert committed(bootstrap, group_id, topic, 1) == produced.end_offsets
