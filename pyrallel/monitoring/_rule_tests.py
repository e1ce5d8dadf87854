"""``promtool test rules`` cases for every alert, derived from the thresholds.

Each case feeds synthetic series sampled every minute and checks, at one-minute
evaluations, that the alert is silent one evaluation before its ``for:`` has elapsed and
firing right after, with the expected labels (``severity`` included) and annotations
(``runbook_url`` included). Negative cases check the conditions that must never fire.

Inputs are computed from the thresholds (a value just above a limit, a ramp that crosses
it at a known minute), so the cases follow the rules when a threshold changes; promtool
then checks the real PromQL and the real template rendering against them. The expected
annotation text is rendered here with the subset of Prometheus's template functions the
rules use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyrallel.monitoring import alerts
from pyrallel.monitoring.thresholds import DEFAULT_THRESHOLDS, DURATION_FIELDS, Thresholds
from pyrallel.observability import catalog

RULE_FILE_FROM_TESTS = "../pyrallel-alerts.yml"

_SYSTEM = {"group": "orders", "client": "orders-1", "job": "pyrallel", "instance": "127.0.0.1:9464"}
_PARTITION = {**_SYSTEM, "topic": "orders", "partition": "3"}
_SYSTEM_KEYS = {"group": _SYSTEM["group"], "client": _SYSTEM["client"]}


@dataclass(frozen=True)
class _Series:
    metric: catalog.MetricDef
    labels: Mapping[str, str]
    values: str

    def to_yaml(self) -> dict[str, str]:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return {"series": f"{self.metric.prometheus}{{{inner}}}", "values": self.values}


@dataclass(frozen=True)
class _Case:
    """One input scenario for one alert."""

    alert: str
    name: str
    series: tuple[_Series, ...]
    fires_at: int | None
    """Minute of the first evaluation at which the alert fires; ``None``: never."""
    quiet_at: tuple[int, ...] = ()
    """Further minutes at which the alert must not fire."""
    labels: Mapping[str, str] = field(default_factory=dict)
    value: float = 0.0
    """The rule's ``$value`` at ``fires_at``."""
    blocking_offset: str = ""
    """What :data:`alerts.BLOCKING_OFFSET_TEMPLATE` renders to."""


def _minutes(seconds: float, what: str) -> int:
    if seconds % 60:
        raise ValueError(f"{what}={seconds}s: promtool cases need whole minutes")
    return int(seconds // 60)


def _g4(v: float) -> str:
    # Go's and Python's "%.4g" agree on the values these cases produce.
    return f"{v:.4g}"


def _humanize(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return _g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in "kMGTPEZY":
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in "munpfazy":
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return _g4(v) + prefix


def _humanize_duration(v: float) -> str:
    if not math.isfinite(v):
        return _g4(v)
    if v == 0:
        return _g4(v) + "s"
    if abs(v) < 1:
        raise ValueError(f"sub-second durations are not used by these cases: {v}")
    sign, v = ("-", -v) if v < 0 else ("", v)
    whole = int(v)
    days, hours = whole // 86400, whole // 3600 % 24
    minutes, seconds = whole // 60 % 60, whole % 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{_g4(v)}s"


def _humanize_percentage(v: float) -> str:
    return _g4(v * 100) + "%"


_FORMATTERS: dict[str, Callable[[float], str]] = {
    "humanize": _humanize,
    "humanizeDuration": _humanize_duration,
    "humanizePercentage": _humanize_percentage,
}


def _render(template: str, case: _Case) -> str:
    text = template.replace(alerts.BLOCKING_OFFSET_TEMPLATE, case.blocking_offset)
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: case.labels[m.group(1)], text)
    text = re.sub(
        r"\{\{ \$value \| (\w+) \}\}", lambda m: _FORMATTERS[m.group(1)](case.value), text
    )
    if "{{" in text:
        raise ValueError(f"template left unrendered for {case.alert}: {text}")
    return text


def _ramp(start: float, step: float, samples: int) -> str:
    return f"{start:g}+{step:g}x{samples - 1}"


def _flat(value: float, samples: int) -> str:
    return f"{value:g}x{samples - 1}"


def _cases(t: Thresholds) -> list[_Case]:
    m = {name: _minutes(getattr(t, name), name) for name in DURATION_FIELDS}
    cases: list[_Case] = []
    cap = 1000.0

    # In-flight: ratio held above the warning, at the cap, and just below each.
    mid = round(cap * (t.in_flight_warning_ratio + t.in_flight_critical_ratio) / 2)
    for alert, for_min, inside, below in (
        (
            alerts.IN_FLIGHT_HIGH,
            m["in_flight_warning_for_s"],
            mid,
            round(cap * t.in_flight_warning_ratio) - 10,
        ),
        (
            alerts.IN_FLIGHT_SATURATED,
            m["in_flight_critical_for_s"],
            round(cap * t.in_flight_critical_ratio),
            round(cap * t.in_flight_critical_ratio) - 10,
        ),
    ):
        n = for_min + 10
        for name, held, fires in (
            ("held above the limit", inside, for_min),
            ("held just below the limit", below, None),
        ):
            cases.append(
                _Case(
                    alert,
                    name,
                    (
                        _Series(catalog.SYSTEM_IN_FLIGHT, _SYSTEM, _flat(held, n)),
                        _Series(catalog.SYSTEM_MAX_IN_FLIGHT, _SYSTEM, _flat(cap, n)),
                    ),
                    fires,
                    quiet_at=() if fires else (for_min, n - 1),
                    labels=_SYSTEM,
                    value=held / cap,
                )
            )

    # Paused: a long pause fires; a pause shorter than `for` never does.
    for_min = m["paused_for_s"]
    n = for_min + 10
    full = (
        _Series(catalog.SYSTEM_IN_FLIGHT, _SYSTEM, _flat(cap, n)),
        _Series(catalog.SYSTEM_MAX_IN_FLIGHT, _SYSTEM, _flat(cap, n)),
    )
    cases.append(
        _Case(
            alerts.CONSUMER_PAUSED,
            "paused longer than for",
            (*full, _Series(catalog.SYSTEM_PAUSED, _SYSTEM, _flat(1, n))),
            for_min,
            labels=_SYSTEM,
            value=1.0,
        )
    )
    short = f"{_flat(1, for_min)} {_flat(0, n - for_min)}"
    cases.append(
        _Case(
            alerts.CONSUMER_PAUSED,
            "paused briefly",
            (*full, _Series(catalog.SYSTEM_PAUSED, _SYSTEM, short)),
            None,
            quiet_at=(for_min, n - 1),
        )
    )

    # Blocking duration: the gauge grows with wall time (60 s per minute).
    for alert, limit in (
        (alerts.COMMIT_BLOCKED, t.blocking_warning_s),
        (alerts.POISON_PILL, t.blocking_critical_s),
    ):
        crosses = int(limit // 60) + 1  # first minute with a value above the limit
        fires = crosses + m["blocking_for_s"]
        n = fires + 5
        cases.append(
            _Case(
                alert,
                "blocking offset held past the limit",
                (
                    _Series(catalog.PARTITION_BLOCKING_DURATION, _PARTITION, _ramp(0, 60, n)),
                    _Series(catalog.PARTITION_BLOCKING_OFFSET, _PARTITION, _flat(42, n)),
                ),
                fires,
                labels=_PARTITION,
                value=60.0 * fires,
                blocking_offset="42",
            )
        )

    # True lag: a ramp above the floor fires once the slope has lasted `for`; a flat high
    # lag and a ramp that stays below the floor never do.
    for_min = m["true_lag_for_s"]
    n = for_min + 15
    base = t.true_lag_floor + 100
    fires = 1 + for_min  # deriv() needs two samples: the condition starts at minute 1
    cases.append(
        _Case(
            alerts.TRUE_LAG_RISING,
            "lag rising above the floor",
            (_Series(catalog.PARTITION_TRUE_LAG, _PARTITION, _ramp(base, 10, n)),),
            fires,
            labels=_PARTITION,
            value=base + 10 * fires,
        )
    )
    cases.append(
        _Case(
            alerts.TRUE_LAG_RISING,
            "lag high but flat",
            (_Series(catalog.PARTITION_TRUE_LAG, _PARTITION, _flat(base * 10, n)),),
            None,
            quiet_at=(fires, n - 1),
        )
    )
    step = t.true_lag_floor / (2 * n)
    cases.append(
        _Case(
            alerts.TRUE_LAG_RISING,
            "lag rising below the floor",
            (_Series(catalog.PARTITION_TRUE_LAG, _PARTITION, _ramp(0, step, n)),),
            None,
            quiet_at=(fires, n - 1),
        )
    )

    # Gap count: high at rest fires; a rebalance restarts the wait.
    for_min, rest = m["gap_count_for_s"], m["gap_rest_s"]
    rebalanced_at = 10
    again = rebalanced_at + 1 + rest + for_min  # first firing after the rebalance
    n = again + 5
    gaps = _Series(catalog.PARTITION_GAP_COUNT, _PARTITION, _flat(t.gap_count_high + 50, n))
    assign = {**_SYSTEM, "kind": "assign"}
    cases.append(
        _Case(
            alerts.GAP_COUNT_HIGH,
            "many gaps at rest",
            (gaps, _Series(catalog.REBALANCES, assign, _flat(1, n))),
            for_min,
            labels=_PARTITION,
            value=t.gap_count_high + 50,
        )
    )
    bumped = f"{_flat(1, rebalanced_at + 1)} {_flat(2, n - rebalanced_at - 1)}"
    cases.append(
        _Case(
            alerts.GAP_COUNT_HIGH,
            "many gaps right after a rebalance",
            (gaps, _Series(catalog.REBALANCES, assign, bumped)),
            again,
            quiet_at=(for_min, again - 1 - for_min, again - 1),
            labels=_PARTITION,
            value=t.gap_count_high + 50,
        )
    )

    # Rebalances: one assignment a minute from zero crosses the hourly limit.
    crosses = int(t.rebalances_max) + 1
    fires = crosses + m["rebalances_for_s"]
    n = fires + 10
    counts = f"{_ramp(0, 1, fires + 4)} {_flat(fires + 3, n - fires - 4)}"
    cases.append(
        _Case(
            alerts.REBALANCES_FREQUENT,
            "one assignment a minute",
            (_Series(catalog.REBALANCES, assign, counts),),
            fires,
            labels=_SYSTEM_KEYS,
            value=float(fires),
        )
    )

    # Commit failures: failing every minute fires; a single failure never does.
    window, for_min = m["commit_failure_window_s"], m["commit_failure_for_s"]
    n = for_min + window + 10
    failure = {**_SYSTEM, "outcome": "failure"}
    fires = 1 + for_min  # increase() needs two samples: the condition starts at minute 1
    cases.append(
        _Case(
            alerts.COMMITS_FAILING,
            "a failure every minute",
            (_Series(catalog.COMMITS, failure, _ramp(0, 1, n)),),
            fires,
            labels=_SYSTEM_KEYS,
            value=float(window),
        )
    )
    cases.append(
        _Case(
            alerts.COMMITS_FAILING,
            "one failure",
            (_Series(catalog.COMMITS, failure, f"{_flat(0, 5)} {_flat(1, n - 5)}"),),
            None,
            quiet_at=(fires, n - 1),
        )
    )

    # Dead-letter writes: a series born at 1 (increase() cannot see it) and a counter that
    # already existed both fire.
    delivered = {**_SYSTEM, "topic": "orders", "outcome": "delivered"}
    for_min = m["dlq_for_s"]
    n = 5 + for_min + 10
    cases.append(
        _Case(
            alerts.DEAD_LETTER_WRITES,
            "first write creates the series",
            (_Series(catalog.DLQ_MESSAGES, delivered, f"_x5 {_flat(1, n - 5)}"),),
            5 + for_min,
            labels=delivered,
            value=1.0,
        )
    )
    cases.append(
        _Case(
            alerts.DEAD_LETTER_WRITES,
            "existing counter grows",
            (_Series(catalog.DLQ_MESSAGES, delivered, f"{_flat(0, 10)} {_flat(3, n + 1)}"),),
            10 + for_min,
            labels=delivered,
            value=3.0,
        )
    )

    # Dead-letter failures: failing every minute.
    window, for_min = m["dlq_failure_window_s"], m["dlq_failure_for_s"]
    failed = {**_SYSTEM, "topic": "orders", "outcome": "failed"}
    n = for_min + window + 10
    cases.append(
        _Case(
            alerts.DEAD_LETTER_WRITE_FAILURES,
            "a failed write every minute",
            (_Series(catalog.DLQ_MESSAGES, failed, _ramp(0, 1, n)),),
            1 + for_min,
            labels=failed,
            value=float(min(window, 1 + for_min)),
        )
    )

    # Worker restarts: one restart.
    for_min = m["worker_restart_for_s"]
    n = 5 + for_min + 10
    cases.append(
        _Case(
            alerts.WORKER_RESTARTS,
            "one restart",
            (_Series(catalog.WORKER_RESTARTS, _SYSTEM, f"{_flat(0, 5)} {_flat(1, n - 5)}"),),
            5 + for_min,
            labels=_SYSTEM,
            value=1.0,
        )
    )

    # Poll loop: age grows with wall time when stuck; a healthy loop stays near zero.
    crosses = int(t.poll_age_max_s // 60) + 1
    fires = crosses + m["poll_age_for_s"]
    n = fires + 10
    cases.append(
        _Case(
            alerts.POLL_LOOP_STALLED,
            "loop stuck",
            (_Series(catalog.SYSTEM_POLL_AGE, _SYSTEM, _ramp(0, 60, n)),),
            fires,
            labels=_SYSTEM,
            value=60.0 * fires,
        )
    )
    cases.append(
        _Case(
            alerts.POLL_LOOP_STALLED,
            "loop healthy",
            (_Series(catalog.SYSTEM_POLL_AGE, _SYSTEM, _flat(0.2, n)),),
            None,
            quiet_at=(fires, n - 1),
        )
    )
    return cases


def _alert_tests(case: _Case, rule: alerts.AlertRule, runbook_base_url: str) -> list[Any]:
    def quiet(minute: int) -> dict[str, Any]:
        return {"alertname": case.alert, "eval_time": f"{minute}m", "exp_alerts": []}

    tests = [quiet(minute) for minute in case.quiet_at]
    if case.fires_at is not None:
        tests.append(quiet(case.fires_at - 1))
        annotations = {
            "summary": _render(rule.summary, case),
            "description": _render(rule.description, case),
            "runbook_url": alerts.runbook_url(runbook_base_url, rule.name),
        }
        expected = {
            "exp_labels": {**case.labels, "severity": rule.severity},
            "exp_annotations": annotations,
        }
        tests.append(
            {"alertname": case.alert, "eval_time": f"{case.fires_at}m", "exp_alerts": [expected]}
        )
    return sorted(tests, key=lambda test: int(test["eval_time"][:-1]))


def build_rule_tests(
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    runbook_base_url: str = alerts.DEFAULT_RUNBOOK_BASE_URL,
) -> dict[str, Any]:
    """The promtool test file for the rule file generated with the same arguments."""
    rules = {rule.name: rule for rule in alerts.alert_rules(thresholds)}
    tests = [
        {
            "name": f"{case.alert}: {case.name}",
            "interval": "1m",
            "input_series": [series.to_yaml() for series in case.series],
            "alert_rule_test": _alert_tests(case, rules[case.alert], runbook_base_url),
        }
        for case in _cases(thresholds)
    ]
    return {"rule_files": [RULE_FILE_FROM_TESTS], "evaluation_interval": "1m", "tests": tests}


def render_rule_tests(tests: dict[str, Any]) -> str:
    """Deterministic YAML text of a promtool test mapping (sorted keys, trailing newline)."""
    import yaml  # only the text rendering needs PyYAML

    header = (
        "# Generated by `pyrallel generate` from pyrallel/monitoring/_rule_tests.py.\n"
        "# Run: promtool test rules monitoring/prometheus/tests/pyrallel-alerts-test.yml\n"
    )
    return header + yaml.safe_dump(tests, sort_keys=True, default_flow_style=False, width=4096)
