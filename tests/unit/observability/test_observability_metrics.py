"""OpenTelemetryTelemetry: catalog names on the wire, gauge values, series lifecycle, cost.

Two ways to run the telemetry are covered wherever behaviour could differ:
``private`` (no provider given: its own MeterProvider and Prometheus registry) and
``sdk`` (the application's MeterProvider with a Prometheus reader on a fresh registry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, Histogram, InMemoryMetricReader, Sum
from prometheus_client import CollectorRegistry

from pyrallel.config import ConsumerConfig
from pyrallel.message import Message
from pyrallel.observability import catalog
from pyrallel.observability.catalog import MetricDef
from pyrallel.observability.metrics import OpenTelemetryTelemetry

Scrape = Callable[[CollectorRegistry], tuple[str, dict[str, Any], dict[str, str]]]


def sanitized(labels: tuple[str, ...]) -> set[str]:
    return {label.replace(".", "_") for label in labels}


def build(mode: str, config: ConsumerConfig) -> tuple[OpenTelemetryTelemetry, CollectorRegistry]:
    if mode == "private":
        telemetry = OpenTelemetryTelemetry(config)
        assert telemetry.prometheus_registry is not None
        return telemetry, telemetry.prometheus_registry
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    telemetry = OpenTelemetryTelemetry(config, meter_provider=provider)
    assert telemetry.prometheus_registry is None
    return telemetry, registry


def exercise_every_hook(telemetry: OpenTelemetryTelemetry) -> None:
    ok = Message("orders", 0, 10, b"k", b"v")
    bad = Message("orders", 0, 11, b"k", b"v")
    telemetry.completed([(ok, None, 0.004), (bad, ValueError("boom"), 0.2)])
    telemetry.committed(3, 1)
    telemetry.rebalance("assign", [("orders", 0)])
    telemetry.retry(bad)
    telemetry.handler_error(bad, ValueError("boom"))
    telemetry.failure_skipped(bad)
    telemetry.dlq(bad, "delivered")
    telemetry.skipped_done("orders", 2)
    telemetry.worker_restart(1)


MODES = ["private", "sdk"]


@pytest.mark.parametrize("mode", MODES)
def test_every_catalog_metric_is_exported_under_its_prometheus_name_type_and_labels(
    mode: str, make_config: Any, make_state: Any, make_partition: Any, scraper: Scrape
) -> None:
    config = make_config()
    telemetry, registry = build(mode, config)
    state = make_state(config)
    state.add(make_partition(broker_lag=4, blocking_offset=7))
    telemetry.bind(state.snapshot)
    exercise_every_hook(telemetry)

    text, samples, types = scraper(registry)

    exported = {name for name in types if name != "target_info"}
    assert exported == {m.prometheus for m in catalog.CATALOG}, text
    for mdef in catalog.CATALOG:
        assert types[mdef.prometheus] == mdef.prometheus_type, mdef.name
        names = (
            [mdef.prometheus + "_bucket"] if mdef.instrument == "histogram" else [mdef.prometheus]
        )
        for name in names:
            assert samples.get(name), f"{name}: no samples\n{text}"
            for labels in samples[name]:
                keys = {k for k, _ in labels} - {"le"}
                if mode == "sdk":  # the application's reader adds instrumentation-scope labels
                    keys = {k for k in keys if not k.startswith("otel_scope_")}
                assert keys == sanitized(mdef.labels), (name, keys)


def test_otel_instruments_carry_catalog_names_units_kinds_and_attributes(
    make_config: Any, make_state: Any, make_partition: Any
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    config = make_config()
    telemetry = OpenTelemetryTelemetry(config, meter_provider=provider)
    state = make_state(config)
    state.add(make_partition(broker_lag=0))
    telemetry.bind(state.snapshot)
    exercise_every_hook(telemetry)

    data = reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "pyrallel"
        for m in sm.metrics
    }
    assert set(found) == {m.name for m in catalog.CATALOG}
    kinds: dict[str, type] = {"gauge": Gauge, "counter": Sum, "histogram": Histogram}
    for mdef in catalog.CATALOG:
        metric = found[mdef.name]
        assert metric.unit == mdef.unit, mdef.name
        assert metric.description == mdef.help
        assert isinstance(metric.data, kinds[mdef.instrument]), mdef.name
        if isinstance(metric.data, Sum):
            assert metric.data.is_monotonic
        for point in metric.data.data_points:
            keys = set(point.attributes or {})
            # error.type is only on failed calls (semantic conventions: conditionally required)
            assert keys == set(mdef.labels) or keys == set(mdef.labels) - {"error.type"}
    duration = found[catalog.PROCESS_DURATION.name].data
    assert isinstance(duration, Histogram)
    point = duration.data_points[0]
    assert tuple(point.explicit_bounds) == catalog.PROCESS_DURATION_BUCKETS
    assert dict(point.attributes or {})["messaging.system"] == "kafka"


@pytest.mark.parametrize("mode", MODES)
def test_gauges_report_the_snapshot_at_collection_time(
    mode: str, make_config: Any, make_state: Any, make_partition: Any, scraper: Scrape
) -> None:
    config = make_config(max_in_flight_messages=50)
    telemetry, registry = build(mode, config)
    state = make_state(config)
    state.in_flight, state.paused, state.poll_age = 50, True, 2.5
    state.add(
        make_partition(
            partition=3,
            true_lag=120,
            gap_count=4,
            blocking_offset=1234,
            blocking_duration_sec=31.5,
            queued_count=9,
            broker_lag=777,
        )
    )
    state.add(make_partition(partition=5))  # nothing pending, broker lag unknown
    telemetry.bind(state.snapshot)

    _, samples, _ = scraper(registry)

    def value(mdef: MetricDef, **labels: str) -> float | None:
        wanted = {"group": config.group_id, "client": config.client_id, **labels}
        for key, v in samples.get(mdef.prometheus, {}).items():
            if {k: val for k, val in key if not k.startswith("otel_scope_")} == wanted:
                return float(v)
        return None

    assert value(catalog.SYSTEM_IN_FLIGHT) == 50
    assert value(catalog.SYSTEM_MAX_IN_FLIGHT) == 50
    assert value(catalog.SYSTEM_PAUSED) == 1
    assert value(catalog.SYSTEM_POLL_AGE) == 2.5
    p3 = {"topic": "orders", "partition": "3"}
    p5 = {"topic": "orders", "partition": "5"}
    assert value(catalog.PARTITION_TRUE_LAG, **p3) == 120
    assert value(catalog.PARTITION_GAP_COUNT, **p3) == 4
    assert value(catalog.PARTITION_BLOCKING_OFFSET, **p3) == 1234
    assert value(catalog.PARTITION_BLOCKING_DURATION, **p3) == 31.5
    assert value(catalog.PARTITION_QUEUED_COUNT, **p3) == 9
    assert value(catalog.PARTITION_BROKER_LAG, **p3) == 777
    assert value(catalog.PARTITION_BLOCKING_OFFSET, **p5) == -1
    assert value(catalog.PARTITION_BLOCKING_DURATION, **p5) == 0
    assert value(catalog.PARTITION_BROKER_LAG, **p5) is None  # unknown is left out

    state.paused, state.in_flight = False, 3
    _, samples, _ = scraper(registry)
    assert value(catalog.SYSTEM_PAUSED) == 0
    assert value(catalog.SYSTEM_IN_FLIGHT) == 3


@pytest.mark.parametrize("mode", MODES)
def test_revoked_partition_series_are_gone_from_the_next_scrape(
    mode: str, make_config: Any, make_state: Any, make_partition: Any, scraper: Scrape
) -> None:
    config = make_config()
    telemetry, registry = build(mode, config)
    state = make_state(config)
    for p in (0, 1):
        state.add(make_partition(partition=p, broker_lag=1, blocking_offset=5))
    telemetry.bind(state.snapshot)
    telemetry.completed([(Message("orders", 1, 5, b"k", b"v"), None, 0.01)])

    def partitions_in(samples: dict[str, Any], mdef: MetricDef) -> set[str]:
        return {dict(labels)["partition"] for labels in samples.get(mdef.prometheus, {})}

    _, before, _ = scraper(registry)
    partition_gauges = [m for m in catalog.CATALOG if m.labels == catalog.PARTITION_LABELS]
    assert partition_gauges
    for mdef in partition_gauges:
        assert partitions_in(before, mdef) == {"0", "1"}, mdef.name

    del state.partitions[("orders", 1)]  # what the core's snapshot does on revoke
    telemetry.partitions_removed([("orders", 1)])
    text, after, _ = scraper(registry)

    for mdef in partition_gauges:
        assert partitions_in(after, mdef) == {"0"}, mdef.name
    assert 'partition="1"' not in text
    # Cumulative semantic-convention series are counters: they stay (no reset on re-assign).
    consumed = catalog.CONSUMED_MESSAGES.prometheus
    assert any(dict(k)["messaging_destination_partition_id"] == "1" for k in after[consumed])


def test_two_consumers_with_private_providers_have_separate_registries_and_series(
    make_config: Any, make_state: Any, make_partition: Any, scraper: Scrape
) -> None:
    a_cfg, b_cfg = make_config(), make_config()
    a, b = OpenTelemetryTelemetry(a_cfg), OpenTelemetryTelemetry(b_cfg)
    for telemetry, cfg, true_lag in ((a, a_cfg, 10), (b, b_cfg, 20)):
        state = make_state(cfg)
        state.add(make_partition(true_lag=true_lag))
        telemetry.bind(state.snapshot)
    assert a.prometheus_registry is not b.prometheus_registry
    assert a.prometheus_registry is not None and b.prometheus_registry is not None

    _, a_samples, _ = scraper(a.prometheus_registry)
    _, b_samples, _ = scraper(b.prometheus_registry)

    lag = catalog.PARTITION_TRUE_LAG.prometheus
    assert [(dict(k)["client"], v) for k, v in a_samples[lag].items()] == [(a_cfg.client_id, 10)]
    assert [(dict(k)["client"], v) for k, v in b_samples[lag].items()] == [(b_cfg.client_id, 20)]


def test_two_consumers_sharing_one_provider_each_keep_their_own_series(
    make_config: Any, make_state: Any, make_partition: Any, scraper: Scrape
) -> None:
    # The SDK keeps only the first callback of a duplicate observable instrument, so a
    # naive telemetry would report the first consumer only.
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    configs = [make_config(group_id="orders"), make_config(group_id="payments")]
    telemetries = []
    for cfg, lag in zip(configs, (10, 20), strict=True):
        telemetry = OpenTelemetryTelemetry(cfg, meter_provider=provider)
        state = make_state(cfg)
        state.add(make_partition(true_lag=lag))
        telemetry.bind(state.snapshot)
        telemetry.completed([(Message("orders", 0, 1, None, b"v"), None, 0.01)])
        telemetries.append(telemetry)

    _, samples, _ = scraper(registry)

    lag_by_group = {
        dict(k)["group"]: v for k, v in samples[catalog.PARTITION_TRUE_LAG.prometheus].items()
    }
    assert lag_by_group == {"orders": 10, "payments": 20}
    consumed = samples[catalog.CONSUMED_MESSAGES.prometheus]
    assert {dict(k)["messaging_consumer_group_name"] for k in consumed} == {"orders", "payments"}

    telemetries[0].close()
    _, samples, _ = scraper(registry)
    lag_by_group = {
        dict(k)["group"]: v for k, v in samples[catalog.PARTITION_TRUE_LAG.prometheus].items()
    }
    assert lag_by_group == {"payments": 20}


@pytest.mark.parametrize("mode", MODES)
def test_one_snapshot_per_collection_shared_by_every_gauge(
    mode: str, make_config: Any, make_state: Any, make_partition: Any, scraper: Scrape
) -> None:
    config = make_config()
    telemetry, registry = build(mode, config)
    state = make_state(config)
    state.add(make_partition())
    telemetry.bind(state.snapshot)
    for expected in (1, 2, 3):
        scraper(registry)
        assert state.calls == expected


def test_bind_again_replaces_the_snapshot_source(
    make_config: Any, make_state: Any, scraper: Scrape
) -> None:
    config = make_config()
    telemetry, registry = build("private", config)
    first, second = make_state(config), make_state(config)
    first.in_flight, second.in_flight = 1, 2
    telemetry.bind(first.snapshot)
    telemetry.bind(second.snapshot)  # run_async() builds a new runtime and binds again
    _, samples, _ = scraper(registry)
    assert list(samples[catalog.SYSTEM_IN_FLIGHT.prometheus].values()) == [2]


def test_self_aggregated_duration_histogram_matches_the_sdk_aggregation(
    make_config: Any, scraper: Scrape
) -> None:
    config = make_config()
    private, private_registry = build("private", config)
    sdk, sdk_registry = build("sdk", config)
    # Values on bucket bounds belong to the lower bucket; beyond the last bound is +Inf.
    durations = [0.0, 0.0005, 0.0006, 0.005, 0.0051, 0.9, 1.0, 59.9, 60.0, 61.0, 1e6]
    batch = [
        (Message("orders", i % 2, i, b"k", b"v"), TimeoutError() if i % 3 == 0 else None, d)
        for i, d in enumerate(durations)
    ]
    private.completed(batch)
    sdk.completed(batch)

    def histogram(registry: CollectorRegistry) -> dict[tuple[Any, ...], float]:
        _, samples, _ = scraper(registry)
        base = catalog.PROCESS_DURATION.prometheus
        out = {}
        for suffix in ("_bucket", "_count", "_sum"):
            for labels, v in samples[base + suffix].items():
                kept = tuple((k, x) for k, x in labels if not k.startswith("otel_scope_"))
                out[(suffix, kept)] = v
        return out

    ours, reference = histogram(private_registry), histogram(sdk_registry)
    assert ours.keys() == reference.keys()
    for key, v in reference.items():
        assert ours[key] == pytest.approx(v), key
    errors = {dict(k[1]).get("error_type") for k in ours}
    assert errors == {"", "TimeoutError"}


def test_consumed_counter_counts_every_handler_call_per_partition(
    make_config: Any, scraper: Scrape
) -> None:
    telemetry, registry = build("private", make_config())
    telemetry.completed([(Message("orders", 0, i, None, b"v"), None, 0.001) for i in range(5)])
    telemetry.completed([(Message("orders", 1, 0, None, b"v"), KeyError("x"), 0.001)])
    telemetry.completed([])
    _, samples, _ = scraper(registry)
    consumed = {
        dict(k)["messaging_destination_partition_id"]: v
        for k, v in samples[catalog.CONSUMED_MESSAGES.prometheus].items()
    }
    assert consumed == {"0": 5, "1": 1}


def test_event_counters_carry_outcome_kind_topic_and_error_type(
    make_config: Any, scraper: Scrape
) -> None:
    telemetry, registry = build("private", make_config())
    msg = Message("orders", 2, 9, b"k", b"v")
    telemetry.committed(5, 0)
    telemetry.committed(2, 3)
    telemetry.committed(0, 0)
    for kind in ("assign", "revoke", "assign", "lost"):
        telemetry.rebalance(kind, [("orders", 2)])
    telemetry.handler_error(msg, TimeoutError())
    telemetry.handler_error(msg, TimeoutError())
    telemetry.dlq(msg, "failed")
    _, samples, _ = scraper(registry)

    def by(mdef: MetricDef, label: str) -> dict[str, float]:
        return {dict(k)[label]: v for k, v in samples[mdef.prometheus].items()}

    assert by(catalog.COMMITS, "outcome") == {"success": 7, "failure": 3}
    assert by(catalog.REBALANCES, "kind") == {"assign": 2, "revoke": 1, "lost": 1}
    assert by(catalog.HANDLER_ERRORS, "error_type") == {"TimeoutError": 2}
    assert by(catalog.DLQ_MESSAGES, "outcome") == {"failed": 1, "delivered": 0}


def test_a_failing_snapshot_does_not_break_the_scrape(
    make_config: Any, scraper: Scrape, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry, registry = build("private", make_config())

    def broken() -> Any:
        raise RuntimeError("snapshot exploded")

    telemetry.bind(broken)
    telemetry.committed(1, 0)
    with caplog.at_level(logging.ERROR, logger="pyrallel.observability.metrics"):
        scraper(registry)
        _, samples, _ = scraper(registry)
    assert catalog.COMMITS.prometheus in samples
    assert catalog.SYSTEM_IN_FLIGHT.prometheus not in samples
    assert len([r for r in caplog.records if "snapshot failed" in r.message]) == 1


def test_close_stops_reporting(make_config: Any, make_state: Any, scraper: Scrape) -> None:
    config = make_config()
    telemetry, registry = build("private", config)
    telemetry.bind(make_state(config).snapshot)
    telemetry.close()
    _, samples, _ = scraper(registry)
    assert not any(name.startswith("pyrallel_") for name in samples)
    telemetry.close()  # idempotent


def test_completed_stays_cheap_on_the_default_path(make_config: Any) -> None:
    # The default path must not call the SDK once per message (about 8 us each here,
    # as much as the whole pipeline spends on a no-op message). The bound is loose on
    # purpose: measured about 0.3 us per message.
    telemetry, _ = build("private", make_config())
    batch = [(Message("orders", i % 8, i, b"k", b"v"), None, 0.001 * (i % 50)) for i in range(500)]
    telemetry.completed(batch)  # first use creates the per-partition series
    best = min(_timed(lambda: telemetry.completed(batch)) for _ in range(20))
    assert best / len(batch) < 2.5e-6, f"{best / len(batch) * 1e6:.2f} us per completion"


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@pytest.mark.parametrize("mode", MODES)
def test_counters_with_known_labels_start_at_zero(
    mode: str, make_config: Any, scraper: Scrape
) -> None:
    # increase() cannot see a first event whose series appears already at 1.
    config = make_config(topics=["orders", "payments", "^audit-.*"])
    _, registry = build(mode, config)
    _, samples, _ = scraper(registry)

    def rows(mdef: MetricDef, *labels: str) -> set[tuple[str, ...]]:
        return {
            tuple(dict(k)[label] for label in labels)
            for k, v in samples.get(mdef.prometheus, {}).items()
            if v == 0
        }

    topics = {("orders",), ("payments",)}
    assert rows(catalog.COMMITS, "outcome") == {("success",), ("failure",)}
    assert rows(catalog.REBALANCES, "kind") == {("assign",), ("revoke",), ("lost",)}
    assert rows(catalog.RETRIES, "topic") == topics
    assert rows(catalog.FAILURES_SKIPPED, "topic") == topics
    assert rows(catalog.SKIPPED_DONE, "topic") == topics
    assert rows(catalog.DLQ_MESSAGES, "topic", "outcome") == {
        (t, o) for (t,) in topics for o in ("delivered", "failed")
    }
    assert rows(catalog.WORKER_RESTARTS) == {()}
    assert catalog.HANDLER_ERRORS.prometheus not in samples  # error types are open-ended


def test_two_error_classes_of_one_name_share_a_duration_series(
    make_config: Any, scraper: Scrape
) -> None:
    telemetry, registry = build("private", make_config())
    first = type("Boom", (Exception,), {})
    second = type("Boom", (Exception,), {})
    msg = Message("orders", 0, 1, b"k", b"v")
    telemetry.completed([(msg, first(), 0.01), (msg, second(), 0.01)])
    _, samples, _ = scraper(registry)  # duplicate label sets would not even parse
    counts = [
        v
        for k, v in samples[catalog.PROCESS_DURATION.prometheus + "_count"].items()
        if dict(k)["error_type"] == "Boom"
    ]
    assert counts == [2]
