"""What telemetry costs: no-op handler throughput with and without metrics and spans.

Runs everything in one process on librdkafka's in-process mock cluster: produce the
messages once, then consume them again and again with a fresh group each run,
alternating the variants so drift (CPU frequency, a noisy neighbour) hits all of them
alike. Throughput is counted from the first handler call to the last, so the group
join is not part of it. Prints per variant msg/s and process CPU time per message (all
threads, librdkafka's included), the median and the best run of each, with their ratios
to NullTelemetry::

    .venv/bin/python benchmarks/telemetry_cost.py --messages 100000 --repeats 5

Variants:

``null``          NullTelemetry: the floor.
``metrics``       the default: OpenTelemetryTelemetry with its private provider and
                  Prometheus registry (self-aggregated duration histogram).
``metrics-sdk``   metrics through an application MeterProvider (an SDK Histogram
                  record per message); shows what the self-aggregation saves.
``spans``         the default metrics plus one span per message, 100 % sampled,
                  through a BatchSpanProcessor into an exporter that drops them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import Producer
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import CollectorRegistry, generate_latest

from pyrallel import ConsumerConfig, Message, ParallelConsumer
from pyrallel._mock import MockCluster
from pyrallel.observability.hooks import NullTelemetry
from pyrallel.observability.metrics import OpenTelemetryTelemetry


class _DropSpans(SpanExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def _produce(bootstrap: str, topic: str, n: int, keys: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 4})
    for i in range(n):
        while True:
            try:
                producer.produce(topic, key=f"k{i % keys}".encode(), value=b"x")
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise SystemExit("could not produce the benchmark messages")


Variant = Callable[[ConsumerConfig], tuple[NullTelemetry, Callable[[], str]]]


def _null(config: ConsumerConfig) -> tuple[NullTelemetry, Callable[[], str]]:
    return NullTelemetry(), lambda: ""


def _metrics(config: ConsumerConfig) -> tuple[NullTelemetry, Callable[[], str]]:
    telemetry = OpenTelemetryTelemetry(config)
    registry = telemetry.prometheus_registry
    assert registry is not None
    return telemetry, lambda: generate_latest(registry).decode()


def _metrics_sdk(config: ConsumerConfig) -> tuple[NullTelemetry, Callable[[], str]]:
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    telemetry = OpenTelemetryTelemetry(config, meter_provider=provider)
    return telemetry, lambda: generate_latest(registry).decode()


def _spans(config: ConsumerConfig) -> tuple[NullTelemetry, Callable[[], str]]:
    exporter = _DropSpans()
    tracer_provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    telemetry = OpenTelemetryTelemetry(config, tracer_provider=tracer_provider)
    registry = telemetry.prometheus_registry
    assert registry is not None

    def scrape() -> str:
        tracer_provider.force_flush()
        text = generate_latest(registry).decode()
        tracer_provider.shutdown()
        return text + f"# spans exported: {exporter.count}\n"

    return telemetry, scrape


VARIANTS: dict[str, Variant] = {
    "null": _null,
    "metrics": _metrics,
    "metrics-sdk": _metrics_sdk,
    "spans": _spans,
}


def _run(bootstrap: str, topic: str, n: int, variant: Variant) -> tuple[float, float, str]:
    """(msg/s, process CPU microseconds per message, final scrape) of one run."""
    done = 0
    first: list[float] = []
    last: list[float] = []
    finished = threading.Event()

    async def handle(msg: Message) -> None:
        nonlocal done
        if not first:
            first.extend((time.perf_counter(), time.process_time()))
        done += 1
        if done == n:
            last.extend((time.perf_counter(), time.process_time()))
            finished.set()

    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        topics=[topic],
        kafka={"log_level": 4},
    )
    telemetry, scrape = variant(config)
    consumer = ParallelConsumer(config, handle, telemetry=telemetry)
    consumer.start()
    try:
        if not finished.wait(300):
            raise SystemExit(f"only {done} of {n} messages processed in 300 s")
    finally:
        consumer.stop(timeout=30)
    text = scrape()
    telemetry.close()
    return n / (last[0] - first[0]), (last[1] - first[1]) / n * 1e6, text


def _consumed(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("messaging_client_consumed_messages_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _report(names: list[str], rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    """Median and best run per variant, each as a ratio to ``null``.

    On a shared machine other work only ever slows a run down, so the best run (highest
    msg/s, least CPU per message) estimates the inherent cost; the median shows the
    typical one.
    """
    stats = {
        name: (
            statistics.median(rates[name]),
            max(rates[name]),
            statistics.median(cpu[name]),
            min(cpu[name]),
        )
        for name in names
    }
    base = stats.get("null")
    print(
        f"{'variant':<12} {'msg/s median':>13} {'best':>9} {'ratio':>13} "
        f"{'CPU us/msg median':>18} {'best':>6} {'ratio':>13}"
    )
    for name, (rate, best_rate, cpu_us, best_cpu) in stats.items():
        if base:
            ratios = f"{rate / base[0]:.2f} / {best_rate / base[1]:.2f}"
            cpu_ratios = f"{cpu_us / base[2]:.2f} / {best_cpu / base[3]:.2f}"
        else:
            ratios = cpu_ratios = "-"
        print(
            f"{name:<12} {rate:>13,.0f} {best_rate:>9,.0f} {ratios:>13} "
            f"{cpu_us:>18.2f} {best_cpu:>6.2f} {cpu_ratios:>13}"
        )
    print("(ratio: median / best, against null)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ", ".join(VARIANTS),
    )
    args = parser.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}")
    results: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with MockCluster() as mock:
        topic = f"telemetry-cost-{uuid.uuid4().hex[:8]}"
        _produce(mock.bootstrap, topic, args.messages, args.keys)
        for rep in range(args.repeats):
            # Rotate the start so no variant always runs first (warm-up, caches).
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                rate, cpu_us, text = _run(mock.bootstrap, topic, args.messages, VARIANTS[name])
                if name != "null" and _consumed(text) < args.messages:
                    raise SystemExit(
                        f"{name}: consumed counter {_consumed(text)} < {args.messages}"
                    )
                results[name].append(rate)
                cpu[name].append(cpu_us)
                print(
                    f"rep {rep + 1} {name:<12} {rate:>10,.0f} msg/s {cpu_us:6.2f} us CPU/msg",
                    file=sys.stderr,
                )
    _report(names, results, cpu)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
