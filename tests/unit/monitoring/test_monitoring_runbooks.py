"""Runbooks: one page per alert, four sections, numbers from the thresholds."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from pyrallel.config import ConsumerConfig
from pyrallel.monitoring import alerts, dashboards, runbooks
from pyrallel.monitoring.thresholds import DEFAULT_THRESHOLDS
from pyrallel.observability import catalog

REPO_ROOT = Path(__file__).resolve().parents[3]
RUNBOOKS = REPO_ROOT / "runbooks"

# get_metrics() snapshot fields (the public contract in ARCHITECTURE.md).
SNAPSHOT_FIELDS = {
    "total_in_flight",
    "is_paused",
    "max_in_flight",
    "true_lag",
    "gap_count",
    "blocking_offset",
    "blocking_duration_sec",
    "queued_count",
}


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1].strip() for i in range(1, len(parts), 2)}


def test_every_alert_has_a_page_and_every_page_belongs_to_an_alert() -> None:
    pages = {p.stem for p in RUNBOOKS.glob("*.md")}
    assert pages == set(alerts.alert_names())
    assert set(runbooks.render_runbooks()) == {f"{n}.md" for n in alerts.alert_names()}


@pytest.mark.parametrize("rule", alerts.alert_rules(), ids=lambda r: r.name)
def test_page_has_the_four_sections_with_diagnosis_and_mitigation(
    rule: alerts.AlertRule,
) -> None:
    text = (RUNBOOKS / f"{rule.name}.md").read_text(encoding="utf-8")
    assert text.splitlines()[2] == f"# {rule.name}"
    sections = _sections(text)
    assert list(sections)[:4] == list(runbooks.SECTIONS)
    for name in runbooks.SECTIONS:
        assert len(sections[name].split()) >= 10, f"{rule.name}: thin {name}"
    diagnosis = sections["Diagnosis"]
    assert f"```promql\n   {rule.expr}\n   ```" in diagnosis
    assert f"`{runbooks.STATUS_COMMAND}`" in diagnosis
    panels = [p for p in dashboards.panel_index() if rule.name in p.alerts]
    assert panels
    for panel in panels:
        assert f"**{panel.dashboard_title} > {panel.title}**" in diagnosis
    assert sections["Mitigation"].startswith("- ")
    assert f"severity: **{rule.severity}**" in text.lower()


def test_thresholds_in_the_text_come_from_thresholds_py() -> None:
    changed = dataclasses.replace(
        DEFAULT_THRESHOLDS, gap_count_high=123.0, blocking_critical_s=1500.0, paused_for_s=420
    )
    pages = runbooks.render_runbooks(changed)
    assert "More than 123 finished ranges" in pages["PyrallelGapCountHigh.md"]
    assert "25 minutes" in pages["PyrallelPoisonPill.md"]
    assert "| `blocking_critical_s` | 1500 s |" in pages["PyrallelPoisonPill.md"]
    assert "7 minutes" in pages["PyrallelConsumerPaused.md"]
    default = runbooks.render_runbooks()
    assert "123" not in default["PyrallelGapCountHigh.md"]


def test_each_page_explains_its_thresholds() -> None:
    for rule in alerts.alert_rules():
        text = (RUNBOOKS / f"{rule.name}.md").read_text(encoding="utf-8")
        for name in rule.thresholds:
            assert f"| `{name}` |" in text
            assert DEFAULT_THRESHOLDS.why(name) in text


def test_mitigation_carries_the_seed_advice() -> None:
    pages = runbooks.render_runbooks()
    joined = "\n".join(pages.values())
    for setting in (
        "max_in_flight_messages",
        "process_count",
        "AsyncExecutionEngine",
        "max_poll_interval_ms",
        "max_revoke_grace_ms",
        'on_failure="dlq"',
    ):
        assert setting in joined, setting
    assert "workers x 2 to workers x 10" in pages["PyrallelInFlightHigh.md"]
    assert "max_revoke_grace_ms" in pages["PyrallelRebalancesFrequent.md"]
    assert "poison pill" in pages["PyrallelPoisonPill.md"]


def test_settings_named_in_backticks_exist() -> None:
    config_fields = {f.name for f in dataclasses.fields(ConsumerConfig)}
    known = (
        config_fields
        | SNAPSHOT_FIELDS
        | {m.prometheus for m in catalog.CATALOG}
        | set(DEFAULT_THRESHOLDS.as_dict())
        | {"error_type"}  # a label of the handler-error counter
    )
    for name, text in runbooks.render_runbooks().items():
        for token in re.findall(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`", text):
            assert token in known, f"{name}: `{token}` is not a setting, field or metric"
