"""Field cases C6, C8, C11, C12 (/work/shared/cases/README.md) on the real broker.

Each test asserts exact values (committed offsets, commit metadata, counters, which
offsets ran and how often), so it fails when the behaviour it names is broken:

* C8  - stop while handlers run: the drain waits for them, then the final commit.
* C11 - revoke while messages are in flight: finished work is committed before the revoke
  returns; results that arrive after it are fenced and never committed.
* C12 - records polled but never processed when the process is SIGKILLed: never committed,
  never claimed done in the commit metadata; a new consumer runs exactly those.
* C6  - the dead-letter topic is missing on a broker that refuses to auto-create topics:
  the failing offset stays uncommitted until the topic exists and the write is confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devtools.kafka_broker import KafkaBroker
from pyrallel import Message, ParallelConsumer
from pyrallel.offsets import metadata as codec
from tests.support.consuming import config, end_offsets, running, wait_committed
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker

REPO_ROOT = Path(__file__).resolve().parents[2]


def _committed_tps(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, TopicPartition]:
    """The broker's committed offsets of ``group``, with their metadata, per partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    try:
        # A coordinator still loading (a fresh broker) answers NOT_COORDINATOR: ask again.
        got: list[TopicPartition] = wait_until(
            lambda: c.committed(tps, timeout=15),
            timeout=30,
            message=f"committed offsets of {group}",
            ignore=(KafkaException,),
        )
        return {tp.partition: tp for tp in got}
    finally:
        c.close()


def _offsets(bootstrap: str, group: str, topic: str, partitions: int = 1) -> dict[int, int]:
    return {p: tp.offset for p, tp in _committed_tps(bootstrap, group, topic, partitions).items()}


def _done_offsets(tp: TopicPartition) -> set[int]:
    """Offsets the commit metadata of ``tp`` claims finished (above its offset)."""
    ranges = codec.decode(tp.metadata, tp.offset)
    assert ranges is not None, f"not Pyrallel metadata at {tp.offset}: {tp.metadata!r}"
    return {o for lo, hi in ranges for o in range(lo, hi + 1)}


def _produce_to_partitions(
    bootstrap: str, topic: str, per_partition: int, partitions: int, keys: int
) -> None:
    """``per_partition`` records into each partition; record ``i`` has key ``k{i % keys}``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors: list[Any] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for p in range(partitions):
        for i in range(per_partition):
            producer.produce(
                topic,
                key=f"k{i % keys}".encode(),
                value=str(i).encode(),
                partition=p,
                on_delivery=report,
            )
    assert producer.flush(30) == 0
    assert not errors, errors[:5]


# -- C8: stop while handlers are running ---------------------------------------------------


def test_c8_stop_drains_running_handlers_then_commits_the_end(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=1)
    produced = produce_keyed(topic, 100, keys=100)
    assert produced.end_offsets == {0: 100}
    lock = threading.Lock()
    started: set[int] = set()
    finished: dict[int, float] = {}

    async def one_second(msg: Message) -> None:
        with lock:
            started.add(msg.offset)
        await asyncio.sleep(1.0)
        with lock:
            finished[msg.offset] = time.monotonic()

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], ordering="unordered", max_in_flight_messages=200),
        one_second,
    )
    consumer.start()
    try:
        wait_until(
            lambda: len(started) == 100,
            timeout=30,
            interval=0.01,
            message=lambda: f"all 100 handlers started ({len(started)})",
        )
        with lock:
            finished_before_stop = len(finished)
        began = time.monotonic()
    except BaseException:
        consumer.stop(timeout=1)
        raise
    consumer.stop(timeout=10)
    took = time.monotonic() - began
    # The precondition: work really was in flight when stop() was called.
    assert finished_before_stop < 100
    assert sorted(finished) == list(range(100)), "stop() did not let running handlers finish"
    assert any(t >= began for t in finished.values())
    assert took < 10, f"stop took {took:.2f} s"
    tp = _committed_tps(bootstrap, group_id, topic, 1)[0]
    assert tp.offset == 100, "the final commit is the end offset: everything finished"
    assert codec.decode(tp.metadata, tp.offset) == []


# -- C11: revoke while messages are in flight ----------------------------------------------


def test_c11_revoke_commits_finished_work_before_returning_and_fences_late_results(
    bootstrap: str, make_topic: Any, group_id: str
) -> None:
    """Eager (range) rebalance: A loses both partitions, then gets one back.

    Per partition: 100 records, key ``k{i % 10}``. Offset 50 (key k0) is slow: its first
    call (on A) outlasts the revoke grace and returns only when the test says so; every
    later call of it blocks until teardown, so its later k0 records (60, 70, 80, 90) wait
    in their lane and nothing else can finish after the revoke. With periodic commits
    every 60 s, only the revoke's synchronous commit can put anything on the broker.
    """
    topic = make_topic(partitions=2)
    per_partition, slow = 100, 50
    _produce_to_partitions(bootstrap, topic, per_partition, 2, keys=10)
    behind_slow = {o for o in range(slow + 1, per_partition) if o % 10 == slow % 10}
    expected_done = set(range(per_partition)) - {slow} - behind_slow

    lock = threading.Lock()
    calls: Counter[tuple[str, int, int]] = Counter()  # (who, partition, offset)
    finished: dict[str, set[tuple[int, int]]] = {"A": set(), "B": set()}
    first_slow_started: set[int] = set()
    late_release = threading.Event()  # lets A's first calls of offset 50 return
    late_returned: set[int] = set()
    gate = threading.Event()  # every later call of offset 50 waits for this (teardown)

    def handler(who: str) -> Any:
        def handle(msg: Message) -> None:
            coord = (msg.partition, msg.offset)
            with lock:
                calls[(who, *coord)] += 1
                first = msg.offset == slow and msg.partition not in first_slow_started
                if first:
                    first_slow_started.add(msg.partition)
            if msg.offset == slow:
                if first:
                    late_release.wait(30)
                    with lock:
                        late_returned.add(msg.partition)
                else:
                    gate.wait(60)
                return
            with lock:
                finished[who].add(coord)

        return handle

    cfg = config(
        bootstrap,
        group_id,
        [topic],
        engine="thread",
        thread_count=16,
        ordering="key",
        commit_interval_ms=60_000,
        max_revoke_grace_ms=300,
        kafka={"partition.assignment.strategy": "range"},
    )
    first = ParallelConsumer(cfg, handler("A"))
    second = ParallelConsumer(cfg, handler("B"))
    try:
        first.start()
        wait_until(
            lambda: (
                first.get_metrics().counters["processed"] == 2 * len(expected_done)
                and first_slow_started == {0, 1}
            ),
            timeout=45,
            message=lambda: f"A to finish its work: {first.get_metrics().counters}",
        )
        assert finished["A"] == {(p, o) for p in (0, 1) for o in expected_done}
        before = _committed_tps(bootstrap, group_id, topic, 2)
        assert {p: tp.offset for p, tp in before.items()} == {0: OFFSET_INVALID, 1: OFFSET_INVALID}

        second.start()
        wait_until(
            lambda: first.get_metrics().counters["revoked"] >= 1,
            timeout=45,
            message="A's revoke to return",
        )
        # The revoke has returned: its commit must already be on the broker.
        at_revoke = _committed_tps(bootstrap, group_id, topic, 2)
        assert {p: tp.offset for p, tp in at_revoke.items()} == {0: slow, 1: slow}, (
            "the revoke did not commit the finished work before returning"
        )
        for p, tp in at_revoke.items():
            assert _done_offsets(tp) == {o for o in expected_done if o > slow}, p
        assert first.get_metrics().counters["revoked"] == 2  # eager: both partitions
        assert not late_returned, "the slow calls were still running at the revoke"

        # Each partition's new owner skips what A finished and re-runs offset 50.
        wait_until(
            lambda: (
                sum(n for (_, _, o), n in calls.items() if o == slow) == 4
                and first.get_metrics().counters["skipped_done"]
                + second.get_metrics().counters["skipped_done"]
                == 2 * len([o for o in expected_done if o > slow])
            ),
            timeout=45,
            message=lambda: f"offset {slow} re-run by the new owners: {calls}",
        )
        assert calls[("A", 0, slow)] + calls[("A", 1, slow)] == 3  # 2 first calls + 1 re-run
        assert calls[("B", 0, slow)] + calls[("B", 1, slow)] == 1
        assert not finished["B"], "B re-ran work A had finished"
        processed_before = first.get_metrics().counters["processed"]

        late_release.set()  # A's stale calls return after their partitions were revoked
        wait_until(lambda: late_returned == {0, 1}, timeout=10, message="late calls returned")
        wait_until(
            lambda: first.get_metrics().counters["fenced"] >= 1,
            timeout=10,
            message=lambda: f"A to fence a late result: {first.get_metrics().counters}",
        )
        assert first.get_metrics().counters["processed"] == processed_before
        (kept,) = first.get_metrics().partitions.values()  # range: one partition each
        assert kept.blocking_offset == slow, "the late result completed the new assignment's 50"
        # Stop both (synchronous commits): the late result must not have been committed.
        first.stop(timeout=1)
        second.stop(timeout=1)
        final = _committed_tps(bootstrap, group_id, topic, 2)
        assert {p: tp.offset for p, tp in final.items()} == {0: slow, 1: slow}
        for p, tp in final.items():
            assert slow not in _done_offsets(tp), p
    finally:
        late_release.set()
        gate.set()
        for consumer in (first, second):
            with contextlib.suppress(Exception):
                consumer.stop(timeout=1)


# -- C12: SIGKILL while records are polled but not processed -------------------------------

_CRASH_CHILD = r"""
import asyncio, json, os, sys, threading, time
from pyrallel import ConsumerConfig, ParallelConsumer

bootstrap, group, topic, log_path, status_path, hang_from = sys.argv[1:7]
hang_from = int(hang_from)
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

async def handle(msg):
    os.write(log, f"start {msg.offset}\n".encode())
    if msg.offset >= hang_from:
        await asyncio.Event().wait()  # polled, dispatched, never processed
    os.write(log, f"done {msg.offset}\n".encode())

consumer = ParallelConsumer(
    ConsumerConfig(
        bootstrap_servers=bootstrap, group_id=group, topics=[topic], ordering="unordered",
        commit_interval_ms=200,
        kafka={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    ),
    handle,
)

def report():
    while True:
        part = consumer.get_metrics().partitions.get((topic, 0))
        state = {} if part is None else {
            "last_fetched": part.last_fetched_offset, "committed": part.committed_offset,
        }
        with open(status_path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(status_path + ".tmp", status_path)
        time.sleep(0.05)

threading.Thread(target=report, daemon=True).start()
consumer.run()
"""


def _read_status(path: Path) -> dict[str, Any]:
    try:
        result: dict[str, Any] = json.loads(path.read_text())
        return result
    except (OSError, ValueError):
        return {}


def test_c12_sigkill_never_commits_polled_but_unprocessed_records(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str, tmp_path: Path
) -> None:
    topic = make_topic(partitions=1)
    total, hang_from = 400, 100
    produced = produce_keyed(topic, total, keys=20)
    assert produced.end_offsets == {0: total}
    log_path, status_path = tmp_path / "victim.log", tmp_path / "victim.json"
    args = [
        sys.executable,
        "-c",
        _CRASH_CHILD,
        bootstrap,
        group_id,
        topic,
        str(log_path),
        str(status_path),
        str(hang_from),
    ]
    with (tmp_path / "victim.out").open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    samples: list[TopicPartition] = []
    try:

        def victim_stuck() -> bool:
            assert proc.poll() is None, (tmp_path / "victim.out").read_text()[-3000:]
            # Everything fetched and a commit confirmed at (or, wrongly, past) offset 100;
            # the exact values are asserted below, so a wrong commit fails there, fast.
            status = _read_status(status_path)
            if status.get("last_fetched") != total - 1 or status.get("committed") is None:
                return False
            return _committed_tps(bootstrap, group_id, topic, 1)[0].offset >= hang_from

        wait_until(
            victim_stuck,
            timeout=45,
            message=lambda: (
                f"the victim to fetch everything and commit {hang_from}: "
                f"{_read_status(status_path)}"
            ),
        )
        # Stuck with 300 records polled and dispatched but unfinished: let the 200 ms
        # committer run several times, checking every commit the broker holds meanwhile.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            samples.append(_committed_tps(bootstrap, group_id, topic, 1)[0])
            time.sleep(0.1)  # sampling period, not synchronisation
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    after = _committed_tps(bootstrap, group_id, topic, 1)[0]
    for tp in [*samples, after]:
        assert tp.offset == hang_from, f"committed {tp.offset}, records from {hang_from} unrun"
        claimed = _done_offsets(tp)
        assert not claimed, f"metadata claims never-processed offsets done: {sorted(claimed)}"

    lines = log_path.read_text().splitlines()
    done = [int(line.split()[1]) for line in lines if line.startswith("done ")]
    started = [int(line.split()[1]) for line in lines if line.startswith("start ")]
    assert sorted(done) == list(range(hang_from)), "the victim processed exactly 0..99"
    assert sorted(started) == list(range(total)), "every record was polled and dispatched"

    # A new member of the group runs exactly the records the victim never finished.
    lock = threading.Lock()
    runs: Counter[int] = Counter()

    async def record(msg: Message) -> None:
        with lock:
            runs[msg.offset] += 1

    successor = ParallelConsumer(config(bootstrap, group_id, [topic]), record)
    with running(successor):
        wait_committed(successor, topic, {0: total}, timeout=45)
        skipped = successor.get_metrics().counters["skipped_done"]
    assert sorted(runs) == list(range(hang_from, total))
    assert set(runs.values()) == {1}, {o: n for o, n in runs.items() if n != 1}
    assert skipped == 0
    assert _offsets(bootstrap, group_id, topic) == {0: total}


# -- C6: the dead-letter topic does not exist ----------------------------------------------


class _NoAutoCreateBroker(KafkaBroker):
    """A private broker with ``auto.create.topics.enable=false``, as in most production
    clusters. KafkaBroker has no option for extra server properties, so this appends one
    to the generated file (Java properties: the last value of a key wins)."""

    def _write_config(self) -> None:
        super()._write_config()
        with self.config_path.open("a") as f:
            f.write("auto.create.topics.enable=false\n")


@pytest.fixture
def no_autocreate_broker() -> Iterator[KafkaBroker]:
    broker = _NoAutoCreateBroker(start_timeout=45)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def _create_topic(admin: AdminClient, topic: str, partitions: int = 1) -> None:
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)

    def led() -> bool:
        meta = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
        return (
            meta is not None
            and meta.error is None
            and all(p.leader >= 0 for p in meta.partitions.values())
        )

    wait_until(led, timeout=30, message=f"{topic} led")


def _state(consumer: ParallelConsumer) -> str:
    snap = consumer.get_metrics()
    parts = {k: (p.blocking_offset, p.committed_offset) for k, p in snap.partitions.items()}
    return f"counters={snap.counters} parts={parts} error={consumer.error!r}"


def _topic_exists(admin: AdminClient, topic: str) -> bool:
    # A metadata request for all topics never creates one, whatever the broker settings.
    return topic in admin.list_topics(timeout=10).topics


def test_c6_missing_dlq_topic_holds_the_offset_until_the_topic_exists(
    no_autocreate_broker: KafkaBroker, unique_name: Any
) -> None:
    bootstrap = no_autocreate_broker.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic, group = unique_name("t"), unique_name("g")
    dlq = f"{topic}.dlq"
    _create_topic(admin, topic)
    total, failing, keys = 20, 5, 4
    _produce_to_partitions(bootstrap, topic, total, 1, keys=keys)
    failing_key = f"k{failing % keys}".encode()
    behind = {o for o in range(failing + 1, total) if o % keys == failing % keys}

    lock = threading.Lock()
    ran: dict[int, int] = {}
    ok: set[int] = set()

    async def handle(msg: Message) -> None:
        with lock:
            ran[msg.offset] = ran.get(msg.offset, 0) + 1
        if msg.offset == failing:
            raise ValueError("cannot handle")
        with lock:
            ok.add(msg.offset)

    consumer = ParallelConsumer(
        config(
            bootstrap,
            group,
            [topic],
            on_failure="dlq",
            retry_backoff_ms=100,
            retry_backoff_max_ms=500,
        ),
        handle,
        # librdkafka fails a record for a missing topic after 30 s by default; 3 s keeps
        # the test short and shows several refused writes.
        dlq_kafka={"message.timeout.ms": 3000},
    )
    with running(consumer):
        others = set(range(total)) - {failing} - behind

        def stuck() -> bool:
            if consumer.error is not None:
                return True  # stopped by itself: the assertions below say how
            snap = consumer.get_metrics()
            part = snap.partitions.get((topic, 0))
            if part is None or part.committed_offset is None:
                return False
            if part.committed_offset > failing:
                return True  # wrong: asserted below
            return snap.counters["dlq_failures"] >= 2 and others <= ok

        wait_until(stuck, timeout=40, message=lambda: f"refused DLQ writes: {_state(consumer)}")
        assert _offsets(bootstrap, group, topic) == {0: failing}, (
            "committed past the failing offset before its DLQ write was confirmed"
        )
        snap = consumer.get_metrics()
        assert consumer.error is None and snap.running, _state(consumer)
        part = snap.partitions[(topic, 0)]
        assert part.committed_offset == failing and part.blocking_offset == failing
        assert snap.counters["dead_lettered"] == 0
        assert ok == others
        assert not _topic_exists(admin, dlq), "the broker auto-created the DLQ topic"
        assert ran[failing] == 1, "the handler is not re-run while the DLQ write is retried"
        assert not (behind & set(ran)), "later records of the failing key ran early"

        _create_topic(admin, dlq)
        wait_until(
            lambda: consumer.get_metrics().counters["dead_lettered"] == 1,
            timeout=30,
            message=lambda: f"the DLQ write to land: {_state(consumer)}",
        )
        wait_committed(consumer, topic, {0: total}, timeout=30)
    assert _offsets(bootstrap, group, topic) == {0: total}
    assert ok == set(range(total)) - {failing}
    assert end_offsets(bootstrap, dlq, 1) == {0: 1}
    reader = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique_name("r"), "enable.auto.commit": False}
    )
    got: list[Any] = []
    try:
        reader.assign([TopicPartition(dlq, 0, OFFSET_BEGINNING)])

        def read() -> bool:
            got.extend(reader.consume(10, 0.5))
            return bool(got)

        wait_until(read, timeout=20, message="the DLQ record")
    finally:
        reader.close()
    (rec,) = got
    assert rec.error() is None
    assert rec.key() == failing_key and rec.value() == str(failing).encode()
    headers = dict(rec.headers() or [])
    assert headers["pyrallel.original.offset"] == str(failing).encode()
    assert headers["pyrallel.original.topic"] == topic.encode()
