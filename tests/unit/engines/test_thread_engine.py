"""ThreadExecutionEngine alone, with a fake ``deliver``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pyrallel.engines.thread import ThreadExecutionEngine
from pyrallel.errors import ConfigError, HandlerTimeoutError
from pyrallel.message import Message
from tests.support.waiting import wait_until
from tests.unit.engines._handlers import Collector, messages


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so handlers blocked on it (leaked threads) can finish."""
    event = threading.Event()
    yield event
    event.set()


def test_delivers_every_message_once_with_its_outcome() -> None:
    def handle(msg: Message) -> None:
        if msg.value == b"bad":
            raise ValueError(f"bad offset {msg.offset}")

    engine = ThreadExecutionEngine(handle, threads=8)
    collector = Collector()
    engine.start(collector)
    batch = [*messages(500), Message("t", 1, 0, None, b"bad")]
    engine.submit(batch)

    outcomes = collector.wait_for(len(batch))
    engine.stop(1.0)

    assert sorted(id(m) for m, _, _ in outcomes) == sorted(id(m) for m in batch)
    errors = collector.errors_by_value()
    assert isinstance(errors[b"bad"], ValueError)
    assert str(errors[b"bad"]) == "bad offset 0"
    assert errors[b"x"] is None


def test_refuses_an_async_handler() -> None:
    async def handle(msg: Message) -> None:
        return None

    with pytest.raises(ConfigError, match="sync"):
        ThreadExecutionEngine(handle, threads=1)


def test_timeout_reports_at_once_and_ignores_the_late_result(release: threading.Event) -> None:
    def handle(msg: Message) -> None:
        if msg.value == b"stuck":
            release.wait(30)

    engine = ThreadExecutionEngine(handle, threads=2, timeout_s=0.2)
    collector = Collector()
    engine.start(collector)
    engine.submit([Message("t", 0, 0, None, b"stuck")])

    [(_, error, duration)] = collector.wait_for(1, timeout=10)

    assert isinstance(error, HandlerTimeoutError)
    assert "offset=0" in str(error)
    assert duration == pytest.approx(0.2)
    assert engine.leaked_threads == 1

    engine.submit(messages(5, start=1))  # the free thread keeps serving
    outcomes = collector.wait_for(6)
    assert [e for m, e, _ in outcomes[1:]] == [None] * 5

    release.set()  # the leaked call returns; its result must not be delivered twice
    wait_until(lambda: engine._running == {}, 5, interval=0.01, message="stuck call returned")
    engine.stop(1.0)
    assert len(collector.snapshot()) == 6


def test_abandoned_partition_results_are_ignored(release: threading.Event) -> None:
    started = threading.Event()

    def handle(msg: Message) -> None:
        if msg.partition == 0:
            started.set()
            release.wait(30)

    engine = ThreadExecutionEngine(handle, threads=2)
    collector = Collector()
    engine.start(collector)
    engine.submit([Message("t", 0, 0, None, b"x")])
    wait_until(started.is_set, 5, interval=0.01, message="partition 0 call running")

    engine.abandon("t", 0)
    release.set()
    engine.submit(messages(3, partition=1))

    outcomes = collector.wait_for(3)
    engine.stop(1.0)
    assert {m.partition for m, _, _ in outcomes} == {1}


def test_stuck_calls_do_not_shrink_the_pool(release: threading.Event) -> None:
    """More stuck calls than threads: each timed-out thread is replaced, work goes on."""

    def handle(msg: Message) -> None:
        if msg.value == b"stuck":
            release.wait(30)

    engine = ThreadExecutionEngine(handle, threads=2, timeout_s=0.2)
    collector = Collector()
    engine.start(collector)
    stuck = [Message("t", 0, i, None, b"stuck") for i in range(3)]
    engine.submit(stuck)
    normal = messages(20)
    engine.submit(normal)
    outcomes = collector.wait_for(23, timeout=10)
    engine.stop(1.0)
    timed_out = [m for m, e, _ in outcomes if isinstance(e, HandlerTimeoutError)]
    assert sorted(m.offset for m in timed_out) == [0, 1, 2]
    assert sum(1 for m, e, _ in outcomes if e is None) == 20
    assert engine.leaked_threads == 3
    assert engine.restarts == 3
