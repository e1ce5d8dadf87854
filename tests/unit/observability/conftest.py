"""Fixtures for telemetry unit tests: configs, fake snapshots, exposition parsing.

Every test builds its own MeterProvider/TracerProvider or lets the telemetry build its
private one; nothing here touches the global OpenTelemetry providers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pyrallel.config import ConsumerConfig
from pyrallel.snapshot import MetricsSnapshot, PartitionMetrics

_seq = itertools.count(1)


@pytest.fixture(autouse=True)
def _globals_untouched() -> Iterator[None]:
    """The telemetry picks its private providers only while the globals are placeholders."""
    yield
    assert type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@pytest.fixture
def make_config() -> Callable[..., ConsumerConfig]:
    def make(**overrides: Any) -> ConsumerConfig:
        n = next(_seq)
        fields: dict[str, Any] = {
            "bootstrap_servers": "127.0.0.1:1",
            "group_id": f"group-{n}",
            "client_id": f"client-{n}",
            "topics": ["orders"],
        }
        fields.update(overrides)
        return ConsumerConfig(**fields)

    return make


def partition(topic: str = "orders", partition: int = 0, **fields: Any) -> PartitionMetrics:
    values: dict[str, Any] = {
        "true_lag": 0,
        "gap_count": 0,
        "blocking_offset": None,
        "blocking_duration_sec": 0.0,
        "queued_count": 0,
        "in_flight": 0,
        "last_fetched_offset": None,
        "commit_offset": None,
        "committed_offset": None,
        "high_watermark": None,
        "broker_lag": None,
        "epoch": 1,
    }
    values.update(fields)
    return PartitionMetrics(topic=topic, partition=partition, **values)


class FakeState:
    """A consumer state the test edits; ``snapshot()`` is what ``bind`` receives."""

    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.in_flight = 0
        self.max_in_flight = config.max_in_flight_messages
        self.paused = False
        self.running = True
        self.poll_age = 0.01
        self.partitions: dict[tuple[str, int], PartitionMetrics] = {}
        self.counters: dict[str, int] = {"processed": 0}
        self.calls = 0

    def add(self, p: PartitionMetrics) -> None:
        self.partitions[(p.topic, p.partition)] = p

    def snapshot(self) -> MetricsSnapshot:
        self.calls += 1
        return MetricsSnapshot(
            group_id=self.config.group_id,
            client_id=self.config.client_id,
            total_in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            is_paused=self.paused,
            running=self.running,
            poll_age_sec=self.poll_age,
            partitions=dict(self.partitions),
            counters=dict(self.counters),
        )


@pytest.fixture
def make_partition() -> Callable[..., PartitionMetrics]:
    return partition


@pytest.fixture
def make_state() -> Callable[[ConsumerConfig], FakeState]:
    return FakeState


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(registry: CollectorRegistry) -> tuple[str, Samples, dict[str, str]]:
    """(exposition text, {sample name: {sorted labels: value}}, {TYPE name: type})."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    return text, samples, types


@pytest.fixture
def scraper() -> Callable[[CollectorRegistry], tuple[str, Samples, dict[str, str]]]:
    return scrape
