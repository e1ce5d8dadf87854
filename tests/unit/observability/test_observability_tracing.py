"""Processing spans: name, kind, semantic-convention attributes, links/parents, errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pyrallel.config import ConsumerConfig
from pyrallel.engines.aio import AsyncExecutionEngine
from pyrallel.errors import ConfigError
from pyrallel.message import Message
from pyrallel.observability.metrics import OpenTelemetryTelemetry
from pyrallel.observability.tracing import SpanLinks, build_span_factory


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    tp = TracerProvider(shutdown_on_exit=False)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def producer_headers(provider: TracerProvider) -> tuple[list[tuple[str, bytes | None]], Any]:
    """Headers a traced producer would send, and that producer span's context."""
    tracer = provider.get_tracer("test-producer")
    with tracer.start_as_current_span("send orders", kind=SpanKind.PRODUCER) as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    headers = [(k, v.encode()) for k, v in carrier.items()]
    return [("other", b"x"), *headers], span.get_span_context()


def run(factory: Any, msg: Message, body: Callable[[], None] = lambda: None) -> None:
    with factory(msg):
        body()


def only(exporter: InMemorySpanExporter, name: str = "process orders") -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def test_no_tracer_provider_configured_means_no_span_factory(make_config: Any) -> None:
    assert OpenTelemetryTelemetry(make_config()).span_factory is None
    assert build_span_factory(make_config(), None) is None


def test_span_name_kind_and_semantic_convention_attributes(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    config: ConsumerConfig = make_config(group_id="billing", client_id="billing-1")
    factory = OpenTelemetryTelemetry(config, tracer_provider=provider).span_factory
    assert factory is not None
    run(factory, Message("orders", 7, 4242, b"customer-1", b"hello", attempt=3))

    span = only(exporter)
    assert span.kind is SpanKind.CONSUMER
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "7",
        "messaging.kafka.offset": 4242,
        "messaging.consumer.group.name": "billing",
        "messaging.client.id": "billing-1",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "pyrallel.attempt": 3,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None and not span.links


def test_key_only_when_opted_in_and_tombstones_flagged(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    factory = build_span_factory(make_config(), provider, record_key=True)
    assert factory is not None
    run(factory, Message("orders", 0, 1, b"customer-\xff", None))
    attrs = dict(only(exporter).attributes or {})
    assert attrs["messaging.kafka.message.key"] == "customer-\\xff"
    assert attrs["messaging.kafka.message.tombstone"] is True


def test_traceparent_becomes_a_link_by_default(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    headers, upstream = producer_headers(provider)
    factory = build_span_factory(make_config(), provider)
    run(factory, Message("orders", 0, 1, b"k", b"v", headers))

    span = only(exporter)
    assert span.parent is None
    assert span.context.trace_id != upstream.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (upstream.trace_id, upstream.span_id)
    ]


def test_traceparent_becomes_the_parent_when_configured(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    headers, upstream = producer_headers(provider)
    telemetry = OpenTelemetryTelemetry(make_config(), tracer_provider=provider, span_links="parent")
    run(telemetry.span_factory, Message("orders", 0, 1, b"k", b"v", headers))

    span = only(exporter)
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id) == (upstream.trace_id, upstream.span_id)
    assert span.context.trace_id == upstream.trace_id
    assert not span.links


def test_missing_or_garbage_traceparent_gives_a_root_span_without_links(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    modes: tuple[SpanLinks, ...] = ("link", "parent")
    for mode in modes:
        factory = build_span_factory(make_config(), provider, span_links=mode)
        run(factory, Message("orders", 0, 1, b"k", b"v", [("traceparent", b"not-a-trace")]))
        run(factory, Message("orders", 0, 2, b"k", b"v", [("traceparent", None)]))
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    assert all(s.parent is None and not s.links for s in spans)


def test_handler_exception_marks_the_span_failed_and_propagates(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    factory = build_span_factory(make_config(), provider)

    def fail() -> None:
        raise TimeoutError("downstream too slow")

    with pytest.raises(TimeoutError):
        run(factory, Message("orders", 0, 1, b"k", b"v"), fail)

    span = only(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert "downstream too slow" in (span.status.description or "")
    assert (span.attributes or {})["error.type"] == "TimeoutError"
    assert [e.name for e in span.events] == ["exception"]


def test_span_is_current_inside_the_handler_and_not_after(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    factory = build_span_factory(make_config(), provider)
    seen: list[int] = []
    run(
        factory,
        Message("orders", 0, 1, b"k", b"v"),
        lambda: seen.append(trace.get_current_span().get_span_context().span_id),
    )
    assert seen == [only(exporter).context.span_id]
    assert not trace.get_current_span().get_span_context().is_valid


def test_invalid_span_links_option_is_refused(make_config: Any, provider: TracerProvider) -> None:
    with pytest.raises(ConfigError, match="span_links"):
        OpenTelemetryTelemetry(make_config(), tracer_provider=provider, span_links="child")  # type: ignore[arg-type]


def test_async_engine_opens_one_span_per_handler_call(
    make_config: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    factory = build_span_factory(make_config(), provider)
    inside: list[bool] = []

    async def handle(msg: Message) -> None:
        await asyncio.sleep(0)
        inside.append(trace.get_current_span().get_span_context().is_valid)
        if msg.offset == 2:
            raise ValueError("bad record")

    done = threading.Event()
    results: list[tuple[int, BaseException | None]] = []

    def deliver(msg: Message, error: BaseException | None, _duration: float) -> None:
        results.append((msg.offset, error))
        if len(results) == 3:
            done.set()

    engine = AsyncExecutionEngine(handle, span_factory=factory)
    engine.start(deliver)
    try:
        engine.submit([Message("orders", 0, i, f"k{i}".encode(), b"v") for i in range(3)])
        assert done.wait(10)
    finally:
        engine.stop(1)

    def offset_of(span: ReadableSpan) -> int:
        return int(str((span.attributes or {})["messaging.kafka.offset"]))

    spans = sorted(exporter.get_finished_spans(), key=offset_of)
    assert [offset_of(s) for s in spans] == [0, 1, 2]
    assert [s.status.status_code for s in spans] == [
        StatusCode.UNSET,
        StatusCode.UNSET,
        StatusCode.ERROR,
    ]
    assert inside == [True, True, True]
