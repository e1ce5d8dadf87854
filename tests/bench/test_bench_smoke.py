"""`pyrallel bench --smoke` end to end, so the benchmark harness cannot rot.

Runs the real command (it starts its own Kafka broker) with tiny counts and one
repetition, then checks that every scenario produced results for every contender that
can run here, and a Markdown table with the machine described. Numbers are not judged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_bench_smoke_covers_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyrallel.cli", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, f"pyrallel bench --smoke failed:\n{done.stderr[-4000:]}"

    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["mode"] == "smoke"
    assert [s["number"] for s in doc["scenarios"]] == [1, 2, 3, 4, 5, 6, 7]
    for scenario in doc["scenarios"]:
        ran = 0
        for contender in scenario["contenders"]:
            where = f"s{scenario['number']} {contender['id']}"
            if contender["family"] in ("peer", "java"):
                # Smoke runs local contenders only; the full run brings the peers.
                assert contender["status"] == "not run", where
                assert contender["reason"], where
                continue
            if contender["status"] == "not run":
                # Only modules still being written may be missing, and then it is said.
                assert "not importable" in contender["reason"], where
                continue
            assert contender["status"] == "ok", f"{where}: {contender['runs']}"
            assert contender["runs"] and all(run["ok"] for run in contender["runs"]), where
            assert scenario["metric"] in contender["summary"], where
            ran += 1
        assert ran, f"s{scenario['number']}: no contender ran"

    noop = doc["scenarios"][0]
    raw = next(c for c in noop["contenders"] if c["id"] == "raw confluent-kafka")
    assert raw["ratio"] == 1.0
    stuck = doc["scenarios"][4]["contenders"][0]["runs"][0]
    assert stuck["committed_to_end_after_release"] is True
    assert stuck["rss_peak_mb"] >= stuck["rss_start_mb"] > 0

    table = (tmp_path / "latest.md").read_text()
    for text in ("librdkafka", "Kafka broker", "## 7.", "Targets (reported, not asserted)"):
        assert text in table
