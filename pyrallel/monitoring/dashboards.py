"""Grafana dashboards, built with grafanalib and generated to ``dashboards/*.json``.

Three dashboards follow the seed's rows: **System Overview**, **Performance** and
**Internal State**. Each opens with the seed's panels exactly as the seed specifies them
(panel type, query text, thresholds, colours), followed by the panels an operator needs
beside them. The seed's queries are kept verbatim, so they aggregate every consumer the
data source sees; the added panels filter on the ``$group`` and ``$topic`` variables.

Every dashboard has a ``datasource`` variable (type Prometheus; the provisioned data
source has uid :data:`PROMETHEUS_DATASOURCE_UID`), a stable uid, links to the other two
dashboards, and panels that link to the runbook of every alert they visualise. Colour
steps and threshold lines come from :class:`~pyrallel.monitoring.thresholds.Thresholds`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    REFRESH_ON_TIME_RANGE_CHANGE,
    BarGauge,
    DashboardLink,
    Stat,
    StateTimeline,
    Template,
)

from pyrallel.monitoring import alerts
from pyrallel.monitoring._panels import DATASOURCE, PanelBuilder, steps
from pyrallel.monitoring.thresholds import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    human_span,
    prom_duration,
)
from pyrallel.observability import catalog

PROMETHEUS_DATASOURCE_UID = "pyrallel-prometheus"
"""Uid of the Prometheus data source that Grafana provisioning creates for Pyrallel."""

SYSTEM_OVERVIEW_UID = "pyrallel-system-overview"
PERFORMANCE_UID = "pyrallel-performance"
INTERNAL_STATE_UID = "pyrallel-internal-state"

TITLES: dict[str, str] = {
    SYSTEM_OVERVIEW_UID: "Pyrallel / System Overview",
    PERFORMANCE_UID: "Pyrallel / Performance",
    INTERNAL_STATE_UID: "Pyrallel / Internal State",
}
"""Dashboard uid to title, in generation order; files are ``dashboards/<uid>.json``."""

_RATE = "$__rate_interval"
_GROUP = 'group=~"$group"'
_TOPIC = 'topic=~"$topic"'
_PARTITION = f"{_GROUP}, {_TOPIC}"
_SEMCONV_GROUP = catalog.SEMCONV_LABELS[1].replace(".", "_")  # messaging_consumer_group_name
_SEMCONV_TOPIC = catalog.SEMCONV_LABELS[2].replace(".", "_")  # messaging_destination_name
_SEMCONV_FILTER = f'{_SEMCONV_GROUP}=~"$group", {_SEMCONV_TOPIC}=~"$topic"'


def _m(metric: catalog.MetricDef, suffix: str = "") -> str:
    return metric.prometheus + suffix


@dataclass(frozen=True)
class PanelInfo:
    """Where a panel is, what it queries and which alerts' runbooks it links to."""

    dashboard_uid: str
    dashboard_title: str
    row: str
    title: str
    type: str
    expressions: tuple[str, ...]
    alerts: tuple[str, ...]


def _total_in_flight(b: PanelBuilder, t: Thresholds) -> None:
    """Seed: Total In-Flight, yellow at 80 % and red at 100 % of max_in_flight.

    Percentage thresholds are relative to the field's min..max; query B supplies max (the
    summed ``max_in_flight``) through the "config from query results" transformation, so
    the colours follow each deployment's configured cap.
    """
    b.add(
        Stat,
        [
            (f"sum({_m(catalog.SYSTEM_IN_FLIGHT)})", "in flight"),
            (f"sum({_m(catalog.SYSTEM_MAX_IN_FLIGHT)})", "Max"),
        ],
        width=8,
        height=6,
        alert_names=[alerts.IN_FLIGHT_HIGH, alerts.IN_FLIGHT_SATURATED],
        title="Total In-Flight",
        description=(
            "Messages held in memory (processing + waiting). Yellow at"
            f" {t.in_flight_warning_ratio * 100:g} %, red at"
            f" {t.in_flight_critical_ratio * 100:g} % of max_in_flight; at the cap"
            " backpressure pauses fetching."
        ),
        color={"mode": "thresholds"},
        colorMode="background",
        graphMode="area",
        reduceCalc="lastNotNull",
        format="short",
        noValue="No data",
        thresholdType="percentage",
        thresholds=steps(
            ("green", None),
            ("yellow", t.in_flight_warning_ratio * 100),
            ("red", t.in_flight_critical_ratio * 100),
        ),
        transformations=[
            {
                "id": "configFromData",
                "options": {
                    "configRefId": "B",
                    "mappings": [
                        {"fieldName": "Max", "handlerKey": "max", "reducerId": "lastNotNull"}
                    ],
                },
            }
        ],
        extraJson={"fieldConfig": {"defaults": {"min": 0}}},
    )


def _consumer_status(b: PanelBuilder) -> None:
    """Seed: Consumer Status, 0 = Running (green), 1 = Paused (red)."""
    b.add(
        StateTimeline,
        [(_m(catalog.SYSTEM_PAUSED), "{{group}} / {{client}}")],
        width=16,
        height=6,
        alert_names=[alerts.CONSUMER_PAUSED],
        title="Consumer Status",
        description="Backpressure state of each consumer: Running, or Paused at the cap.",
        colorMode="thresholds",
        thresholds=steps(("green", None), ("red", 1)),
        mappings=[
            {
                "type": "value",
                "options": {
                    "0": {"text": "Running", "color": "green", "index": 0},
                    "1": {"text": "Paused", "color": "red", "index": 1},
                },
            }
        ],
    )


def _queued_messages(b: PanelBuilder) -> None:
    """Seed: Queued Messages as a bar gauge, one bar per partition.

    grafanalib writes the bar gauge's pre-7.0 ``fieldOptions``; ``extraJson`` adds the
    current ``fieldConfig`` and ``reduceOptions`` with the same values, so either reading
    gives the same panel.
    """
    base = steps(("green", None))
    b.add(
        BarGauge,
        [(_m(catalog.PARTITION_QUEUED_COUNT), "{{topic}}/{{partition}}")],
        width=12,
        height=8,
        title="Queued Messages",
        description=(
            "Messages fetched and waiting behind a busy key, per partition: the backlog of"
            " the virtual partition queues."
        ),
        displayMode="gradient",
        orientation="horizontal",
        calc="lastNotNull",
        format="short",
        min=0,
        max=None,
        thresholds=base,
        extraJson={
            "fieldConfig": {
                "defaults": {
                    "min": 0,
                    "unit": "short",
                    "color": {"mode": "continuous-GrYlRd"},
                    "thresholds": {"mode": "absolute", "steps": base},
                },
                "overrides": [],
            },
            "options": {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showUnfilled": True,
            },
        },
    )


def _dashboard(b: PanelBuilder, uid: str, description: str) -> Any:
    links = [
        DashboardLink(
            type="link",
            title=title,
            uri=f"/d/{other}",
            icon="dashboard",
            includeVars=True,
            keepTime=True,
        )
        for other, title in TITLES.items()
        if other != uid
    ]
    return b.dashboard(
        uid=uid, title=TITLES[uid], description=description, links=links, variables=_variables()
    )


def _variables() -> list[Any]:
    lag = _m(catalog.PARTITION_TRUE_LAG)
    return [
        Template(
            name="datasource",
            label="Data source",
            type="datasource",
            query="prometheus",
            default=PROMETHEUS_DATASOURCE_UID,
        ),
        Template(
            name="group",
            label="Consumer group",
            query=f"label_values({_m(catalog.SYSTEM_IN_FLIGHT)}, group)",
            dataSource=DATASOURCE,
            includeAll=True,
            multi=True,
            allValue=".*",
            default="$__all",
            refresh=REFRESH_ON_TIME_RANGE_CHANGE,
        ),
        Template(
            name="topic",
            label="Topic",
            query=f"label_values({lag}{{{_GROUP}}}, topic)",
            dataSource=DATASOURCE,
            includeAll=True,
            multi=True,
            allValue=".*",
            default="$__all",
            refresh=REFRESH_ON_TIME_RANGE_CHANGE,
        ),
    ]


def _throughput(b: PanelBuilder, width: int = 12) -> None:
    consumed = _m(catalog.CONSUMED_MESSAGES)
    b.timeseries(
        "Throughput",
        [
            (
                f"sum by ({_SEMCONV_TOPIC}) (rate({consumed}{{{_SEMCONV_FILTER}}}[{_RATE}]))",
                f"{{{{{_SEMCONV_TOPIC}}}}}",
            )
        ],
        description="Messages delivered to the handler per second, by topic.",
        unit="short",
        width=width,
    )


def _latency(b: PanelBuilder, width: int = 12) -> None:
    bucket = _m(catalog.PROCESS_DURATION, "_bucket")
    rate = f"sum by (le) (rate({bucket}{{{_SEMCONV_FILTER}}}[{_RATE}]))"
    b.timeseries(
        "Processing latency p50 / p99",
        [(f"histogram_quantile({q}, {rate})", f"p{q * 100:g}") for q in (0.5, 0.99)],
        description="Handler call duration quantiles from the processing-duration histogram.",
        unit="s",
        width=width,
    )


def _system_overview(t: Thresholds, base: str) -> Any:
    b = PanelBuilder(base)
    b.row("System Overview")
    _total_in_flight(b, t)
    _consumer_status(b)
    b.row("Throughput and health")
    _throughput(b)
    _latency(b)
    in_flight, cap = _m(catalog.SYSTEM_IN_FLIGHT), _m(catalog.SYSTEM_MAX_IN_FLIGHT)
    b.timeseries(
        "In-flight / max_in_flight by consumer",
        [(f"{in_flight}{{{_GROUP}}} / {cap}{{{_GROUP}}}", "{{group}} / {{client}}")],
        description="Each consumer's share of its cap, as the in-flight alerts evaluate it.",
        unit="percentunit",
        width=8,
        threshold_steps=steps(
            ("green", None),
            ("yellow", t.in_flight_warning_ratio),
            ("red", t.in_flight_critical_ratio),
        ),
        alert_names=[alerts.IN_FLIGHT_HIGH, alerts.IN_FLIGHT_SATURATED],
    )
    b.timeseries(
        "Poll loop age",
        [(f"max by (group, client) ({_m(catalog.SYSTEM_POLL_AGE)}{{{_GROUP}}})", "{{client}}")],
        description=(
            "Seconds since the poll loop last called Kafka; near zero while healthy, paused or"
            " not. The member is evicted at max_poll_interval_ms."
        ),
        unit="s",
        width=8,
        threshold_steps=steps(("green", None), ("red", t.poll_age_max_s)),
        alert_names=[alerts.POLL_LOOP_STALLED],
    )
    errors = _m(catalog.HANDLER_ERRORS)
    b.timeseries(
        "Handler errors",
        [
            (
                f"sum by (topic, error_type) (rate({errors}{{{_PARTITION}}}[{_RATE}]))",
                "{{topic}} {{error_type}}",
            )
        ],
        description="Handler calls that raised or timed out, per second.",
        width=8,
    )
    return _dashboard(
        b, SYSTEM_OVERVIEW_UID, "Load, backpressure, throughput and health of Pyrallel consumers."
    )


def _performance(t: Thresholds, base: str) -> Any:
    b = PanelBuilder(base)
    b.row("Performance")
    b.timeseries(
        "True Lag by Partition",
        [(_m(catalog.PARTITION_TRUE_LAG), "{{topic}}/{{partition}}")],
        description=(
            "Work fetched but not yet committable, per partition. One partition spiking alone"
            " points at key skew."
        ),
        stacked=True,
        alert_names=[alerts.TRUE_LAG_RISING],
    )
    b.timeseries(
        "Blocking Duration",
        [(f"max({_m(catalog.PARTITION_BLOCKING_DURATION)})", "max blocking duration")],
        description=(
            "How long the oldest unfinished offset has held a commit point. Ever rising means"
            " a poison pill."
        ),
        unit="s",
        threshold_steps=steps(
            ("green", None), ("yellow", t.blocking_warning_s), ("red", t.blocking_critical_s)
        ),
        alert_names=[alerts.COMMIT_BLOCKED, alerts.POISON_PILL],
    )
    b.row("Lag, blocking offsets and throughput")
    b.timeseries(
        "Broker lag by partition",
        [
            (
                f"sum by (topic, partition) ({_m(catalog.PARTITION_BROKER_LAG)}{{{_PARTITION}}})",
                "{{topic}}/{{partition}}",
            )
        ],
        description="Classic Kafka lag: broker high watermark minus the committed offset.",
    )
    b.timeseries(
        "Blocking offset by partition",
        [
            (
                f"{_m(catalog.PARTITION_BLOCKING_OFFSET)}{{{_PARTITION}}} >= 0",
                "{{topic}}/{{partition}}",
            )
        ],
        description=(
            "The lowest unfinished offset holding each commit point back (hidden while nothing"
            " is pending). A flat line is the offset to look for in handler logs."
        ),
        unit="none",
        alert_names=[alerts.COMMIT_BLOCKED, alerts.POISON_PILL],
    )
    _throughput(b)
    _latency(b)
    return _dashboard(b, PERFORMANCE_UID, "True lag, blocking offsets, throughput and latency.")


def _internal_state(t: Thresholds, base: str) -> Any:
    b = PanelBuilder(base)
    b.row("Internal State")
    b.timeseries(
        "Gap Count",
        [(f"sum({_m(catalog.PARTITION_GAP_COUNT)})", "gaps")],
        description=(
            "Finished ranges waiting behind unfinished offsets. High right after a rebalance"
            " is normal; high at rest means heavy out-of-order completion."
        ),
        alert_names=[alerts.GAP_COUNT_HIGH],
    )
    _queued_messages(b)
    b.row("Commits, rebalances and failures")
    b.timeseries(
        "Gap count by partition",
        [(f"{_m(catalog.PARTITION_GAP_COUNT)}{{{_PARTITION}}}", "{{topic}}/{{partition}}")],
        description="Gaps per partition against the alert's line.",
        width=8,
        threshold_steps=steps(("green", None), ("red", t.gap_count_high)),
        alert_names=[alerts.GAP_COUNT_HIGH],
    )
    b.timeseries(
        "Commits by outcome",
        [
            (
                f"sum by (outcome) (rate({_m(catalog.COMMITS)}{{{_GROUP}}}[{_RATE}]))",
                "{{outcome}}",
            )
        ],
        description="Offset commits per second, successful and failed.",
        width=8,
        alert_names=[alerts.COMMITS_FAILING],
    )
    window = prom_duration(t.rebalance_window_s)
    b.timeseries(
        f"Rebalances in the last {human_span(t.rebalance_window_s)}",
        [
            (
                "sum by (group, client) (increase("
                f'{_m(catalog.REBALANCES)}{{{_GROUP}, kind="assign"}}[{window}]))',
                "{{client}}",
            )
        ],
        description="Partition assignments per consumer over the alert's window.",
        width=8,
        threshold_steps=steps(("green", None), ("red", t.rebalances_max)),
        alert_names=[alerts.REBALANCES_FREQUENT],
    )
    b.timeseries(
        "Retries",
        [
            (
                f"sum by (topic) (rate({_m(catalog.RETRIES)}{{{_PARTITION}}}[{_RATE}]))",
                "{{topic}}",
            )
        ],
        description="Handler attempts scheduled again after a failure, per second.",
        width=6,
    )
    b.timeseries(
        "Dead-letter writes",
        [
            (
                "sum by (topic, outcome) (increase("
                f"{_m(catalog.DLQ_MESSAGES)}{{{_PARTITION}}}[{_RATE}]))",
                "{{topic}} {{outcome}}",
            )
        ],
        description="Messages written to the dead-letter topic, delivered or failed.",
        width=6,
        alert_names=[alerts.DEAD_LETTER_WRITES, alerts.DEAD_LETTER_WRITE_FAILURES],
    )
    b.timeseries(
        "Failures skipped",
        [
            (
                "sum by (topic) (increase("
                f"{_m(catalog.FAILURES_SKIPPED)}{{{_PARTITION}}}[{_RATE}]))",
                "{{topic}}",
            )
        ],
        description=(
            "Messages committed as done after their last failed attempt (on_failure='skip')."
        ),
        width=6,
    )
    b.timeseries(
        "Worker restarts",
        [
            (
                "sum by (group, client) (increase("
                f"{_m(catalog.WORKER_RESTARTS)}{{{_GROUP}}}[{_RATE}]))",
                "{{client}}",
            )
        ],
        description="Engine workers replaced after dying or timing out.",
        width=6,
        alert_names=[alerts.WORKER_RESTARTS],
    )
    return _dashboard(
        b, INTERNAL_STATE_UID, "Gaps, queues, commits, rebalances, retries and dead letters."
    )


def build_dashboards(
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    runbook_base_url: str = alerts.DEFAULT_RUNBOOK_BASE_URL,
) -> dict[str, Any]:
    """The three grafanalib dashboards, keyed by uid, in :data:`TITLES` order."""
    return {
        SYSTEM_OVERVIEW_UID: _system_overview(thresholds, runbook_base_url),
        PERFORMANCE_UID: _performance(thresholds, runbook_base_url),
        INTERNAL_STATE_UID: _internal_state(thresholds, runbook_base_url),
    }


def dashboard_json(dashboard: Any) -> dict[str, Any]:
    """A grafanalib dashboard as plain JSON data."""
    data: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    return data


def render_dashboard(dashboard: Any) -> str:
    """Deterministic JSON text (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(dashboard_json(dashboard), sort_keys=True, indent=2) + "\n"


def _panels(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    row = ""
    for panel in data["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        yield row, panel


def panel_index(
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    runbook_base_url: str = alerts.DEFAULT_RUNBOOK_BASE_URL,
) -> list[PanelInfo]:
    """Every non-row panel of every dashboard, read back from the generated JSON."""
    names = {alerts.runbook_url(runbook_base_url, n): n for n in alerts.alert_names()}
    index = []
    for uid, dashboard in build_dashboards(thresholds, runbook_base_url).items():
        data = dashboard_json(dashboard)
        for row, panel in _panels(data):
            index.append(
                PanelInfo(
                    dashboard_uid=uid,
                    dashboard_title=data["title"],
                    row=row,
                    title=panel["title"],
                    type=panel["type"],
                    expressions=tuple(target["expr"] for target in panel["targets"]),
                    alerts=tuple(names[link["url"]] for link in panel["links"]),
                )
            )
    return index


def all_target_expressions(thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """Every panel target expression of the three dashboards, in dashboard order."""
    return [expr for panel in panel_index(thresholds) for expr in panel.expressions]


def variable_queries() -> list[str]:
    """The PromQL of the query-type template variables."""
    return [v.query for v in _variables() if v.type == "query"]
