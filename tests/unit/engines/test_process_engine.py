"""ProcessExecutionEngine alone: real worker processes, a fake ``deliver``."""

from __future__ import annotations

import contextvars
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyrallel.engines.process import ProcessExecutionEngine, RemoteHandlerError
from pyrallel.errors import ConfigError, HandlerTimeoutError, PyrallelError, WorkerDiedError
from pyrallel.message import Message
from tests.support.waiting import wait_until
from tests.unit.engines import _handlers
from tests.unit.engines._handlers import Collector, messages


@pytest.fixture
def make_engine() -> Iterator[Callable[..., tuple[ProcessExecutionEngine, Collector]]]:
    """``make_engine(handler, processes=2, timeout_s=None)`` -> started engine + collector;
    every engine is stopped at teardown."""
    engines: list[ProcessExecutionEngine] = []

    def make(
        handler: Callable[[Message], Any] = _handlers.scripted, **kwargs: Any
    ) -> tuple[ProcessExecutionEngine, Collector]:
        kwargs.setdefault("processes", 2)
        engine = ProcessExecutionEngine(handler, **kwargs)
        collector = Collector()
        engine.start(collector)
        engines.append(engine)
        return engine, collector

    yield make
    for engine in engines:
        engine.stop(1.0)


def test_delivers_every_message_exactly_once_as_the_original_object(make_engine: Any) -> None:
    engine, collector = make_engine(_handlers.noop, processes=2)
    batch = messages(2000)
    for i, msg in enumerate(batch):
        msg._epoch = 7  # not pickled: only the original object carries it
        msg.partition = i % 3
    for start in range(0, len(batch), 100):  # as the poll thread does: many small submits
        engine.submit(batch[start : start + 100])

    outcomes = collector.wait_for(len(batch))

    assert len(outcomes) == len(batch)
    assert {id(m) for m, _, _ in outcomes} == {id(m) for m in batch}
    assert all(error is None for _, error, _ in outcomes)
    assert all(m._epoch == 7 for m, _, _ in outcomes)
    assert all(duration >= 0 for _, _, duration in outcomes)


def test_batching_keeps_a_no_op_handler_fast(make_engine: Any) -> None:
    engine, collector = make_engine(_handlers.noop, processes=2)
    batch = messages(20_000)

    started = time.perf_counter()
    for start in range(0, len(batch), 500):
        engine.submit(batch[start : start + 500])
    collector.wait_for(len(batch))
    rate = len(batch) / (time.perf_counter() - started)

    # Measured well above 100k msg/s here; the floor only catches per-message IPC.
    assert rate > 2_000, f"{rate:.0f} msg/s"


def test_handler_errors_arrive_with_their_type(make_engine: Any) -> None:
    engine, collector = make_engine(processes=1)
    values = [b"boom", b"value", b"unsendable", b"unloadable", b"ok"]
    engine.submit([Message("t", 0, i, None, v) for i, v in enumerate(values)])

    collector.wait_for(len(values))
    errors = collector.errors_by_value()

    assert isinstance(errors[b"boom"], _handlers.Boom)
    assert str(errors[b"boom"]) == "boom at offset 0"
    assert "raise Boom" in str(errors[b"boom"].__cause__)  # the worker's traceback
    assert isinstance(errors[b"value"], ValueError)
    # Not picklable, or not unpicklable: a typed wrapper names the original.
    for value, name in ((b"unsendable", "Unsendable"), (b"unloadable", "Unloadable")):
        wrapper = errors[value]
        assert isinstance(wrapper, RemoteHandlerError)
        assert isinstance(wrapper, PyrallelError)
        assert wrapper.type_name == f"tests.unit.engines._handlers.{name}"
        assert name in wrapper.remote_traceback
    assert errors[b"ok"] is None


def _closure_handler() -> Callable[[Message], None]:
    def handle(msg: Message) -> None:
        return None

    return handle


@pytest.mark.parametrize(
    ("handler", "needle"),
    [
        (lambda msg: None, "picklable"),
        (_closure_handler(), "picklable"),
        (_handlers.HoldsLock().handle, "picklable"),
        (_handlers.async_handler, "sync"),
    ],
    ids=["lambda", "closure", "bound-method-of-unpicklable", "async"],
)
def test_refuses_handlers_that_cannot_run_in_a_worker(handler: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        ProcessExecutionEngine(handler, processes=1)
    assert info.value.field == "handler"


def test_accepts_an_instance_of_a_module_level_class_and_checks_process_count() -> None:
    ProcessExecutionEngine(_handlers.Callable("a"), processes=1)  # not started: no workers
    with pytest.raises(ConfigError) as info:
        ProcessExecutionEngine(_handlers.noop, processes=0)
    assert info.value.field == "process_count"


def test_process_count_is_respected(make_engine: Any) -> None:
    engine, collector = make_engine(processes=3)
    assert len(set(engine.worker_pids)) == 3
    engine.submit(messages(150, b"pid"))

    outcomes = collector.wait_for(150)

    pids = {int(str(error)) for _, error, _ in outcomes if isinstance(error, _handlers.PidReport)}
    assert len(pids) == 3
    assert pids == set(engine.worker_pids)
    assert os.getpid() not in pids


def test_sigkill_of_a_worker_fails_only_what_it_held_and_replaces_it(make_engine: Any) -> None:
    engine, collector = make_engine(processes=2)
    batch = messages(100, b"sleep:0.02")
    engine.submit(batch)
    collector.wait_for(10)
    victim = engine.worker_pids[0]

    os.kill(victim, signal.SIGKILL)
    outcomes = collector.wait_for(len(batch))

    assert sorted(id(m) for m, _, _ in outcomes) == sorted(id(m) for m in batch)
    died = [e for _, e, _ in outcomes if isinstance(e, WorkerDiedError)]
    assert died, "the killed worker held at least the message it was running"
    assert all(e is None or isinstance(e, WorkerDiedError) for _, e, _ in outcomes)
    assert f"pid={victim} was killed by SIGKILL" in str(died[0])
    assert engine.restarts == 1
    assert victim not in engine.worker_pids
    assert len(engine.worker_pids) == 2

    more = messages(50, start=1000)
    engine.submit(more)
    outcomes = collector.wait_for(len(batch) + len(more))
    assert [e for m, e, _ in outcomes if m.offset >= 1000] == [None] * len(more)


def test_a_handler_that_exits_the_process_is_reported_and_replaced(make_engine: Any) -> None:
    engine, collector = make_engine(processes=1)
    engine.submit([Message("t", 0, 0, None, b"exit")])

    [(_, error, _)] = collector.wait_for(1)

    assert isinstance(error, WorkerDiedError)
    assert "exited with code 3" in str(error)
    assert "offset=0" in str(error)
    assert engine.restarts == 1
    engine.submit([Message("t", 0, 1, None, b"ok")])
    assert collector.wait_for(2)[1][1] is None


def test_timeout_kills_the_worker_and_the_engine_keeps_working(make_engine: Any) -> None:
    engine, collector = make_engine(processes=1, timeout_s=0.3)
    [victim] = engine.worker_pids
    stuck = Message("t", 0, 0, None, b"sleep:30")
    engine.submit([stuck, *messages(3, start=1)])

    started = time.monotonic()
    outcomes = collector.wait_for(4)

    assert time.monotonic() - started < 10
    errors = {m.offset: e for m, e, _ in outcomes}
    assert isinstance(errors[0], HandlerTimeoutError)
    assert "handler_timeout_ms=300" in str(errors[0])
    # Queued behind the stuck call in the killed worker: retried by the core.
    assert all(errors[i] is None or isinstance(errors[i], WorkerDiedError) for i in (1, 2, 3))
    assert engine.restarts == 1
    assert victim not in engine.worker_pids

    engine.submit(messages(10, start=100))
    outcomes = collector.wait_for(14)
    assert [e for m, e, _ in outcomes if m.offset >= 100] == [None] * 10


def test_stop_returns_promptly_while_workers_are_busy(make_engine: Any, tmp_path: Path) -> None:
    engine, collector = make_engine(processes=2)
    marks = [tmp_path / f"running-{i}" for i in range(2)]
    # One long call per worker (load balancing gives each worker one), then a queue.
    engine.submit([Message("t", 0, i, None, f"mark:30:{p}".encode()) for i, p in enumerate(marks)])
    engine.submit(messages(20, b"sleep:30", start=10))
    wait_until(lambda: all(p.exists() for p in marks), 30, message="both workers busy")
    pids = engine.worker_pids

    started = time.monotonic()
    engine.stop(0.5)

    assert time.monotonic() - started < 5
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert collector.snapshot() == []


def test_abandon_drops_waiting_messages_and_ignores_running_ones(
    make_engine: Any, tmp_path: Path
) -> None:
    engine, collector = make_engine(processes=1)
    mark = tmp_path / "started"
    engine.submit([Message("t", 0, 0, None, f"mark:0.3:{mark}".encode())])
    wait_until(mark.exists, 30, interval=0.01, message="the partition-0 call running")
    # Some of these go to the worker behind the running call, the rest wait here.
    engine.submit(messages(30, partition=0, start=1) + messages(30, partition=1))
    engine.abandon("t", 0)

    engine.submit([Message("t", 1, 999, None, b"last")])
    outcomes = collector.wait_for(31)
    # One worker runs everything in order, so anything of partition 0 would be here by now.
    assert {m.partition for m, _, _ in outcomes} == {1}
    assert len(outcomes) == 31

    engine.submit(messages(5, partition=0, start=100))  # re-assigned: delivered again
    outcomes = collector.wait_for(36)
    assert sorted(m.offset for m, _, _ in outcomes if m.partition == 0) == list(range(100, 105))


class RecordingSpan:
    """A span that sets a context variable while open, as OpenTelemetry's current span does."""

    current: contextvars.ContextVar[str | None] = contextvars.ContextVar("span", default=None)
    log: list[tuple[int, str, type[BaseException] | None]] = []

    def __init__(self, msg: Message) -> None:
        self.msg = msg

    def __enter__(self) -> RecordingSpan:
        self.token = self.current.set(f"span-{self.msg.offset}")
        self.log.append((self.msg.offset, "enter", None))
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.current.reset(self.token)  # ValueError if exited in another Context
        self.log.append((self.msg.offset, "exit", kind))


def test_span_opens_at_submit_and_closes_with_the_outcome(make_engine: Any) -> None:
    RecordingSpan.log = []
    engine, collector = make_engine(processes=1, span_factory=RecordingSpan)
    engine.submit([Message("t", 0, 0, None, b"ok"), Message("t", 0, 1, None, b"boom")])

    assert RecordingSpan.current.get() is None  # the poll thread's context is untouched
    collector.wait_for(2)
    wait_until(lambda: len(RecordingSpan.log) == 4, 5, interval=0.01, message="spans closed")
    assert sorted(RecordingSpan.log, key=lambda e: (e[0], e[1] != "enter")) == [
        (0, "enter", None),
        (0, "exit", None),
        (1, "enter", None),
        (1, "exit", _handlers.Boom),
    ]


def test_a_handler_workers_cannot_load_fails_messages_instead_of_restarting(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Like a handler defined in a notebook: it pickles by name in this process, but the
    # name does not exist in a freshly spawned interpreter.
    def handler(msg: Message) -> None:
        return None

    handler.__module__ = "__main__"
    handler.__qualname__ = "_pyrallel_only_in_the_parent"
    monkeypatch.setattr(
        sys.modules["__main__"], "_pyrallel_only_in_the_parent", handler, raising=False
    )
    engine, collector = make_engine(handler, processes=1)
    engine.submit(messages(3))

    outcomes = collector.wait_for(3)

    assert all(isinstance(e, WorkerDiedError) for _, e, _ in outcomes)
    assert "cannot be loaded in a worker process" in str(outcomes[0][1])
    assert engine.restarts == 0
    engine.submit(messages(1, start=10))  # later messages fail at once, too
    assert isinstance(collector.wait_for(4)[3][1], WorkerDiedError)
