"""The generated rule file passes `promtool check rules` and `promtool test rules`.

promtool is required: CI installs it (Debian package ``prometheus``), so a missing binary
fails these tests instead of skipping them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyrallel.monitoring import _rule_tests, alerts, generate
from pyrallel.monitoring.thresholds import Thresholds

pytestmark = pytest.mark.prometheus

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES = REPO_ROOT / generate.RULES_PATH
RULE_TESTS = REPO_ROOT / generate.RULE_TESTS_PATH


def _promtool(*args: str | Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found on PATH: install the Debian package `prometheus`")
    return subprocess.run(
        [binary, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_check_rules() -> None:
    result = _promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts.alert_names())} rules found" in result.stdout


def test_test_rules() -> None:
    result = _promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_tests_load_the_generated_rule_file() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    (rule_file,) = tests["rule_files"]
    assert (RULE_TESTS.parent / rule_file).resolve() == RULES.resolve()


def _minutes(duration: str) -> int:
    assert duration.endswith("m"), duration
    return int(duration[:-1])


def test_every_alert_fires_after_for_and_is_silent_just_before() -> None:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    rules = {rule.name: rule for rule in alerts.alert_rules()}
    covered: dict[str, int] = defaultdict(int)
    for group in tests:
        cases = group["alert_rule_test"]
        quiet = {(c["alertname"], _minutes(c["eval_time"])) for c in cases if not c["exp_alerts"]}
        for case in cases:
            if not case["exp_alerts"]:
                continue
            name, minute = case["alertname"], _minutes(case["eval_time"])
            assert (name, minute - 1) in quiet, f"{group['name']}: no silent check before"
            (expected,) = case["exp_alerts"]
            assert expected["exp_labels"]["severity"] == rules[name].severity
            assert expected["exp_annotations"]["runbook_url"] == f"runbooks/{name}.md"
            covered[name] += 1
    assert set(covered) == set(rules), f"alerts without a firing case: {set(rules) - set(covered)}"


def test_the_suite_catches_a_rule_that_fires_too_early(tmp_path: Path) -> None:
    """Shorten one `for:` in a copy: promtool must report the alert firing early."""
    prom = tmp_path / "prometheus"
    (prom / "tests").mkdir(parents=True)
    text = RULES.read_text(encoding="utf-8")
    assert text.count("for: 15m") >= 1
    (prom / "pyrallel-alerts.yml").write_text(text.replace("for: 15m", "for: 14m"), "utf-8")
    shutil.copyfile(RULE_TESTS, prom / "tests" / RULE_TESTS.name)
    result = _promtool("test", "rules", prom / "tests" / RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "PyrallelInFlightHigh" in result.stdout + result.stderr


def test_short_thresholds_give_a_valid_rule_file(tmp_path: Path) -> None:
    """The end-to-end test's rule file (second-scale `for:`) is valid for Prometheus."""
    path = tmp_path / "short.yml"
    rules = alerts.build_rules(Thresholds.for_testing(), "http://127.0.0.1/runbooks")
    path.write_text(alerts.render_rules(rules), encoding="utf-8")
    result = _promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_tests_are_generated_from_the_default_thresholds() -> None:
    expected = _rule_tests.render_rule_tests(_rule_tests.build_rule_tests())
    assert RULE_TESTS.read_text(encoding="utf-8") == expected
