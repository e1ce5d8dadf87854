"""One OpenTelemetry span per handler call: ``process {topic}``, kind CONSUMER.

Attributes follow the current messaging semantic conventions: ``messaging.system``,
``messaging.destination.name``, ``messaging.destination.partition.id``,
``messaging.kafka.offset``, ``messaging.consumer.group.name``, ``messaging.client.id``,
``messaging.operation.name`` / ``messaging.operation.type`` (both ``process``),
``messaging.kafka.message.tombstone`` for a null value, the key as
``messaging.kafka.message.key`` only when ``record_key=True``, and ``pyrallel.attempt``
(1 for the first call, then one more per retry). Opt-in conventions such as the body
size are left out: with the SDK, every attribute costs about a microsecond per span.

The producer's trace context is extracted from the message headers (``traceparent``, by
the globally configured propagator, W3C trace context unless the application changed
it). With ``span_links="link"`` (the default) the processing span starts its own trace
and links to the producer's creation context, so a retried or re-delivered message, or
work done hours after the send, does not grow the producer's trace; the conventions ask
for that link and leave the parent optional. ``span_links="parent"`` makes the producer's
span the parent instead, continuing its trace. A handler exception ends the span with
status ERROR, an ``exception`` event and ``error.type`` (the exception's class name).
"""

from __future__ import annotations

import importlib.metadata
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from pyrallel.config import ConsumerConfig
from pyrallel.errors import ConfigError

if TYPE_CHECKING:
    from pyrallel.engines.base import SpanFactory
    from pyrallel.message import Message

SpanLinks = Literal["link", "parent"]
Headers = list[tuple[str, bytes | None]]

try:
    SCOPE_VERSION = importlib.metadata.version("pyrallel")
    """Version of the instrumentation scope (meter and tracer) ``pyrallel``."""
except importlib.metadata.PackageNotFoundError:  # running from a checkout that is not installed
    SCOPE_VERSION = "0+unknown"
_ROOT = Context()  # an explicit empty context: never nest under whatever happens to be current


class _HeaderGetter(Getter[Headers]):
    """Reads Kafka headers (a list of name/bytes pairs) for a TextMapPropagator."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [v.decode("latin-1") for k, v in carrier if v is not None and k.lower() == key]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def _is_default(provider: object) -> bool:
    return isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def build_span_factory(
    config: ConsumerConfig,
    tracer_provider: trace.TracerProvider | None,
    *,
    span_links: SpanLinks = "link",
    record_key: bool = False,
) -> SpanFactory | None:
    """The engines' span factory, or ``None`` when tracing is not configured at all.

    ``tracer_provider=None`` means the global provider; if that is still the API's
    proxy/no-op placeholder there is nothing to record, and returning ``None`` lets the
    engines skip span handling entirely instead of creating no-op spans per message.
    """
    if span_links not in ("link", "parent"):
        raise ConfigError("span_links", span_links, "'link' or 'parent'")
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if tracer_provider is None and _is_default(provider):
        return None
    return ProcessSpans(
        provider.get_tracer("pyrallel", SCOPE_VERSION),
        config,
        parent_from_headers=span_links == "parent",
        record_key=record_key,
    )


class ProcessSpans:
    """Callable ``(Message) -> context manager`` opening the processing span of a call."""

    def __init__(
        self,
        tracer: trace.Tracer,
        config: ConsumerConfig,
        *,
        parent_from_headers: bool = False,
        record_key: bool = False,
    ) -> None:
        self._tracer = tracer
        self._parent = parent_from_headers
        self._record_key = record_key
        self._base: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.consumer.group.name": config.group_id,
            "messaging.client.id": config.client_id,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
        }
        self._names: dict[str, str] = {}

    def __call__(self, msg: Message) -> AbstractContextManager[Any]:
        name = self._names.get(msg.topic)
        if name is None:
            name = self._names[msg.topic] = f"process {msg.topic}"
        attrs = {
            **self._base,
            "messaging.destination.name": msg.topic,
            "messaging.destination.partition.id": str(msg.partition),
            "messaging.kafka.offset": msg.offset,
            "pyrallel.attempt": msg.attempt,
        }
        if msg.value is None:
            attrs["messaging.kafka.message.tombstone"] = True
        if self._record_key and msg.key is not None:
            attrs["messaging.kafka.message.key"] = msg.key.decode("utf-8", "backslashreplace")
        parent = _ROOT
        links: list[Link] | None = None
        if msg.headers:
            upstream = propagate.extract(msg.headers, context=_ROOT, getter=_GETTER)
            if self._parent:
                parent = upstream
            else:
                span_context = trace.get_current_span(upstream).get_span_context()
                if span_context.is_valid:
                    links = [Link(span_context)]
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attrs,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        return _ActiveSpan(span)


class _ActiveSpan:
    """Makes the span current for the handler call and ends it; errors mark it failed."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if exc is not None:
                span.set_attribute("error.type", type(exc).__qualname__)
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            span.end()
