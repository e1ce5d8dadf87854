"""ParallelConsumer: the public facade (start/stop/run/run_async/get_metrics)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import types
from collections.abc import Callable
from typing import Any

from pyrallel._core.poller import ConsumerFactory, Runtime
from pyrallel.config import ConsumerConfig
from pyrallel.engines.aio import AsyncExecutionEngine
from pyrallel.engines.base import ExecutionEngine
from pyrallel.errors import ConfigError, ConsumerStateError
from pyrallel.observability.hooks import NullTelemetry
from pyrallel.snapshot import MetricsSnapshot

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


def _build_engine(
    config: ConsumerConfig,
    handler: Handler,
    telemetry: NullTelemetry,
    loop: asyncio.AbstractEventLoop | None = None,
) -> ExecutionEngine:
    timeout = None if config.handler_timeout_ms is None else config.handler_timeout_ms / 1000
    span = telemetry.span_factory
    if config.engine == "async":
        return AsyncExecutionEngine(handler, timeout_s=timeout, span_factory=span, loop=loop)
    if config.engine == "thread":
        from pyrallel.engines.thread import ThreadExecutionEngine

        return ThreadExecutionEngine(
            handler, threads=config.effective_thread_count, timeout_s=timeout, span_factory=span
        )
    from pyrallel.engines.process import ProcessExecutionEngine

    engine: ExecutionEngine = ProcessExecutionEngine(
        handler, processes=config.effective_process_count, timeout_s=timeout, span_factory=span
    )
    return engine


class ParallelConsumer:
    """Consume ``config.topics`` with many messages of a partition in flight at once.

    ``handler`` is ``async def handle(msg)`` for ``engine="async"`` and a plain function
    for ``"thread"``/``"process"`` (picklable, module-level, for ``"process"``). A
    handler that does not fit its engine is refused here with :class:`ConfigError`.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        handler: Handler,
        *,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        telemetry: NullTelemetry | None = None,
        consumer_factory: ConsumerFactory | None = None,
        dlq_kafka: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(config, ConsumerConfig):
            raise ConfigError("config", config, "a pyrallel.ConsumerConfig")
        if consumer_factory is None:
            config.check_with_librdkafka()
        self.config = config
        self._handler = handler
        if telemetry is None:
            telemetry = _default_telemetry(config, meter_provider, tracer_provider)
        self._telemetry = telemetry
        self._consumer_factory = consumer_factory
        self._dlq_kafka = dlq_kafka
        # Built now so a handler/engine mismatch fails at construction, not at start.
        self._engine = _build_engine(config, handler, telemetry)
        self._runtime = self._new_runtime(self._engine)
        self._thread: threading.Thread | None = None
        self._started = False

    def _new_runtime(self, engine: ExecutionEngine) -> Runtime:
        kwargs: dict[str, Any] = {}
        if self._consumer_factory is not None:
            kwargs["consumer_factory"] = self._consumer_factory
        runtime = Runtime(
            self.config, engine, self._telemetry, dlq_settings=self._dlq_kafka, **kwargs
        )
        self._telemetry.bind(runtime.snapshot)
        return runtime

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start consuming in a background thread named ``pyrallel-poll``."""
        if self._started:
            raise ConsumerStateError(
                "ParallelConsumer.start() after start() or stop(); create a new consumer"
            )
        self._started = True
        self._thread = threading.Thread(target=self._runtime.run, name="pyrallel-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching, let in-flight work finish for up to ``timeout`` seconds, commit
        what is done, close. Raises the handler/Kafka error that stopped the consumer, if any.
        A consumer is started once: ``start()`` after ``stop()`` raises."""
        self._started = True
        self._runtime.request_stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout + 15)
            if self._thread.is_alive():
                log.warning("poll thread still running %.0fs after stop()", timeout + 15)
        self._raise_error()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the consumer stops by itself (error) or is stopped; True if it did."""
        return self._runtime.finished.wait(timeout)

    def run(self) -> None:
        """Consume until SIGINT/SIGTERM (then drain, commit, close) or a fatal error."""
        self.start()
        restore: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, _frame: types.FrameType | None) -> None:
                log.info(
                    "signal %s: stopping (drain up to %ss)",
                    signum,
                    self.config.shutdown_timeout_ms / 1000,
                )
                self._runtime.request_stop(self.config.shutdown_timeout_ms / 1000)

            for sig in (signal.SIGINT, signal.SIGTERM):
                restore[sig] = signal.signal(sig, on_signal)
        try:
            while not self._runtime.finished.wait(0.2):
                pass
        finally:
            for sig, previous in restore.items():
                signal.signal(sig, previous)
        self.stop(self.config.shutdown_timeout_ms / 1000)

    async def run_async(self) -> None:
        """Consume with handlers on the running event loop; cancel the task to stop."""
        if self.config.engine == "async":
            self._engine = _build_engine(
                self.config, self._handler, self._telemetry, asyncio.get_running_loop()
            )
            self._runtime = self._new_runtime(self._engine)
        self.start()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._runtime.finished.wait)
        except asyncio.CancelledError:
            self._runtime.request_stop(self.config.shutdown_timeout_ms / 1000)
            # The loop must keep running while handlers drain on it.
            await loop.run_in_executor(None, self._runtime.finished.wait)
            raise
        finally:
            if self._thread is not None:
                await loop.run_in_executor(None, self._thread.join)
        self._raise_error()

    def _raise_error(self) -> None:
        if self._runtime.error is not None:
            raise self._runtime.error

    # -- observing ------------------------------------------------------------------------

    def get_metrics(self) -> MetricsSnapshot:
        """The seed's signals now; O(partitions), safe from any thread."""
        return self._runtime.snapshot()

    @property
    def telemetry(self) -> NullTelemetry:
        """The telemetry this consumer reports to (read-only)."""
        return self._telemetry

    @property
    def error(self) -> BaseException | None:
        return self._runtime.error

    @property
    def is_running(self) -> bool:
        return self._runtime.running


def _default_telemetry(
    config: ConsumerConfig, meter_provider: Any, tracer_provider: Any
) -> NullTelemetry:
    try:
        from pyrallel.observability.metrics import OpenTelemetryTelemetry
    except ImportError:  # observability module not present: telemetry is optional
        return NullTelemetry()
    telemetry: NullTelemetry = OpenTelemetryTelemetry(
        config, meter_provider=meter_provider, tracer_provider=tracer_provider
    )
    return telemetry
