"""The single list of every metric Pyrallel emits.

Code (instrument creation), docs, dashboards, alert rules and tests all read this list;
nothing else spells a metric name. ``name`` is the OpenTelemetry instrument name and
``prometheus`` the series name the Prometheus exporter produces from it (dots become
underscores, counters gain ``_total``, a ``s`` unit gains ``_seconds``). Gauges named
``..._sec`` keep an empty unit on purpose: the seed fixes their Prometheus name, and a
``s`` unit would make the exporter append ``_seconds`` to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Instrument = Literal["gauge", "counter", "histogram"]

SYSTEM_LABELS: tuple[str, ...] = ("group", "client")
PARTITION_LABELS: tuple[str, ...] = ("group", "client", "topic", "partition")

# Semantic-convention attribute keys (OpenTelemetry messaging conventions).
SEMCONV_LABELS: tuple[str, ...] = (
    "messaging.system",
    "messaging.consumer.group.name",
    "messaging.destination.name",
    "messaging.destination.partition.id",
    "messaging.operation.name",
    "messaging.client.id",
)

# Explicit bucket advice for processing duration, in seconds (floats, as the spec asks).
PROCESS_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True)
class MetricDef:
    name: str
    instrument: Instrument
    unit: str
    labels: tuple[str, ...]
    help: str
    prometheus: str

    @property
    def prometheus_type(self) -> str:
        return self.instrument


def _prom(name: str, instrument: Instrument, unit: str) -> str:
    base = name.replace(".", "_")
    if unit == "s" and not base.endswith("_seconds"):
        base += "_seconds"
    if instrument == "counter":
        base += "_total"
    return base


def _m(
    name: str, instrument: Instrument, unit: str, labels: tuple[str, ...], help: str
) -> MetricDef:
    return MetricDef(name, instrument, unit, labels, help, _prom(name, instrument, unit))


SYSTEM_IN_FLIGHT = _m(
    "pyrallel_system_in_flight",
    "gauge",
    "",
    SYSTEM_LABELS,
    "Messages held in memory by the consumer: processing plus waiting in key queues.",
)
SYSTEM_MAX_IN_FLIGHT = _m(
    "pyrallel_system_max_in_flight",
    "gauge",
    "",
    SYSTEM_LABELS,
    "Configured max_in_flight_messages; at this value backpressure pauses fetching.",
)
SYSTEM_PAUSED = _m(
    "pyrallel_system_paused",
    "gauge",
    "",
    SYSTEM_LABELS,
    "1 while fetching is paused by backpressure, 0 while running.",
)
SYSTEM_POLL_AGE = _m(
    "pyrallel_system_poll_age_sec",
    "gauge",
    "",
    SYSTEM_LABELS,
    "Seconds since the poll loop last called Kafka; rises only when the loop is stuck.",
)
PARTITION_TRUE_LAG = _m(
    "pyrallel_partition_true_lag",
    "gauge",
    "",
    PARTITION_LABELS,
    "Last fetched offset + 1 minus the next offset to commit: work really outstanding.",
)
PARTITION_GAP_COUNT = _m(
    "pyrallel_partition_gap_count",
    "gauge",
    "",
    PARTITION_LABELS,
    "Ranges of finished offsets that cannot be committed because an earlier one is not done.",
)
PARTITION_BLOCKING_OFFSET = _m(
    "pyrallel_partition_blocking_offset",
    "gauge",
    "",
    PARTITION_LABELS,
    "Lowest unfinished offset holding the commit point back; -1 when nothing is pending.",
)
PARTITION_BLOCKING_DURATION = _m(
    "pyrallel_partition_blocking_duration_sec",
    "gauge",
    "",
    PARTITION_LABELS,
    "Seconds the blocking offset has held the commit point; 0 when nothing is pending.",
)
PARTITION_QUEUED_COUNT = _m(
    "pyrallel_partition_queued_count",
    "gauge",
    "",
    PARTITION_LABELS,
    "Messages fetched and waiting behind a busy key (not yet handed to the engine).",
)
PARTITION_BROKER_LAG = _m(
    "pyrallel_partition_broker_lag",
    "gauge",
    "",
    PARTITION_LABELS,
    "Broker high watermark minus the committed offset (classic Kafka consumer lag).",
)
CONSUMED_MESSAGES = _m(
    "messaging.client.consumed.messages",
    "counter",
    "{message}",
    SEMCONV_LABELS,
    "Messages delivered to the handler (OpenTelemetry messaging semantic convention).",
)
PROCESS_DURATION = _m(
    "messaging.process.duration",
    "histogram",
    "s",
    (*SEMCONV_LABELS, "error.type"),
    "Duration of one handler call, in seconds (OpenTelemetry messaging semantic convention).",
)
COMMITS = _m(
    "pyrallel_commits",
    "counter",
    "",
    (*SYSTEM_LABELS, "outcome"),
    "Offset commits by outcome (success, failure).",
)
REBALANCES = _m(
    "pyrallel_rebalances",
    "counter",
    "",
    (*SYSTEM_LABELS, "kind"),
    "Rebalance callbacks by kind (assign, revoke, lost).",
)
RETRIES = _m(
    "pyrallel_retries",
    "counter",
    "",
    (*SYSTEM_LABELS, "topic"),
    "Handler attempts scheduled again after a failure.",
)
DLQ_MESSAGES = _m(
    "pyrallel_dlq_messages",
    "counter",
    "",
    (*SYSTEM_LABELS, "topic", "outcome"),
    "Dead-letter writes by outcome (delivered, failed).",
)
HANDLER_ERRORS = _m(
    "pyrallel_handler_errors",
    "counter",
    "",
    (*SYSTEM_LABELS, "topic", "error_type"),
    "Handler calls that raised or timed out.",
)
FAILURES_SKIPPED = _m(
    "pyrallel_failures_skipped",
    "counter",
    "",
    (*SYSTEM_LABELS, "topic"),
    "Messages marked done after their last failed attempt because on_failure='skip'.",
)
SKIPPED_DONE = _m(
    "pyrallel_skipped_done_offsets",
    "counter",
    "",
    (*SYSTEM_LABELS, "topic"),
    "Fetched offsets skipped because commit metadata says an earlier owner finished them.",
)
WORKER_RESTARTS = _m(
    "pyrallel_worker_restarts",
    "counter",
    "",
    SYSTEM_LABELS,
    "Engine workers replaced after dying or timing out.",
)

CATALOG: tuple[MetricDef, ...] = (
    SYSTEM_IN_FLIGHT,
    SYSTEM_MAX_IN_FLIGHT,
    SYSTEM_PAUSED,
    SYSTEM_POLL_AGE,
    PARTITION_TRUE_LAG,
    PARTITION_GAP_COUNT,
    PARTITION_BLOCKING_OFFSET,
    PARTITION_BLOCKING_DURATION,
    PARTITION_QUEUED_COUNT,
    PARTITION_BROKER_LAG,
    CONSUMED_MESSAGES,
    PROCESS_DURATION,
    COMMITS,
    REBALANCES,
    RETRIES,
    DLQ_MESSAGES,
    HANDLER_ERRORS,
    FAILURES_SKIPPED,
    SKIPPED_DONE,
    WORKER_RESTARTS,
)

BY_PROMETHEUS_NAME: dict[str, MetricDef] = {m.prometheus: m for m in CATALOG}
