"""AsyncExecutionEngine: coroutine handlers on an asyncio event loop.

By default the engine runs its own loop in a thread named ``pyrallel-async``. With
:meth:`ParallelConsumer.run_async` it uses the application's running loop instead, so
handlers can share the application's clients and sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyrallel.engines.base import Deliver, ExecutionEngine, SpanFactory
from pyrallel.errors import ConfigError, HandlerTimeoutError
from pyrallel.message import Message

AsyncHandler = Callable[[Message], Awaitable[Any]]


def is_async_callable(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class AsyncExecutionEngine(ExecutionEngine):
    name = "async"

    def __init__(
        self,
        handler: AsyncHandler,
        *,
        timeout_s: float | None = None,
        span_factory: SpanFactory | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not is_async_callable(handler):
            raise ConfigError(
                "handler",
                handler,
                "engine='async' needs an 'async def' handler; use engine='thread' for a sync one",
            )
        self._handler = handler
        self._timeout = timeout_s
        self._span = span_factory
        self._loop = loop
        self._own_loop = loop is None
        self._thread: threading.Thread | None = None
        self._deliver: Deliver | None = None
        self._tasks: dict[tuple[str, int], set[asyncio.Task[None]]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        if self._own_loop:
            ready = threading.Event()
            self._loop = _new_loop()

            def run() -> None:
                assert self._loop is not None
                asyncio.set_event_loop(self._loop)
                self._loop.call_soon(ready.set)
                self._loop.run_forever()

            self._thread = threading.Thread(target=run, name="pyrallel-async", daemon=True)
            self._thread.start()
            ready.wait()

    def submit(self, messages: list[Message]) -> None:
        loop = self._loop
        assert loop is not None, "engine not started"
        loop.call_soon_threadsafe(self._spawn, messages)

    def abandon(self, topic: str, partition: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            loop.call_soon_threadsafe(self._cancel_partition, (topic, partition))

    def stop(self, timeout: float) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def cancel_and_wait() -> None:
            tasks = [task for bucket in self._tasks.values() for task in bucket]
            for task in tasks:
                task.cancel()
            if tasks:
                # Let cancelled handlers run their cleanup before the loop goes away.
                await asyncio.wait(tasks, timeout=timeout)

        try:
            future = asyncio.run_coroutine_threadsafe(cancel_and_wait(), loop)
        except RuntimeError:  # loop already closed by the application
            return
        with contextlib.suppress(Exception):
            future.result(timeout + 1)
        if self._own_loop and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                loop.close()

    # -- inside the loop ---------------------------------------------------------------

    def _spawn(self, messages: list[Message]) -> None:
        loop = self._loop
        assert loop is not None
        tasks = self._tasks
        for msg in messages:
            tp = (msg.topic, msg.partition)
            task = loop.create_task(self._run(msg))
            bucket = tasks.get(tp)
            if bucket is None:
                bucket = tasks[tp] = set()
            bucket.add(task)
            task.add_done_callback(bucket.discard)

    def _cancel_partition(self, tp: tuple[str, int]) -> None:
        for task in self._tasks.pop(tp, ()):
            task.cancel()

    async def _run(self, msg: Message) -> None:
        deliver = self._deliver
        assert deliver is not None
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            if self._span is None:
                await self._call(msg)
            else:
                with self._span(msg):
                    await self._call(msg)
        except asyncio.CancelledError:
            # Cancelled because its partition was revoked or the consumer stopped: the
            # result is not wanted, and the offset stays uncommitted.
            return
        except Exception as exc:
            error = exc
        deliver(msg, error, time.perf_counter() - started)

    async def _call(self, msg: Message) -> None:
        if self._timeout is None:
            await self._handler(msg)
            return
        try:
            await asyncio.wait_for(self._handler(msg), self._timeout)
        except TimeoutError as exc:
            raise HandlerTimeoutError(
                f"handler exceeded handler_timeout_ms={self._timeout * 1000:.0f} for "
                f"topic={msg.topic} partition={msg.partition} offset={msg.offset}"
            ) from exc


def _new_loop() -> asyncio.AbstractEventLoop:
    """The engine's own loop: uvloop where installed (a dependency except on Windows).

    uvloop roughly halves the per-task cost of the loop, which is most of the cost of a
    message whose handler awaits I/O. Set ``PYRALLEL_LOOP=asyncio`` to opt out.
    """
    if os.environ.get("PYRALLEL_LOOP", "") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()
