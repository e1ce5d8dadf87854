"""Telemetry from a real ParallelConsumer on the real broker: /metrics, /healthz, status, spans."""

from __future__ import annotations

import math
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from confluent_kafka import Consumer
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pyrallel import Message, ParallelConsumer
from pyrallel import cli as pyrallel_cli
from pyrallel.observability import Server, catalog, serve
from pyrallel.observability.metrics import OpenTelemetryTelemetry
from pyrallel.snapshot import MetricsSnapshot
from tests.support.consuming import Gate, config, running
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(server: Server) -> tuple[Samples, dict[str, str]]:
    """({sample name: [(labels, value)]}, {family name as on its TYPE line: type})."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return samples, types


def get(server: Server, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextmanager
def served(consumer: ParallelConsumer, **kwargs: Any) -> Iterator[Server]:
    with serve(consumer, port=0, **kwargs) as server:
        yield server


def partitions_in(samples: Samples, name: str, client: str) -> set[int]:
    return {
        int(labels["partition"])
        for labels, _ in samples.get(name, [])
        if labels["client"] == client
    }


def gauge(samples: Samples, mdef: catalog.MetricDef, **labels: str) -> float | None:
    for sample_labels, value in samples.get(mdef.prometheus, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


STABLE_SYSTEM: dict[catalog.MetricDef, Callable[[MetricsSnapshot], float]] = {
    catalog.SYSTEM_IN_FLIGHT: lambda s: s.total_in_flight,
    catalog.SYSTEM_MAX_IN_FLIGHT: lambda s: s.max_in_flight,
    catalog.SYSTEM_PAUSED: lambda s: int(s.is_paused),
}
STABLE_PARTITION: dict[catalog.MetricDef, Callable[[Any], float | None]] = {
    catalog.PARTITION_TRUE_LAG: lambda p: p.true_lag,
    catalog.PARTITION_GAP_COUNT: lambda p: p.gap_count,
    catalog.PARTITION_BLOCKING_OFFSET: lambda p: (
        -1 if p.blocking_offset is None else p.blocking_offset
    ),
    catalog.PARTITION_QUEUED_COUNT: lambda p: p.queued_count,
    catalog.PARTITION_BROKER_LAG: lambda p: p.broker_lag,
}


def stable_view(snap: MetricsSnapshot) -> dict[tuple[str, str], float | None]:
    view: dict[tuple[str, str], float | None] = {
        (m.prometheus, ""): read(snap) for m, read in STABLE_SYSTEM.items()
    }
    for (_, partition), p in snap.partitions.items():
        for m, read in STABLE_PARTITION.items():
            view[(m.prometheus, str(partition))] = read(p)
    return view


def test_metrics_endpoint_has_every_catalog_metric_equal_to_get_metrics(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=3)
    produce_keyed(topic, 300, keys=30)
    # One key blocks (stable gaps, blocking offsets, queued messages); one message fails
    # once and succeeds on its retry (handler errors, retries).
    gate = Gate(lambda m: m.key == b"k7")
    failed_once: set[int] = set()

    async def handle(msg: Message) -> None:
        if msg.key == b"k3" and not failed_once:
            failed_once.add(msg.offset)
            raise ValueError("transient")
        await gate(msg)

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic], max_retries=1, retry_backoff_ms=10),
        handle,
    )
    cfg = consumer.config
    with ExitStack() as stack:
        stack.callback(gate.release)
        stack.enter_context(running(consumer))
        server = stack.enter_context(served(consumer))

        def settled() -> bool:
            snap = consumer.get_metrics()
            done = snap.counters["processed"] + snap.total_in_flight
            return (
                len(snap.partitions) == 3
                and done == 300
                and snap.counters["retried"] == 1
                and all(p.broker_lag is not None for p in snap.partitions.values())
                and all(p.commit_offset == p.committed_offset for p in snap.partitions.values())
            )

        wait_until(settled, timeout=60, message=lambda: f"settled state: {consumer.get_metrics()}")

        def scraped_equals_snapshot() -> bool:
            before = consumer.get_metrics()
            samples, types = scrape(server)
            after = consumer.get_metrics()
            if stable_view(before) != stable_view(after):
                return False  # a commit landed meanwhile: try again
            for (name, partition), expected in stable_view(after).items():
                labels = {"group": cfg.group_id, "client": cfg.client_id}
                if partition:
                    labels |= {"topic": topic, "partition": partition}
                mdef = catalog.BY_PROMETHEUS_NAME[name]
                assert gauge(samples, mdef, **labels) == expected, (name, partition)
            for key, p_before in before.partitions.items():
                p_after = after.partitions[key]
                value = gauge(samples, catalog.PARTITION_BLOCKING_DURATION, partition=str(key[1]))
                assert value is not None
                assert p_before.blocking_duration_sec <= value <= p_after.blocking_duration_sec
            age = gauge(samples, catalog.SYSTEM_POLL_AGE, client=cfg.client_id)
            assert age is not None and 0 <= age < 5
            check_names_types_labels(samples, types)
            return True

        wait_until(
            scraped_equals_snapshot, timeout=30, message="a scrape between two equal snapshots"
        )
        samples, _ = scrape(server)
        blocked = [
            labels for labels, v in samples[catalog.PARTITION_BLOCKING_OFFSET.prometheus] if v >= 0
        ]
        assert blocked, "the gated key should hold a commit point"
        consumed = sum(v for _, v in samples[catalog.CONSUMED_MESSAGES.prometheus])
        assert consumed == consumer.get_metrics().counters["processed"] + 1  # the failed try
        errors = samples[catalog.HANDLER_ERRORS.prometheus]
        assert [(labels["error_type"], v) for labels, v in errors] == [("ValueError", 1.0)]


def check_names_types_labels(samples: Samples, types: dict[str, str]) -> None:
    assert {n for n in types if n != "target_info"} == {m.prometheus for m in catalog.CATALOG}
    for mdef in catalog.CATALOG:
        assert types[mdef.prometheus] == mdef.prometheus_type, mdef.name
        name = mdef.prometheus + ("_bucket" if mdef.instrument == "histogram" else "")
        assert samples.get(name), f"no samples for {name}"
        wanted = {label.replace(".", "_") for label in mdef.labels}
        for labels, value in samples[name]:
            assert set(labels) - {"le"} == wanted, (name, labels)
            assert not math.isnan(value)


def test_two_consumers_in_one_process_keep_separate_series(
    bootstrap: str, make_topic: Any, produce_keyed: Any, unique_name: Callable[[str], str]
) -> None:
    topic = make_topic(partitions=2)
    produce_keyed(topic, 100, keys=10)
    groups = [unique_name("ga"), unique_name("gb")]
    # One application MeterProvider for both: the hardest case (shared instruments).
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )

    async def handle(msg: Message) -> None:
        return None

    shared = [
        ParallelConsumer(config(bootstrap, g, [topic]), handle, meter_provider=provider)
        for g in groups
    ]
    private = [
        ParallelConsumer(config(bootstrap, unique_name("gp"), [topic]), handle) for _ in range(2)
    ]
    with ExitStack() as stack:
        for c in shared + private:
            stack.enter_context(running(c))
        shared_server = stack.enter_context(served(shared[0], registry=registry))
        private_servers = [stack.enter_context(served(c)) for c in private]
        everyone = shared + private
        wait_until(
            lambda: all(c.get_metrics().counters["processed"] == 100 for c in everyone),
            timeout=60,
            message="every consumer processed the topic",
        )

        samples, _ = scrape(shared_server)
        lag = catalog.PARTITION_TRUE_LAG.prometheus
        by_group = {(labels["group"], labels["partition"]) for labels, _ in samples[lag]}
        assert by_group == {(g, p) for g in groups for p in ("0", "1")}
        consumed = samples[catalog.CONSUMED_MESSAGES.prometheus]
        per_group = {g: 0.0 for g in groups}
        for labels, v in consumed:
            per_group[labels["messaging_consumer_group_name"]] += v
        assert per_group == {g: 100.0 for g in groups}

        for c, srv in zip(private, private_servers, strict=True):
            samples, _ = scrape(srv)
            clients = {labels["client"] for labels, _ in samples[lag]}
            assert clients == {c.config.client_id}


class Stallable:
    """consumer_factory: a real Consumer whose consume() can be made to hang (a stuck loop)."""

    def __init__(self) -> None:
        self.stall = threading.Event()
        self.release = threading.Event()
        self.stalled = threading.Event()

    def __call__(self, settings: dict[str, Any]) -> Any:
        factory = self

        class StallingConsumer:
            def __init__(self) -> None:
                self._inner = Consumer(settings)

            def consume(self, num: int = 1, timeout: float = -1) -> Any:
                if factory.stall.is_set():
                    factory.stalled.set()
                    factory.release.wait(60)
                return self._inner.consume(num, timeout)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        return StallingConsumer()


def test_healthz_turns_503_while_the_poll_loop_is_stuck_and_back_to_200(
    bootstrap: str, make_topic: Any, group_id: str
) -> None:
    topic = make_topic(partitions=1)
    factory = Stallable()

    async def handle(msg: Message) -> None:
        return None

    consumer = ParallelConsumer(
        config(bootstrap, group_id, [topic]), handle, consumer_factory=factory
    )
    assert get_health_before_start(consumer) == 503
    with ExitStack() as stack:
        stack.callback(factory.release.set)
        stack.enter_context(running(consumer))
        server = stack.enter_context(served(consumer, max_poll_age_s=1.5))
        wait_until(lambda: get(server, "/healthz")[0] == 200, timeout=30, message="healthy")

        factory.stall.set()
        assert factory.stalled.wait(10)
        wait_until(
            lambda: get(server, "/healthz")[0] == 503,
            timeout=10,
            message="/healthz to notice the stuck loop",
        )
        status, body = get(server, "/healthz")
        assert status == 503
        assert "poll loop stuck" in body and "limit 1.5 s" in body

        factory.stall.clear()
        factory.release.set()
        wait_until(lambda: get(server, "/healthz")[0] == 200, timeout=10, message="healthy again")
    status, _ = get_after_stop(consumer)
    assert status == 503


def get_health_before_start(consumer: ParallelConsumer) -> int:
    with served(consumer) as server:
        return get(server, "/healthz")[0]


def get_after_stop(consumer: ParallelConsumer) -> tuple[int, str]:
    with served(consumer) as server:
        return get(server, "/healthz")


def test_revoked_partitions_disappear_from_the_next_scrape(
    bootstrap: str, make_topic: Any, produce_keyed: Any, group_id: str
) -> None:
    topic = make_topic(partitions=4)
    produce_keyed(topic, 40, keys=8)

    async def handle(msg: Message) -> None:
        return None

    cfg = config(bootstrap, group_id, [topic])
    first, second = ParallelConsumer(cfg, handle), ParallelConsumer(cfg, handle)
    lag = catalog.PARTITION_TRUE_LAG.prometheus
    partition_gauges = [
        m.prometheus for m in catalog.CATALOG if m.labels == catalog.PARTITION_LABELS
    ]

    def owned(c: ParallelConsumer) -> set[int]:
        return {p for (_, p) in c.get_metrics().partitions}

    with ExitStack() as stack:
        stack.enter_context(running(first))
        server = stack.enter_context(served(first))
        client = first.config.client_id
        wait_until(
            lambda: partitions_in(scrape(server)[0], lag, client) == {0, 1, 2, 3}, timeout=30
        )

        with running(second):
            wait_until(
                lambda: (
                    owned(second) and owned(first) and owned(first) | owned(second) == {0, 1, 2, 3}
                ),
                timeout=60,
                message="the group to split the partitions",
            )
            kept = owned(first)
            samples, _ = scrape(server)
            for name in partition_gauges:
                if name == catalog.PARTITION_BROKER_LAG.prometheus:
                    assert partitions_in(samples, name, client) <= kept
                else:
                    assert partitions_in(samples, name, client) == kept, name
        wait_until(lambda: owned(first) == {0, 1, 2, 3}, timeout=60, message="partitions back")
        assert partitions_in(scrape(server)[0], lag, client) == {0, 1, 2, 3}

        first.stop()
        samples, _ = scrape(server)
        assert all(not partitions_in(samples, name, client) for name in partition_gauges)


def test_status_cli_names_the_poison_partition_offset_and_blocking_time(
    bootstrap: str,
    make_topic: Any,
    produce_keyed: Any,
    group_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = make_topic(partitions=2)
    produce_keyed(topic, 60, keys=6)
    poison = Gate(lambda m: m.key == b"k4")  # blocks "forever": until the test ends

    consumer = ParallelConsumer(config(bootstrap, group_id, [topic]), poison)
    with ExitStack() as stack:
        stack.callback(poison.release)
        stack.enter_context(running(consumer, stop_timeout=5))
        server = stack.enter_context(served(consumer))

        def blocked_long() -> tuple[int, int] | None:
            for (_, partition), p in consumer.get_metrics().partitions.items():
                if p.blocking_offset is not None and p.blocking_duration_sec > 2.0:
                    return partition, p.blocking_offset
            return None

        found = wait_until(blocked_long, timeout=60, message="a blocked offset")
        assert found is not None
        partition, offset = found
        capsys.readouterr()
        assert pyrallel_cli.main(["status", "--url", server.url]) == 0
        out = capsys.readouterr().out
        line = next(
            (
                ln
                for ln in out.splitlines()
                if f"{topic}[{partition}] offset {offset} blocked for" in ln
            ),
            None,
        )
        assert line is not None, out
        seconds = float(line.split("blocked for ")[1].split(" s")[0])
        assert seconds >= 2.0
        assert "not paused" in out


@pytest.mark.parametrize("mode", ["link", "parent"])
def test_one_span_per_processed_message_tied_to_the_producers_trace(
    bootstrap: str, make_topic: Any, make_producer: Any, group_id: str, mode: str
) -> None:
    topic = make_topic(partitions=2)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    producer_tracer = provider.get_tracer("test-producer")
    producer = make_producer()
    sent: dict[str, Any] = {}
    for i in range(20):
        with producer_tracer.start_as_current_span(f"send {i}", kind=SpanKind.PRODUCER) as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            sent[str(i)] = span.get_span_context()
        producer.produce(
            topic, key=f"k{i % 4}".encode(), value=str(i).encode(), headers=list(carrier.items())
        )
    assert producer.flush(30) == 0

    async def handle(msg: Message) -> None:
        return None

    cfg = config(bootstrap, group_id, [topic])
    consumer = ParallelConsumer(
        cfg,
        handle,
        telemetry=OpenTelemetryTelemetry(cfg, tracer_provider=provider, span_links=mode),  # type: ignore[arg-type]
    )
    with running(consumer):
        wait_until(lambda: consumer.get_metrics().counters["processed"] == 20, timeout=60)

    spans = [s for s in exporter.get_finished_spans() if s.name == f"process {topic}"]
    assert len(spans) == 20
    by_offset = {
        (
            (s.attributes or {})["messaging.destination.partition.id"],
            (s.attributes or {})["messaging.kafka.offset"],
        )
        for s in spans
    }
    assert len(by_offset) == 20, "one span per message"
    upstream = {(sc.trace_id, sc.span_id) for sc in sent.values()}
    for s in spans:
        assert s.kind is SpanKind.CONSUMER
        assert (s.attributes or {})["messaging.consumer.group.name"] == group_id
        if mode == "link":
            assert s.parent is None
            assert len(s.links) == 1
            link = s.links[0].context
            assert (link.trace_id, link.span_id) in upstream
        else:
            assert s.parent is not None and (s.parent.trace_id, s.parent.span_id) in upstream
            assert s.context.trace_id == s.parent.trace_id
    targets = (
        [(s.links[0].context.trace_id, s.links[0].context.span_id) for s in spans]
        if mode == "link"
        else [(s.parent.trace_id, s.parent.span_id) for s in spans if s.parent is not None]
    )
    assert set(targets) == upstream, "every produced message's span is referenced once"
