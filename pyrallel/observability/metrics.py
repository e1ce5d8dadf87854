"""OpenTelemetry metrics (and spans) for a :class:`~pyrallel.ParallelConsumer`.

Every instrument comes from :mod:`pyrallel.observability.catalog`; this module never
spells a metric name.

Which MeterProvider
    ``meter_provider`` if given, else the global one. When neither is configured (the
    global is still the API's proxy/no-op provider) the telemetry builds a private SDK
    MeterProvider whose only reader is a Prometheus reader on a *private*
    ``CollectorRegistry`` (:attr:`OpenTelemetryTelemetry.prometheus_registry`). That is
    what :func:`pyrallel.observability.http.serve` exposes on ``/metrics``; nothing is
    added to ``prometheus_client.REGISTRY``, so two consumers in one process never share
    or collide in a registry.

Gauges
    Observable gauges read the consumer's ``get_metrics()`` snapshot at collection time
    (one snapshot per collection, shared by every gauge of that collection). A partition
    that is no longer in the snapshot (revoked, lost, consumer stopped) is simply not
    observed, and the SDK drops series that a callback did not report, so its series are
    gone from the next scrape. ``pyrallel_partition_blocking_offset`` is -1 when nothing
    is pending; ``pyrallel_partition_broker_lag`` is left out while it is unknown (no
    committed offset or high watermark yet) rather than reported as a made-up number.

Sharing one provider
    The SDK keeps only the first callback of an observable instrument created twice under
    one name, so the instruments of a provider are created once and shared
    (:class:`_Instruments`); each telemetry adds its own snapshot, labelled with its
    ``group``/``client``. Two consumers therefore have separate series in one provider.

The hot path (``completed``)
    It runs on the poll thread once per loop iteration with up to hundreds of
    completions. An SDK ``Histogram.record`` costs about 8 us here (attribute cleaning
    and hashing per call), as much as the whole pipeline spends on a no-op message, so:

    * ``messaging.client.consumed.messages`` is an observable counter over per-partition
      tallies (one integer increment per message, no SDK call);
    * with the private provider, ``messaging.process.duration`` is aggregated here into
      the catalog's explicit buckets (a ``bisect`` and two additions per message) and
      handed to the private Prometheus reader as a cumulative OpenTelemetry histogram at
      collection time (:class:`_PrometheusReader`);
    * with a caller's provider the histogram is a real SDK instrument (bucket advice
      ``explicit_bucket_boundaries_advisory``), recorded once per message with a cached
      attribute dict: correct for any exporter, at the SDK's per-call cost.

    Counters of rarer events (commits, rebalances, retries, ...) are SDK counters; those
    whose label values are known up front start at 0, so ``increase()`` sees the first
    event. Per-partition duration and consumed series are cumulative and outlive a revoke.

Lifetime
    Nothing global holds a telemetry: when its consumer is dropped, its series go and
    its private provider is collected. :meth:`OpenTelemetryTelemetry.close` does the
    same at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry

from pyrallel.config import ConsumerConfig
from pyrallel.observability import catalog
from pyrallel.observability.catalog import MetricDef
from pyrallel.observability.hooks import Completion, NullTelemetry
from pyrallel.observability.tracing import SCOPE_VERSION, SpanLinks, build_span_factory
from pyrallel.snapshot import MetricsSnapshot, PartitionMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from pyrallel.message import Message

log = logging.getLogger(__name__)

_SCOPE = "pyrallel"
_BOUNDS: tuple[float, ...] = tuple(float(b) for b in catalog.PROCESS_DURATION_BUCKETS)
_SNAPSHOT_REUSE_S = 1.0
"""A gauge callback reuses the snapshot another gauge took this recently (same scrape)."""

SYSTEM_GAUGES: dict[MetricDef, Callable[[MetricsSnapshot], float]] = {
    # How each catalog gauge is read from a snapshot (also used by http.serve's fallback).
    catalog.SYSTEM_IN_FLIGHT: lambda s: s.total_in_flight,
    catalog.SYSTEM_MAX_IN_FLIGHT: lambda s: s.max_in_flight,
    catalog.SYSTEM_PAUSED: lambda s: 1 if s.is_paused else 0,
    catalog.SYSTEM_POLL_AGE: lambda s: s.poll_age_sec,
}
PARTITION_GAUGES: dict[MetricDef, Callable[[PartitionMetrics], float | None]] = {
    # None: no sample for that partition (value unknown).
    catalog.PARTITION_TRUE_LAG: lambda p: p.true_lag,
    catalog.PARTITION_GAP_COUNT: lambda p: p.gap_count,
    catalog.PARTITION_BLOCKING_OFFSET: lambda p: (
        -1 if p.blocking_offset is None else p.blocking_offset
    ),
    catalog.PARTITION_BLOCKING_DURATION: lambda p: p.blocking_duration_sec,
    catalog.PARTITION_QUEUED_COUNT: lambda p: p.queued_count,
    catalog.PARTITION_BROKER_LAG: lambda p: p.broker_lag,
}
_COUNTERS: tuple[MetricDef, ...] = (
    catalog.COMMITS,
    catalog.REBALANCES,
    catalog.RETRIES,
    catalog.DLQ_MESSAGES,
    catalog.HANDLER_ERRORS,
    catalog.FAILURES_SKIPPED,
    catalog.SKIPPED_DONE,
    catalog.WORKER_RESTARTS,
)
_UNCOVERED = set(catalog.CATALOG) - {
    *SYSTEM_GAUGES,
    *PARTITION_GAUGES,
    *_COUNTERS,
    catalog.CONSUMED_MESSAGES,
    catalog.PROCESS_DURATION,
}
if _UNCOVERED:  # a catalog entry without an instrument here would never be exported
    raise RuntimeError(
        f"catalog metrics without an instrument: {sorted(m.name for m in _UNCOVERED)}"
    )


def _is_default(provider: object) -> bool:
    """True for the API's placeholder providers (nothing configured by the application)."""
    if isinstance(provider, otel_metrics.NoOpMeterProvider):
        return True
    # The proxy handed out before set_meter_provider() has no public name.
    return type(provider).__name__ == "_ProxyMeterProvider"


class _Tally:
    """One cumulative explicit-bucket histogram stream (bucket ``i`` holds values in
    ``(bounds[i-1], bounds[i]]``, as the OpenTelemetry SDK counts them)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.sum = 0.0


class _Series:
    """Semantic-convention streams of one partition: attributes, tallies, consumed count."""

    __slots__ = ("attrs", "consumed", "errors", "ok")

    def __init__(self, attrs: dict[str, str]) -> None:
        self.attrs = attrs
        self.consumed = 0
        self.ok = _Tally()
        self.errors: dict[str, tuple[dict[str, str], _Tally]] = {}

    def error(self, error: BaseException) -> tuple[dict[str, str], _Tally]:
        # Keyed by the exported name, not the class: two classes of one name must share
        # a series, or the exposition would carry the same label set twice.
        kind = type(error).__qualname__
        entry = self.errors.get(kind)
        if entry is None:
            entry = self.errors[kind] = ({**self.attrs, "error.type": kind}, _Tally())
        return entry


class _Instruments:
    """The instruments of one MeterProvider, shared by every telemetry that uses it."""

    def __init__(self, meter: Meter, *, sdk_histogram: bool) -> None:
        self._members: weakref.WeakSet[OpenTelemetryTelemetry] = weakref.WeakSet()
        self._lock = threading.Lock()
        for index, mdef in enumerate(SYSTEM_GAUGES):
            # The first gauge of a collection takes the snapshot the others reuse.
            callback = partial(self._observe_system, mdef, index == 0)
            meter.create_observable_gauge(
                mdef.name, [callback], unit=mdef.unit, description=mdef.help
            )
        for mdef in PARTITION_GAUGES:
            meter.create_observable_gauge(
                mdef.name,
                [partial(self._observe_partition, mdef)],
                unit=mdef.unit,
                description=mdef.help,
            )
        consumed = catalog.CONSUMED_MESSAGES
        meter.create_observable_counter(
            consumed.name, [self._observe_consumed], unit=consumed.unit, description=consumed.help
        )
        self.counters = {
            m.name: meter.create_counter(m.name, unit=m.unit, description=m.help) for m in _COUNTERS
        }
        duration = catalog.PROCESS_DURATION
        self.duration = (
            meter.create_histogram(
                duration.name,
                unit=duration.unit,
                description=duration.help,
                explicit_bucket_boundaries_advisory=list(_BOUNDS),
            )
            if sdk_histogram
            else None
        )

    def add(self, member: OpenTelemetryTelemetry) -> None:
        with self._lock:
            self._members.add(member)

    def discard(self, member: OpenTelemetryTelemetry) -> None:
        with self._lock:
            self._members.discard(member)

    def _live(self) -> list[OpenTelemetryTelemetry]:
        with self._lock:
            return list(self._members)

    def _observe_system(
        self, mdef: MetricDef, refresh: bool, _options: CallbackOptions
    ) -> Iterable[Observation]:
        value = SYSTEM_GAUGES[mdef]
        out: list[Observation] = []
        for member in self._live():
            snap = member._current_snapshot(refresh)
            if snap is not None:
                out.append(Observation(value(snap), member._system_attrs))
        return out

    def _observe_partition(
        self, mdef: MetricDef, _options: CallbackOptions
    ) -> Iterable[Observation]:
        value = PARTITION_GAUGES[mdef]
        out: list[Observation] = []
        for member in self._live():
            snap = member._current_snapshot(False)
            if snap is None:
                continue
            for key, part in snap.partitions.items():
                v = value(part)
                if v is not None:
                    out.append(Observation(v, member._partition_attrs(key)))
        return out

    def _observe_consumed(self, _options: CallbackOptions) -> Iterable[Observation]:
        out: list[Observation] = []
        for member in self._live():
            with member._tally_lock:
                out.extend(Observation(s.consumed, s.attrs) for s in member._series.values())
        return out


_shared: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def _instruments_for(provider: MeterProvider) -> _Instruments:
    with _shared_lock:
        found = _shared.get(provider)
        if found is None:
            meter = provider.get_meter(_SCOPE, SCOPE_VERSION)
            found = _shared[provider] = _Instruments(meter, sdk_histogram=True)
        return found


class _PrometheusReader(PrometheusMetricReader):
    """Prometheus reader on a private registry that also exports the duration histogram
    the telemetry aggregates itself (see the module docstring, "The hot path")."""

    def __init__(
        self, registry: CollectorRegistry, resource: Resource, extra: Callable[[], Metric | None]
    ) -> None:
        # Scope labels would say "pyrallel" on every series of a registry that holds
        # nothing else; they only add bytes to each scrape.
        super().__init__(registry=registry, scope_info_enabled=False)
        self._resource = resource
        self._extra = extra

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        metric = self._extra()
        if metric is not None:
            scope = ScopeMetrics(InstrumentationScope(_SCOPE, SCOPE_VERSION), [metric], "")
            resources = list(metrics_data.resource_metrics) if metrics_data else []
            if resources:
                first = resources[0]
                resources[0] = ResourceMetrics(
                    first.resource, [*first.scope_metrics, scope], first.schema_url
                )
            else:
                resources = [ResourceMetrics(self._resource, [scope], "")]
            metrics_data = MetricsData(resources)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)


class OpenTelemetryTelemetry(NullTelemetry):
    """Catalog metrics through OpenTelemetry, and per-message spans when tracing is on.

    ``meter_provider``: the provider to create instruments in; ``None`` means the global
    one, or, when the application configured none, a private provider exposed through
    :attr:`prometheus_registry` (module docstring). ``tracer_provider``: likewise for
    spans, except that with none configured there are no spans at all
    (:attr:`span_factory` is ``None`` and the engines skip the span code).
    ``span_links``: ``"link"`` (default) links each processing span to the producer's
    ``traceparent``; ``"parent"`` makes it the parent. ``record_key`` adds the message
    key to spans (off by default: keys may be personal data). Telemetry only reads the
    consumer's state; turning it off changes no behaviour.
    """

    def __init__(
        self,
        config: ConsumerConfig,
        *,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        span_links: SpanLinks = "link",
        record_key: bool = False,
    ) -> None:
        self._config = config
        group, client = config.group_id, config.client_id
        self._system_attrs = {"group": group, "client": client}
        self._partition_attr_cache: dict[tuple[str, int], dict[str, str]] = {}
        self._label_cache: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}
        self._series: dict[tuple[str, int], _Series] = {}
        self._tally_lock = threading.Lock()
        self._snapshot_fn: Callable[[], MetricsSnapshot] | None = None
        self._snap: MetricsSnapshot | None = None
        self._snap_at = 0.0
        self._snapshot_failed = False
        self._start_ns = time.time_ns()
        self._own_provider: SdkMeterProvider | None = None
        self._registry: CollectorRegistry | None = None

        provider = (
            meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
        )
        if meter_provider is None and _is_default(provider):
            self._registry = CollectorRegistry(auto_describe=True)
            resource = Resource.create()
            reader = _PrometheusReader(self._registry, resource, self._duration_metric)
            self._own_provider = SdkMeterProvider(
                metric_readers=[reader], resource=resource, shutdown_on_exit=False
            )
            meter = self._own_provider.get_meter(_SCOPE, SCOPE_VERSION)
            self._instruments = _Instruments(meter, sdk_histogram=False)
        else:
            self._instruments = _instruments_for(provider)
        self._meter_provider: MeterProvider = self._own_provider or provider
        self._instruments.add(self)
        self._counters = self._instruments.counters
        self._zero_known_series()
        self.span_factory = build_span_factory(
            config, tracer_provider, span_links=span_links, record_key=record_key
        )

    # -- what serve() and tests read ---------------------------------------------------------

    @property
    def prometheus_registry(self) -> CollectorRegistry | None:
        """The private registry of the telemetry's own provider; ``None`` when the
        application's provider is used (then its own readers export the metrics)."""
        return self._registry

    @property
    def meter_provider(self) -> MeterProvider:
        return self._meter_provider

    # -- hooks -------------------------------------------------------------------------------

    def bind(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        """Gauges read ``snapshot()`` from now on; binding again replaces the source."""
        self._snapshot_fn = snapshot
        self._snap = None

    def completed(self, batch: Sequence[Completion]) -> None:
        """Count and time a batch of handler calls (poll thread; see "The hot path")."""
        if not batch:
            return
        series = self._series
        histogram = self._instruments.duration
        with self._tally_lock:
            if histogram is None:
                bounds = _BOUNDS
                for msg, error, duration in batch:
                    s = series.get((msg.topic, msg.partition))
                    if s is None:
                        s = self._new_series(msg.topic, msg.partition)
                    s.consumed += 1
                    tally = s.ok if error is None else s.error(error)[1]
                    tally.counts[bisect_left(bounds, duration)] += 1
                    tally.sum += duration
            else:
                record = histogram.record
                for msg, error, duration in batch:
                    s = series.get((msg.topic, msg.partition))
                    if s is None:
                        s = self._new_series(msg.topic, msg.partition)
                    s.consumed += 1
                    record(duration, s.attrs if error is None else s.error(error)[0])

    def committed(self, succeeded: int, failed: int) -> None:
        counter = self._counters[catalog.COMMITS.name]
        if succeeded:
            counter.add(succeeded, self._labels(catalog.COMMITS, "success"))
        if failed:
            counter.add(failed, self._labels(catalog.COMMITS, "failure"))

    def rebalance(self, kind: str, partitions: Sequence[tuple[str, int]]) -> None:
        self._counters[catalog.REBALANCES.name].add(1, self._labels(catalog.REBALANCES, kind))

    def partitions_removed(self, partitions: Sequence[tuple[str, int]]) -> None:
        # Gauge series vanish by themselves (the snapshot no longer has the partition);
        # this only frees the cached label dicts.
        for key in partitions:
            self._partition_attr_cache.pop(key, None)

    def retry(self, msg: Message) -> None:
        self._counters[catalog.RETRIES.name].add(1, self._labels(catalog.RETRIES, msg.topic))

    def handler_error(self, msg: Message, error: BaseException) -> None:
        mdef = catalog.HANDLER_ERRORS
        labels = self._labels(mdef, msg.topic, type(error).__qualname__)
        self._counters[mdef.name].add(1, labels)

    def failure_skipped(self, msg: Message) -> None:
        mdef = catalog.FAILURES_SKIPPED
        self._counters[mdef.name].add(1, self._labels(mdef, msg.topic))

    def dlq(self, msg: Message, outcome: str) -> None:
        mdef = catalog.DLQ_MESSAGES
        self._counters[mdef.name].add(1, self._labels(mdef, msg.topic, outcome))

    def skipped_done(self, topic: str, count: int) -> None:
        mdef = catalog.SKIPPED_DONE
        self._counters[mdef.name].add(count, self._labels(mdef, topic))

    def worker_restart(self, count: int) -> None:
        mdef = catalog.WORKER_RESTARTS
        self._counters[mdef.name].add(count, self._labels(mdef))

    def close(self) -> None:
        """Stop reporting this consumer; shut the private provider down if there is one."""
        self._instruments.discard(self)
        if self._own_provider is not None:
            self._own_provider.shutdown()
            self._own_provider = None

    # -- internals ---------------------------------------------------------------------------

    def _zero_known_series(self) -> None:
        """Export every counter series whose labels are known up front, at 0.

        Prometheus' ``increase()``/``rate()`` see nothing for a series whose first sample
        is already 1, so an alert on the first worker restart or DLQ write would miss it.
        ``pyrallel_handler_errors`` is left out: its ``error_type`` values are open-ended.
        """
        topics = [t for t in self._config.topics if not t.startswith("^")]  # not patterns
        known: dict[MetricDef, list[tuple[str, ...]]] = {
            catalog.COMMITS: [("success",), ("failure",)],
            catalog.REBALANCES: [("assign",), ("revoke",), ("lost",)],
            catalog.RETRIES: [(t,) for t in topics],
            catalog.DLQ_MESSAGES: [(t, o) for t in topics for o in ("delivered", "failed")],
            catalog.FAILURES_SKIPPED: [(t,) for t in topics],
            catalog.SKIPPED_DONE: [(t,) for t in topics],
            catalog.WORKER_RESTARTS: [()],
        }
        for mdef, rows in known.items():
            counter = self._counters[mdef.name]
            for values in rows:
                counter.add(0, self._labels(mdef, *values))

    def _labels(self, mdef: MetricDef, *values: str) -> dict[str, str]:
        """Cached attribute dict for ``mdef``: group, client, then ``values`` in label order."""
        key = (mdef.name, values)
        found = self._label_cache.get(key)
        if found is None:
            found = dict(zip(mdef.labels, (*self._system_attrs.values(), *values), strict=True))
            self._label_cache[key] = found
        return found

    def _partition_attrs(self, key: tuple[str, int]) -> dict[str, str]:
        found = self._partition_attr_cache.get(key)
        if found is None:
            found = {**self._system_attrs, "topic": key[0], "partition": str(key[1])}
            self._partition_attr_cache[key] = found
        return found

    def _new_series(self, topic: str, partition: int) -> _Series:
        cfg = self._config
        s = _Series(
            {
                "messaging.system": "kafka",
                "messaging.consumer.group.name": cfg.group_id,
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.operation.name": "process",
                "messaging.client.id": cfg.client_id,
            }
        )
        self._series[(topic, partition)] = s
        return s

    def _current_snapshot(self, refresh: bool) -> MetricsSnapshot | None:
        fn = self._snapshot_fn
        if fn is None:
            return None
        now = time.monotonic()
        if refresh or self._snap is None or now - self._snap_at > _SNAPSHOT_REUSE_S:
            try:
                self._snap = fn()
            except Exception:
                # A broken snapshot must not break the scrape of everything else.
                if not self._snapshot_failed:
                    self._snapshot_failed = True
                    log.exception("metrics snapshot failed client=%s", self._config.client_id)
                return None
            self._snap_at = now
        return self._snap

    def _duration_metric(self) -> Metric | None:
        """The self-aggregated ``messaging.process.duration`` as a cumulative histogram."""
        now = time.time_ns()
        points = []
        with self._tally_lock:
            for s in self._series.values():
                streams = [(s.attrs, s.ok), *s.errors.values()]
                for attrs, tally in streams:
                    count = sum(tally.counts)
                    if count:
                        points.append(
                            HistogramDataPoint(
                                attributes=attrs,
                                start_time_unix_nano=self._start_ns,
                                time_unix_nano=now,
                                count=count,
                                sum=tally.sum,
                                bucket_counts=list(tally.counts),
                                explicit_bounds=_BOUNDS,
                                # Not tracked (two more comparisons per message); the
                                # Prometheus exposition has no min/max to carry them.
                                min=math.nan,
                                max=math.nan,
                            )
                        )
        if not points:
            return None
        mdef = catalog.PROCESS_DURATION
        data = Histogram(points, AggregationTemporality.CUMULATIVE)
        return Metric(mdef.name, mdef.help, mdef.unit, data)
