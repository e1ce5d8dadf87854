"""One benchmark run in this venv: ``python -m benchmarks.worker key=value ...``.

``contender=raw`` is a plain confluent-kafka loop (handler inline, asynchronous commits
every second); ``contender=pyrallel`` is a :class:`pyrallel.ParallelConsumer` with the
given ``ordering``/``engine``/``telemetry``. ``work`` is what the handler does:
``noop``, ``sleep`` (``sleep_ms``: ``asyncio.sleep`` on the async engine, blocking
``time.sleep`` elsewhere), ``cpu`` (``cpu_iterations`` of :func:`cpu_work`),
``latency`` (no-op that records produce-to-completion time) and ``stuck`` (the record
whose value is :data:`STUCK` never finishes until every other one has). The protocol
is in :mod:`benchmarks.protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.protocol import MARK, READY, RESULT, Meter, cpu_work, emit, parse_args

STUCK = b"stuck"


def _work_of(spec: dict[str, str]) -> tuple[str, float, int]:
    return (
        spec.get("work", "noop"),
        float(spec.get("sleep_ms", "0")) / 1000,
        int(spec.get("cpu_iterations", "0")),
    )


def _timeouts(spec: dict[str, str]) -> tuple[float, float]:
    return float(spec.get("start_timeout", "60")), float(spec.get("max_seconds", "60"))


# -- raw confluent-kafka ------------------------------------------------------------------


def run_raw(spec: dict[str, str]) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    work, sleep_s, iterations = _work_of(spec)
    start_timeout, max_seconds = _timeouts(spec)
    meter = Meter(int(spec["messages"]), latency=work == "latency")
    expected = int(spec.get("partitions", "1"))
    assigned: list[Any] = []
    consumer = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": spec["group"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 4,
        }
    )

    def on_assign(_consumer: Any, partitions: list[Any]) -> None:
        assigned.extend(partitions)
        if len(assigned) >= expected and len(assigned) - len(partitions) < expected:
            emit(READY, t=time.time())

    consumer.subscribe([spec["topic"]], on_assign=on_assign)
    positions: dict[tuple[str, int], int] = {}
    began = time.perf_counter()
    next_commit = time.monotonic() + 1.0
    error = None

    def commit(asynchronous: bool) -> None:
        if not positions:
            return
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in positions.items()]
        if asynchronous:
            consumer.commit(offsets=offsets, asynchronous=True)
        else:
            consumer.commit(offsets=offsets, asynchronous=False)

    warm_at = meter.target // 10 if work == "stuck" else None  # scenario 5's RSS marks
    while not meter.done.is_set():
        if warm_at is not None and meter.count >= warm_at:
            emit(MARK, name="warm", t=time.time())
            warm_at = None
        now = time.perf_counter()
        if meter.first and now - meter.first >= max_seconds:
            break
        if not meter.first and now - began > start_timeout:
            error = f"no message within start_timeout={start_timeout:g} s"
            break
        # consume(n, t) waits for n records or t seconds: block for the first record only,
        # then take what is already there (batching without adding latency).
        batch = consumer.consume(1, 0.1)
        if batch:
            batch.extend(consumer.consume(499, 0))
        for msg in batch:
            if msg.error() is not None:
                continue
            meter.begin()
            if work == "sleep":
                time.sleep(sleep_s)
            elif work == "cpu":
                cpu_work(iterations)
            meter.end(msg.value())
            positions[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
            if meter.done.is_set() or meter.last - meter.first >= max_seconds:
                break
        if time.monotonic() >= next_commit:
            next_commit = time.monotonic() + 1.0
            commit(asynchronous=True)
    if work == "stuck":
        emit(MARK, name="others_done", t=time.time())
    commit(asynchronous=False)
    consumer.close()
    return meter.result(**({"error": error} if error else {}))


# -- pyrallel -------------------------------------------------------------------------------


def _two_step_factory() -> Callable[[dict[str, Any]], Any]:
    """A consumer whose ``consume(n, timeout)`` blocks for one record, then takes at most
    ``n - 1`` more that are already fetched. librdkafka's batch consume waits until it
    has ``n`` records or the timeout passes, which adds up to the poll loop's idle timeout
    (50 ms) to every record at low rates. Used only for the "proposed fix" contender,
    through the public ``consumer_factory`` hook; Pyrallel itself is unchanged."""
    from confluent_kafka import Consumer

    class TwoStepConsumer(Consumer):
        def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
            first: list[Any] = super().consume(1, timeout)
            if first and num_messages > 1:
                first.extend(super().consume(num_messages - 1, 0))
            return first

    return TwoStepConsumer


def _telemetry_kwargs(spec: dict[str, str], config: Any) -> tuple[dict[str, Any], Any]:
    """ParallelConsumer keyword arguments for ``telemetry=...`` and the registry to scrape."""
    variant = spec.get("telemetry", "default")
    if variant == "default":
        return {}, None
    if variant == "null":
        from pyrallel.observability.hooks import NullTelemetry

        return {"telemetry": NullTelemetry()}, None
    if variant == "metrics-default":
        from pyrallel.observability.metrics import OpenTelemetryTelemetry

        telemetry = OpenTelemetryTelemetry(config)
        return {"telemetry": telemetry}, telemetry.prometheus_registry
    if variant in ("metrics", "spans"):
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import REGISTRY

        kwargs: dict[str, Any] = {
            "meter_provider": MeterProvider(metric_readers=[PrometheusMetricReader()])
        }
        if variant == "spans":
            from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON

            class _Discard(SpanProcessor):
                """Every span is created, recorded and ended, then dropped (no export)."""

            provider = TracerProvider(sampler=ALWAYS_ON)
            provider.add_span_processor(_Discard())
            kwargs["tracer_provider"] = provider
        return kwargs, REGISTRY
    raise SystemExit(f"worker: unknown telemetry={variant!r}")


def _scraper(
    registry: Any, interval: float, stop: threading.Event, stats: dict[str, float]
) -> None:
    from prometheus_client import generate_latest

    while not stop.wait(interval):
        began = time.perf_counter()
        size = len(generate_latest(registry))
        stats["scrapes"] += 1
        stats["scrape_s"] += time.perf_counter() - began
        stats["bytes"] = size


def _handler(
    engine: str, work: str, sleep_s: float, iterations: int, meter: Meter, release: threading.Event
) -> Callable[..., Any]:
    if engine == "process":
        from benchmarks.handlers import CpuHandler

        if work != "cpu":
            raise SystemExit("worker: the process engine runs work=cpu only")
        return CpuHandler(iterations)
    latency = work == "latency"
    if engine == "async":

        async def handle(msg: Any) -> None:
            if work == "stuck" and msg.value == STUCK:
                while not release.is_set():
                    await asyncio.sleep(0.02)
                return
            meter.begin()
            if work == "sleep":
                await asyncio.sleep(sleep_s)
            elif work == "cpu":
                cpu_work(iterations)
            meter.end(msg.value if latency else None)

        return handle

    def handle_sync(msg: Any) -> None:
        if work == "stuck" and msg.value == STUCK:
            release.wait()
            return
        meter.begin()
        if work == "sleep":
            time.sleep(sleep_s)
        elif work == "cpu":
            cpu_work(iterations)
        meter.end(msg.value if latency else None)

    return handle_sync


def _wait_ready(consumer: Any, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and consumer.error is None:
        if len(consumer.get_metrics().partitions) >= expected:
            emit(READY, t=time.time())
            return
        time.sleep(0.01)


class _Watch:
    """Samples the consumer's own signals while a run goes on.

    Records the largest true lag and gap count of any partition, and the mean number of
    messages held (in flight), of those waiting behind a busy lane (queued), of those
    running (held - queued: the real concurrency) and of partitions holding any. With
    ``warm_at`` it marks the moment that many messages were processed (scenario 5's
    "warm" RSS).
    """

    def __init__(
        self, consumer: Any, meter: Meter, warm_at: int | None = None, interval: float = 0.25
    ) -> None:
        self.max_true_lag = 0
        self.max_gap_count = 0
        self.max_in_flight = 0
        self.sum_in_flight = 0
        self.sum_queued = 0
        self.sum_running = 0
        self.sum_active = 0
        self.paused_samples = 0
        self.samples = 0
        self._consumer = consumer
        self._meter = meter
        self._warm_at = warm_at
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._warm_at is not None and self._meter.count >= self._warm_at:
                emit(MARK, name="warm", t=time.time())
                self._warm_at = None
            if not self._meter.first:
                continue  # count only while messages flow
            snap = self._consumer.get_metrics()
            self.samples += 1
            self.paused_samples += bool(snap.is_paused)
            self.max_in_flight = max(self.max_in_flight, snap.total_in_flight)
            self.sum_in_flight += snap.total_in_flight
            for part in snap.partitions.values():
                self.max_true_lag = max(self.max_true_lag, part.true_lag)
                self.max_gap_count = max(self.max_gap_count, part.gap_count)
                self.sum_queued += part.queued_count
                self.sum_running += part.in_flight - part.queued_count
                self.sum_active += part.in_flight > 0

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(2)
        n = max(1, self.samples)
        return {
            "max_true_lag": self.max_true_lag,
            "max_gap_count": self.max_gap_count,
            "max_in_flight": self.max_in_flight,
            "mean_in_flight": round(self.sum_in_flight / n, 1),
            "mean_queued": round(self.sum_queued / n, 1),
            "mean_running": round(self.sum_running / n, 1),
            "mean_partitions_with_work": round(self.sum_active / n, 2),
            "paused_share": round(self.paused_samples / n, 3),
            "samples": self.samples,
        }


def run_pyrallel(spec: dict[str, str]) -> dict[str, Any]:
    from pyrallel import ConsumerConfig, ParallelConsumer

    work, sleep_s, iterations = _work_of(spec)
    start_timeout, max_seconds = _timeouts(spec)
    engine = spec.get("engine", "async")
    meter = Meter(int(spec["messages"]), latency=work == "latency")
    release = threading.Event()
    config = ConsumerConfig(
        bootstrap_servers=spec["bootstrap"],
        group_id=spec["group"],
        topics=[spec["topic"]],
        ordering=spec.get("ordering", "key"),  # type: ignore[arg-type]
        engine=engine,  # type: ignore[arg-type]
        max_in_flight_messages=int(spec.get("max_in_flight", "1000")),
        process_count=int(spec["process_count"]) if "process_count" in spec else None,
        thread_count=int(spec["thread_count"]) if "thread_count" in spec else None,
        shutdown_timeout_ms=10_000,
        kafka={"log_level": 4},
    )
    kwargs, registry = _telemetry_kwargs(spec, config)
    if spec.get("consume") == "two-step":
        kwargs["consumer_factory"] = _two_step_factory()
    consumer = ParallelConsumer(
        config, _handler(engine, work, sleep_s, iterations, meter, release), **kwargs
    )
    scrape_stop = threading.Event()
    scrape: dict[str, float] = {"scrapes": 0, "scrape_s": 0.0, "bytes": 0}
    if registry is not None:
        interval = float(spec.get("scrape_s", "1"))
        threading.Thread(
            target=_scraper, args=(registry, interval, scrape_stop, scrape), daemon=True
        ).start()
    consumer.start()
    extra: dict[str, Any] = {}
    watch = _Watch(consumer, meter, meter.target // 10 if work == "stuck" else None)
    try:
        _wait_ready(consumer, int(spec.get("partitions", "1")), start_timeout)

        def failed() -> bool:
            return consumer.error is not None or not consumer.is_running

        if engine == "process":

            def processed() -> int:
                return int(consumer.get_metrics().counters["processed"])

            error = meter.wait_polling(processed, start_timeout, max_seconds, failed)
        else:
            error = meter.wait(start_timeout, max_seconds, failed)
        if error:
            extra["error"] = error
        if work == "stuck":
            extra.update(_release_stuck(consumer, spec["topic"], release))
        extra["watch"] = watch.stop()
    finally:
        release.set()
        scrape_stop.set()
        try:
            consumer.stop(timeout=10)
        except Exception as exc:  # the run's result still goes out, with the error
            extra["error"] = f"stop: {type(exc).__name__}: {exc}"
    if registry is not None:
        extra["scrapes"] = int(scrape["scrapes"])
        extra["scrape_ms_mean"] = round(1000 * scrape["scrape_s"] / max(1, scrape["scrapes"]), 3)
        extra["scrape_bytes"] = int(scrape["bytes"])
    if consumer.error is not None and "error" not in extra:
        extra["error"] = f"{type(consumer.error).__name__}: {consumer.error}"
    return meter.result(**extra)


def _release_stuck(consumer: Any, topic: str, release: threading.Event) -> dict[str, Any]:
    """Every other record is done: note the state, free the head, wait for its commit."""
    snap = consumer.get_metrics()
    part = snap.partitions.get((topic, 0))
    emit(MARK, name="others_done", t=time.time())
    before = {
        "blocking_offset": None if part is None else part.blocking_offset,
        "blocking_duration_s": None if part is None else round(part.blocking_duration_sec, 1),
        "true_lag": None if part is None else part.true_lag,
        "gap_count": None if part is None else part.gap_count,
    }
    release.set()
    deadline = time.monotonic() + 15
    committed_all = False
    while time.monotonic() < deadline:
        part = consumer.get_metrics().partitions.get((topic, 0))
        if (
            part is not None
            and part.last_fetched_offset is not None
            and part.committed_offset == part.last_fetched_offset + 1
        ):
            committed_all = True
            break
        time.sleep(0.05)
    return {
        "while_stuck": before,
        "committed_to_end_after_release": committed_all,
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = parse_args(argv)
    contender = spec.get("contender", "pyrallel")
    if contender == "raw":
        result = run_raw(spec)
    elif contender == "pyrallel":
        result = run_pyrallel(spec)
    elif contender == "tracker":
        from benchmarks.tracker_bench import run_tracker

        result = run_tracker(spec)
    else:
        raise SystemExit(f"worker: unknown contender={contender!r}")
    emit(RESULT, **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
