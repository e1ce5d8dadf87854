"""AsyncExecutionEngine alone (on its own loop thread), with a fake ``deliver``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyrallel.engines.aio import AsyncExecutionEngine
from pyrallel.errors import ConfigError, HandlerTimeoutError
from pyrallel.message import Message
from tests.support.waiting import wait_until
from tests.unit.engines._handlers import Collector, messages


@pytest.fixture
def make_engine() -> Iterator[Callable[..., tuple[AsyncExecutionEngine, Collector]]]:
    engines: list[AsyncExecutionEngine] = []

    def make(handler: Any, **kwargs: Any) -> tuple[AsyncExecutionEngine, Collector]:
        engine = AsyncExecutionEngine(handler, **kwargs)
        collector = Collector()
        engine.start(collector)
        engines.append(engine)
        return engine, collector

    yield make
    for engine in engines:
        engine.stop(1.0)


def test_delivers_every_message_once_with_its_outcome(make_engine: Any) -> None:
    async def handle(msg: Message) -> None:
        await asyncio.sleep(0)
        if msg.value == b"bad":
            raise KeyError(msg.offset)

    engine, collector = make_engine(handle)
    batch = [*messages(1000), Message("t", 1, 7, None, b"bad")]
    engine.submit(batch[:500])
    engine.submit(batch[500:])

    outcomes = collector.wait_for(len(batch))

    assert sorted(id(m) for m, _, _ in outcomes) == sorted(id(m) for m in batch)
    errors = collector.errors_by_value()
    assert isinstance(errors[b"bad"], KeyError)
    assert errors[b"bad"].args == (7,)
    assert errors[b"x"] is None


def test_refuses_a_sync_handler() -> None:
    def handle(msg: Message) -> None:
        return None

    wrong: Any = handle  # the type checker would refuse it too; the engine must at run time
    with pytest.raises(ConfigError, match="async def") as info:
        AsyncExecutionEngine(wrong)
    assert info.value.field == "handler"


def test_timeout_fails_the_call_and_the_engine_keeps_working(make_engine: Any) -> None:
    async def handle(msg: Message) -> None:
        if msg.value == b"slow":
            await asyncio.sleep(30)

    engine, collector = make_engine(handle, timeout_s=0.2)
    engine.submit([Message("t", 0, 0, None, b"slow"), *messages(3, start=1)])

    outcomes = collector.wait_for(4, timeout=10)

    errors = {m.offset: e for m, e, _ in outcomes}
    assert isinstance(errors[0], HandlerTimeoutError)
    assert "handler_timeout_ms=200" in str(errors[0])
    assert [errors[i] for i in (1, 2, 3)] == [None, None, None]


def test_abandon_cancels_a_partitions_tasks_without_delivering(make_engine: Any) -> None:
    started: set[int] = set()
    cancelled: set[int] = set()
    lock = threading.Lock()

    async def handle(msg: Message) -> None:
        if msg.partition != 0:
            return
        with lock:
            started.add(msg.offset)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            with lock:
                cancelled.add(msg.offset)
            raise

    engine, collector = make_engine(handle)
    engine.submit(messages(5, partition=0))
    wait_until(lambda: len(started) == 5, 5, interval=0.01, message="partition 0 tasks running")

    engine.abandon("t", 0)
    wait_until(lambda: len(cancelled) == 5, 5, interval=0.01, message="partition 0 cancelled")
    engine.submit(messages(3, partition=1))

    outcomes = collector.wait_for(3)
    assert {m.partition for m, _, _ in outcomes} == {1}
    assert len(outcomes) == 3
