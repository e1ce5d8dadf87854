"""Prometheus alert rules, generated from :class:`~pyrallel.monitoring.thresholds.Thresholds`.

Alert names are stable (dashboards, runbooks and people's silences refer to them). Every
rule carries a ``severity`` label (``warning``: look today; ``critical``: act now), a
``summary`` with the offending value and its Kafka coordinates, a ``description`` that
quotes the threshold, and a ``runbook_url`` pointing at ``<base>/<AlertName>.md``.

Metric names come from :mod:`pyrallel.observability.catalog`; limits that depend on a
consumer's configuration are written relative to ``pyrallel_system_max_in_flight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pyrallel.monitoring.thresholds import (
    DEFAULT_THRESHOLDS,
    Thresholds,
    human_duration,
    human_span,
    number,
    percent,
    prom_duration,
)
from pyrallel.observability import catalog

Severity = Literal["warning", "critical"]

DEFAULT_RUNBOOK_BASE_URL = "runbooks/"
"""Where runbook pages live: the repository's ``runbooks/`` folder. Deployments pass the
URL their copy is served from (``pyrallel generate --runbook-base-url``)."""

RULE_GROUP = "pyrallel"

IN_FLIGHT_HIGH = "PyrallelInFlightHigh"
IN_FLIGHT_SATURATED = "PyrallelInFlightSaturated"
CONSUMER_PAUSED = "PyrallelConsumerPaused"
COMMIT_BLOCKED = "PyrallelCommitBlocked"
POISON_PILL = "PyrallelPoisonPill"
TRUE_LAG_RISING = "PyrallelTrueLagRising"
GAP_COUNT_HIGH = "PyrallelGapCountHigh"
REBALANCES_FREQUENT = "PyrallelRebalancesFrequent"
COMMITS_FAILING = "PyrallelCommitsFailing"
DEAD_LETTER_WRITES = "PyrallelDeadLetterWrites"
DEAD_LETTER_WRITE_FAILURES = "PyrallelDeadLetterWriteFailures"
WORKER_RESTARTS = "PyrallelWorkerRestarts"
POLL_LOOP_STALLED = "PyrallelPollLoopStalled"


def _sel(metric: catalog.MetricDef, **matchers: str) -> str:
    """A series selector: ``name`` or ``name{k="v",...}``."""
    if not matchers:
        return metric.prometheus
    inner = ",".join(f'{key}="{value}"' for key, value in matchers.items())
    return f"{metric.prometheus}{{{inner}}}"


def _label(name: str) -> str:
    return f"{{{{ $labels.{name} }}}}"


def _value(formatter: str) -> str:
    return f"{{{{ $value | {formatter} }}}}"


def _new_events(selector: str, window_s: int, above: float) -> str:
    """Events counted by ``selector`` in the last ``window_s`` exceed ``above``.

    ``increase()`` cannot see the first increment of a series that starts at 1 (its first
    sample is already 1), so a series younger than the window counts with its whole value.
    """
    window, limit = prom_duration(window_s), number(above)
    return (
        f"increase({selector}[{window}]) > {limit}"
        f" or ({selector} > {limit} unless {selector} offset {window})"
    )


BLOCKING_OFFSET_TEMPLATE = (
    '{{ with printf "'
    + catalog.PARTITION_BLOCKING_OFFSET.prometheus
    + '{group=%q,client=%q,topic=%q,partition=%q}"'
    " $labels.group $labels.client $labels.topic $labels.partition | query }}"
    '{{ . | first | value | printf "%.0f" }}{{ else }}unknown{{ end }}'
)
"""Alert template text that prints the partition's current blocking offset."""


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule and the threshold fields it is built from."""

    name: str
    severity: Severity
    expr: str
    for_s: int
    summary: str
    description: str
    thresholds: tuple[str, ...]
    """Names of the :class:`Thresholds` fields this rule uses (the runbook explains them)."""

    def to_rule(self, runbook_base_url: str) -> dict[str, Any]:
        """The rule as one entry of a Prometheus rule group."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": prom_duration(self.for_s),
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": runbook_url(runbook_base_url, self.name),
            },
        }


def runbook_url(base_url: str, alert_name: str) -> str:
    """The runbook page of ``alert_name`` under ``base_url`` (``<base>/<AlertName>.md``)."""
    return f"{base_url.rstrip('/')}/{alert_name}.md" if base_url else f"{alert_name}.md"


def alert_rules(t: Thresholds = DEFAULT_THRESHOLDS) -> tuple[AlertRule, ...]:
    """Every Pyrallel alert, in the stable order of the rule file."""
    system = f"group {_label('group')}, client {_label('client')}"
    partition = f"{_label('topic')}/{_label('partition')} (group {_label('group')})"
    in_flight = _sel(catalog.SYSTEM_IN_FLIGHT)
    ratio = f"{in_flight} / {_sel(catalog.SYSTEM_MAX_IN_FLIGHT)}"
    blocking = _sel(catalog.PARTITION_BLOCKING_DURATION)
    true_lag = _sel(catalog.PARTITION_TRUE_LAG)
    return (
        AlertRule(
            name=IN_FLIGHT_HIGH,
            severity="warning",
            expr=f"{ratio} >= {number(t.in_flight_warning_ratio)}",
            for_s=t.in_flight_warning_for_s,
            summary=f"In-flight at {_value('humanizePercentage')} of max_in_flight ({system})",
            description=(
                f"In-flight messages have stayed at or above {percent(t.in_flight_warning_ratio)}"
                f" of max_in_flight_messages for {human_duration(t.in_flight_warning_for_s)};"
                " at the cap backpressure pauses fetching."
            ),
            thresholds=("in_flight_warning_ratio", "in_flight_warning_for_s"),
        ),
        AlertRule(
            name=IN_FLIGHT_SATURATED,
            severity="critical",
            expr=f"{ratio} >= {number(t.in_flight_critical_ratio)}",
            for_s=t.in_flight_critical_for_s,
            summary=f"In-flight at {_value('humanizePercentage')} of max_in_flight ({system})",
            description=(
                f"In-flight messages have been at {percent(t.in_flight_critical_ratio)} of"
                f" max_in_flight_messages for {human_duration(t.in_flight_critical_for_s)}:"
                " fetching is paused and completions are not freeing slots."
            ),
            thresholds=("in_flight_critical_ratio", "in_flight_critical_for_s"),
        ),
        AlertRule(
            name=CONSUMER_PAUSED,
            severity="warning",
            expr=f"{ratio} and {_sel(catalog.SYSTEM_PAUSED)} == 1",
            for_s=t.paused_for_s,
            summary=(
                f"Consumer paused by backpressure with in-flight at"
                f" {_value('humanizePercentage')} of max_in_flight ({system})"
            ),
            description=(
                f"Fetching has been paused for more than {human_duration(t.paused_for_s)};"
                " no new messages are read until in-flight work drains."
            ),
            thresholds=("paused_for_s",),
        ),
        AlertRule(
            name=COMMIT_BLOCKED,
            severity="warning",
            expr=f"{blocking} > {number(t.blocking_warning_s)}",
            for_s=t.blocking_for_s,
            summary=(
                f"Offset {BLOCKING_OFFSET_TEMPLATE} has held back commits of {partition}"
                f" for {_value('humanizeDuration')}"
            ),
            description=(
                "One unfinished offset has kept the partition's commit point from advancing"
                f" for more than {human_duration(t.blocking_warning_s)}; work finished"
                " behind it cannot be committed."
            ),
            thresholds=("blocking_warning_s", "blocking_for_s"),
        ),
        AlertRule(
            name=POISON_PILL,
            severity="critical",
            expr=f"{blocking} > {number(t.blocking_critical_s)}",
            for_s=t.blocking_for_s,
            summary=(
                f"Offset {BLOCKING_OFFSET_TEMPLATE} of {partition} has been unfinished"
                f" for {_value('humanizeDuration')}: likely a poison pill"
            ),
            description=(
                "The handler of the blocking offset has run for more than"
                f" {human_duration(t.blocking_critical_s)}; it is probably looping or"
                " deadlocked, and the partition commits nothing until it ends."
            ),
            thresholds=("blocking_critical_s", "blocking_for_s"),
        ),
        AlertRule(
            name=TRUE_LAG_RISING,
            severity="warning",
            expr=(
                f"{true_lag} > {number(t.true_lag_floor)}"
                f" and deriv({true_lag}[{prom_duration(t.true_lag_window_s)}]) > 0"
            ),
            for_s=t.true_lag_for_s,
            summary=f"True lag of {partition} is {_value('humanize')} and rising",
            description=(
                f"True lag has kept rising for {human_duration(t.true_lag_for_s)}: the"
                " consumer completes less than it fetches and is short of capacity."
            ),
            thresholds=("true_lag_floor", "true_lag_window_s", "true_lag_for_s"),
        ),
        AlertRule(
            name=GAP_COUNT_HIGH,
            severity="warning",
            expr=(
                f"{_sel(catalog.PARTITION_GAP_COUNT)} > {number(t.gap_count_high)}"
                f" unless on (group, client)"
                f" increase({_sel(catalog.REBALANCES)}[{prom_duration(t.gap_rest_s)}]) > 0"
            ),
            for_s=t.gap_count_for_s,
            summary=f"{_value('humanize')} gaps in {partition} with no recent rebalance",
            description=(
                f"More than {number(t.gap_count_high)} finished ranges have waited behind"
                f" unfinished offsets for {human_duration(t.gap_count_for_s)} without a"
                " rebalance to explain them: completion is heavily out of order."
            ),
            thresholds=("gap_count_high", "gap_count_for_s", "gap_rest_s"),
        ),
        AlertRule(
            name=REBALANCES_FREQUENT,
            severity="warning",
            expr=(
                "sum by (group, client) (increase("
                f"{_sel(catalog.REBALANCES, kind='assign')}"
                f"[{prom_duration(t.rebalance_window_s)}])) > {number(t.rebalances_max)}"
            ),
            for_s=t.rebalances_for_s,
            summary=(
                f"{_value('humanize')} rebalances in the last {human_span(t.rebalance_window_s)}"
                f" ({system})"
            ),
            description=(
                f"The consumer was assigned partitions more than {number(t.rebalances_max)}"
                f" times in the last {human_span(t.rebalance_window_s)}; every rebalance pauses"
                " work and redoes what was not committed."
            ),
            thresholds=("rebalances_max", "rebalance_window_s", "rebalances_for_s"),
        ),
        AlertRule(
            name=COMMITS_FAILING,
            severity="warning",
            expr=(
                "sum by (group, client) (increase("
                f"{_sel(catalog.COMMITS, outcome='failure')}"
                f"[{prom_duration(t.commit_failure_window_s)}])) > 0"
            ),
            for_s=t.commit_failure_for_s,
            summary=(
                f"{_value('humanize')} failed commits in the last"
                f" {human_span(t.commit_failure_window_s)} ({system})"
            ),
            description=(
                "Offset commits have kept failing (at least one failure every"
                f" {human_span(t.commit_failure_window_s)}) for"
                f" {human_duration(t.commit_failure_for_s)}; progress is not being saved and a"
                " restart would redo it."
            ),
            thresholds=("commit_failure_window_s", "commit_failure_for_s"),
        ),
        AlertRule(
            name=DEAD_LETTER_WRITES,
            severity="warning",
            expr=_new_events(
                _sel(catalog.DLQ_MESSAGES, outcome="delivered"), t.dlq_window_s, t.dlq_writes_max
            ),
            for_s=t.dlq_for_s,
            summary=(
                f"{_value('humanize')} messages of {_label('topic')} dead-lettered in the last"
                f" {human_span(t.dlq_window_s)} ({system})"
            ),
            description=(
                "Messages failed every attempt and were written to the dead-letter topic;"
                " each needs a decision: fix and replay, or drop."
            ),
            thresholds=("dlq_writes_max", "dlq_window_s", "dlq_for_s"),
        ),
        AlertRule(
            name=DEAD_LETTER_WRITE_FAILURES,
            severity="critical",
            expr=(
                f"increase({_sel(catalog.DLQ_MESSAGES, outcome='failed')}"
                f"[{prom_duration(t.dlq_failure_window_s)}]) > 0"
            ),
            for_s=t.dlq_failure_for_s,
            summary=(
                f"{_value('humanize')} dead-letter writes for {_label('topic')} failed in the"
                f" last {human_span(t.dlq_failure_window_s)} ({system})"
            ),
            description=(
                f"Dead-letter writes have kept failing for {human_duration(t.dlq_failure_for_s)};"
                " their source offsets stay uncommitted, so the partitions' commit points"
                " are stuck."
            ),
            thresholds=("dlq_failure_window_s", "dlq_failure_for_s"),
        ),
        AlertRule(
            name=WORKER_RESTARTS,
            severity="warning",
            expr=_new_events(
                _sel(catalog.WORKER_RESTARTS), t.worker_restart_window_s, t.worker_restarts_max
            ),
            for_s=t.worker_restart_for_s,
            summary=(
                f"{_value('humanize')} engine workers replaced in the last"
                f" {human_span(t.worker_restart_window_s)} ({system})"
            ),
            description=(
                "Workers died or ran past handler_timeout_ms and were replaced; the"
                " messages they held are being retried."
            ),
            thresholds=("worker_restarts_max", "worker_restart_window_s", "worker_restart_for_s"),
        ),
        AlertRule(
            name=POLL_LOOP_STALLED,
            severity="critical",
            expr=f"{_sel(catalog.SYSTEM_POLL_AGE)} > {number(t.poll_age_max_s)}",
            for_s=t.poll_age_for_s,
            summary=f"Poll loop has not polled Kafka for {_value('humanizeDuration')} ({system})",
            description=(
                f"The poll loop has been silent for more than"
                f" {human_duration(t.poll_age_max_s)}; at max_poll_interval_ms the broker"
                " evicts this member and the group rebalances."
            ),
            thresholds=("poll_age_max_s", "poll_age_for_s"),
        ),
    )


def build_rules(
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL,
) -> dict[str, Any]:
    """The Prometheus rule file as a mapping (``{"groups": [...]}``), ready for YAML."""
    rules = [rule.to_rule(runbook_base_url) for rule in alert_rules(thresholds)]
    return {"groups": [{"name": RULE_GROUP, "rules": rules}]}


def render_rules(rules: dict[str, Any]) -> str:
    """Deterministic YAML text of a rule mapping (sorted keys, trailing newline)."""
    import yaml  # only the text rendering needs PyYAML

    header = (
        "# Generated by `pyrallel generate` from pyrallel/monitoring/alerts.py and"
        " thresholds.py.\n# Do not edit: change the generator and run `pyrallel generate`.\n"
    )
    body = yaml.safe_dump(rules, sort_keys=True, default_flow_style=False, width=4096)
    return header + body


def all_alert_expressions(thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """Every alert expression, in rule-file order."""
    return [rule.expr for rule in alert_rules(thresholds)]


def alert_names() -> list[str]:
    """Every alert name, in rule-file order."""
    return [rule.name for rule in alert_rules()]
