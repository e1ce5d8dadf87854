"""Issue 3: the process engine on the real broker (CPU-bound work, worker kill -9)."""

from __future__ import annotations

import itertools
import os
import signal
from collections import defaultdict
from typing import Any

import pytest

from pyrallel import ParallelConsumer
from tests.support.consuming import committed, config, running, wait_committed
from tests.support.cpu_handlers import RecordingCpuHandler, read_records
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker


def _check_key_order(records: list[tuple[int, int, str, int, int, int]]) -> None:
    by_lane: dict[tuple[int, str], list[tuple[int, int, int]]] = defaultdict(list)
    for _, part, key, offset, begin, end in records:
        by_lane[(part, key)].append((begin, end, offset))
    for lane, runs in by_lane.items():
        runs.sort()
        offsets = [o for _, _, o in runs]
        assert offsets == sorted(offsets), f"key order broken for {lane}"
        for (_, end_a, _), (begin_b, _, _) in itertools.pairwise(runs):
            assert begin_b >= end_a, f"two runs of key {lane} overlapped"


def test_cpu_bound_handler_on_two_processes_keeps_key_order(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str, tmp_path: Any
) -> None:
    topic = make_topic(partitions=4)
    produced = produce_keyed(topic, 5000, keys=100)
    path = str(tmp_path / "runs.log")
    consumer = ParallelConsumer(
        config(
            bootstrap,
            group_id,
            [topic],
            engine="process",
            process_count=2,
            max_in_flight_messages=200,
        ),
        RecordingCpuHandler(path, work_ms=2.0),
    )
    with running(consumer):
        wait_committed(consumer, topic, produced.end_offsets, timeout=180)
    records = read_records(path)
    assert {(p, o) for _, p, _, o, _, _ in records} == {
        (r.partition, r.offset) for r in produced.records
    }
    assert len(records) == 5000, "each message ran exactly once"
    assert len({pid for pid, *_ in records}) == 2, "both worker processes did work"
    _check_key_order(records)
    assert committed(bootstrap, group_id, topic, 4) == produced.end_offsets


def test_killed_worker_is_replaced_and_its_messages_retried(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str, tmp_path: Any
) -> None:
    topic = make_topic(partitions=2)
    produced = produce_keyed(topic, 2000, keys=40)
    path = str(tmp_path / "runs.log")
    consumer = ParallelConsumer(
        config(
            bootstrap,
            group_id,
            [topic],
            engine="process",
            process_count=2,
            max_retries=3,
            retry_backoff_ms=10,
        ),
        RecordingCpuHandler(path, work_ms=1.0),
    )
    with running(consumer):
        wait_until(
            lambda: os.path.exists(path) and len(read_records(path)) > 300,
            timeout=90,
            message="workers to make progress",
        )
        victim = read_records(path)[-1][0]
        os.kill(victim, signal.SIGKILL)
        wait_committed(consumer, topic, produced.end_offsets, timeout=180)
        snap = consumer.get_metrics()
    records = read_records(path)
    done = {(p, o) for _, p, _, o, _, _ in records}
    assert done == {(r.partition, r.offset) for r in produced.records}, "nothing lost"
    assert snap.counters["worker_restarts"] >= 1
    assert snap.counters["failed"] >= 1, "the killed worker's messages were failed attempts"
    assert committed(bootstrap, group_id, topic, 2) == produced.end_offsets
