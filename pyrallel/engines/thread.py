"""ThreadExecutionEngine: sync handlers on a bounded thread pool (blocking I/O libraries).

A thread cannot be cancelled. A call past ``handler_timeout_ms`` is reported as failed
(:class:`HandlerTimeoutError`) at once so its message can be retried or dead-lettered;
the thread itself runs on until the handler returns, is counted in ``leaked_threads``,
its late result is ignored, and it exits then. A new thread takes its place at once,
so stuck calls never shrink the pool.
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pyrallel.engines.base import Deliver, ExecutionEngine, SpanFactory
from pyrallel.errors import ConfigError, HandlerTimeoutError
from pyrallel.message import Message

SyncHandler = Callable[[Message], Any]


def check_sync_handler(handler: object, engine: str) -> None:
    if not callable(handler):
        raise ConfigError("handler", handler, "a callable taking one pyrallel.Message")
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    ):
        raise ConfigError(
            "handler",
            handler,
            f"engine={engine!r} needs a plain (sync) function; use engine='async' for 'async def'",
        )


class ThreadExecutionEngine(ExecutionEngine):
    name = "thread"

    def __init__(
        self,
        handler: SyncHandler,
        *,
        threads: int,
        timeout_s: float | None = None,
        span_factory: SpanFactory | None = None,
    ) -> None:
        check_sync_handler(handler, "thread")
        self._handler = handler
        self._threads = threads
        self._timeout = timeout_s
        self._span = span_factory
        self._queue: queue.SimpleQueue[Message | None] = queue.SimpleQueue()
        self._workers: set[threading.Thread] = set()
        self._retired: set[int] = set()  # idents of threads whose call timed out
        self._deliver: Deliver | None = None
        self._lock = threading.Lock()
        self._seq = itertools.count()
        # Calls that may still time out: token -> message; deadlines in a heap.
        self._running: dict[int, Message] = {}
        self._deadlines: list[tuple[float, int, int]] = []
        self._abandoned: set[tuple[str, int]] = set()
        self._stopped = threading.Event()
        self._watchdog: threading.Thread | None = None
        self.leaked_threads = 0

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        for _ in range(self._threads):
            self._add_worker()
        if self._timeout is not None:
            self._watchdog = threading.Thread(
                target=self._watch, name="pyrallel-timeouts", daemon=True
            )
            self._watchdog.start()

    def _add_worker(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"pyrallel-worker-{next(self._seq)}", daemon=True
        )
        with self._lock:
            self._workers.add(thread)
        thread.start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            self._run(msg)
            with self._lock:
                if me in self._retired:  # timed out: a replacement already took our place
                    self._retired.discard(me)
                    self._workers.discard(threading.current_thread())
                    return

    def submit(self, messages: list[Message]) -> None:
        put = self._queue.put
        for msg in messages:
            self._abandoned.discard((msg.topic, msg.partition))
            put(msg)

    def abandon(self, topic: str, partition: int) -> None:
        self._abandoned.add((topic, partition))

    def _run(self, msg: Message) -> None:
        deliver = self._deliver
        assert deliver is not None
        token = -1
        if self._timeout is not None:
            token = next(self._seq)
            with self._lock:
                self._running[token] = msg
                deadline = time.monotonic() + self._timeout
                heapq.heappush(self._deadlines, (deadline, token, threading.get_ident()))
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            if self._span is None:
                self._handler(msg)
            else:
                with self._span(msg):
                    self._handler(msg)
        except Exception as exc:
            error = exc
        if token >= 0:
            with self._lock:
                if self._running.pop(token, None) is None:
                    return  # already reported as timed out
        if (msg.topic, msg.partition) in self._abandoned or self._stopped.is_set():
            return
        deliver(msg, error, time.perf_counter() - started)

    def _watch(self) -> None:
        assert self._timeout is not None
        while not self._stopped.wait(min(0.05, self._timeout / 4)):
            now = time.monotonic()
            expired: list[Message] = []
            with self._lock:
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, token, ident = heapq.heappop(self._deadlines)
                    msg = self._running.pop(token, None)
                    if msg is not None:
                        expired.append(msg)
                        self.leaked_threads += 1
                        self._retired.add(ident)
            for _ in expired:
                if not self._stopped.is_set():
                    self._add_worker()
                    self.restarts += 1
            for msg in expired:
                assert self._deliver is not None
                err = HandlerTimeoutError(
                    f"handler exceeded handler_timeout_ms={self._timeout * 1000:.0f} for "
                    f"topic={msg.topic} partition={msg.partition} offset={msg.offset}"
                )
                self._deliver(msg, err, self._timeout)

    def stop(self, timeout: float) -> None:
        self._stopped.set()
        # Forget queued work, then wake every idle worker so it exits.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.join(timeout)
