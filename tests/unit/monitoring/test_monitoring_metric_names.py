"""Every metric an alert, panel, variable or runbook query names is in the catalog."""

from __future__ import annotations

import re

from pyrallel.monitoring import alerts, dashboards, runbooks
from pyrallel.monitoring.thresholds import Thresholds
from pyrallel.observability import catalog

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "offset", "bool"}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (inside braces or grouping clauses) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for match in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if not call and word not in _KEYWORDS:
            names.add(word)
    return names


def known(name: str) -> bool:
    if name in catalog.BY_PROMETHEUS_NAME:
        return True
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and catalog.BY_PROMETHEUS_NAME.get(base, None) is not None:
            return catalog.BY_PROMETHEUS_NAME[base].instrument == "histogram"
    return False


def test_the_extractor_finds_names_and_skips_the_rest() -> None:
    expr = (
        'sum by (group, client) (increase(foo_total{kind="a"}[1h])) > 6'
        " unless on (group) bar offset 15m and histogram_quantile(0.5, baz_bucket)"
    )
    assert metric_names(expr) == {"foo_total", "bar", "baz_bucket"}
    assert known("messaging_process_duration_seconds_bucket")
    assert not known("pyrallel_system_in_flight_bucket")
    assert not known("pyrallel_commits")  # counters are exposed with _total


def _check(exprs: list[str], where: str) -> None:
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = {n for n in names if not known(n)}
        assert not unknown, f"{where}: {unknown} not in the catalog: {expr}"


def test_alert_expressions_use_catalog_metrics() -> None:
    _check(alerts.all_alert_expressions(), "alert")
    _check(alerts.all_alert_expressions(Thresholds.for_testing()), "alert (short)")


def test_alert_annotations_use_catalog_metrics() -> None:
    for rule in alerts.alert_rules():
        for name in re.findall(r"\bpyrallel_\w+", rule.summary + rule.description):
            assert known(name), f"{rule.name}: {name}"


def test_dashboard_targets_and_variables_use_catalog_metrics() -> None:
    _check(dashboards.all_target_expressions(), "panel")
    for query in dashboards.variable_queries():
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        _check([match.group(1)], "variable")
        assert match.group(2) in catalog.PARTITION_LABELS


def test_runbook_queries_use_catalog_metrics() -> None:
    _check(runbooks.runbook_queries(), "runbook")
