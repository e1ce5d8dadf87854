"""``make stack`` for real: Kafka, Prometheus and the continuous demo, then a clean stop.

Runs ``python -m devtools.stack`` (its own broker, free ports, a poison key) for a short
while, asserts through Prometheus' HTTP API that it scrapes the demo with the compose
config's jobs and rules, then sends SIGTERM and checks nothing is left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import stack
from pyrallel.monitoring import alerts, generate
from tests.support.prometheus import PrometheusAPI
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

REPO_ROOT = Path(__file__).resolve().parents[2]
POISON_KEY = "stack-test-poison"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it runs nothing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class RunningStack:
    def __init__(self, proc: subprocess.Popen[bytes], state: dict[str, Any], log: Path) -> None:
        self.proc = proc
        self.state = state
        self.log = log
        self.api = PrometheusAPI(state["prometheus_url"])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def running_stack(tmp_path: Path) -> Iterator[RunningStack]:
    state_file, log = tmp_path / "stack.json", tmp_path / "stack.log"
    cmd = [
        sys.executable,
        "-m",
        "devtools.stack",
        "--prometheus-port=0",
        "--demo-port=0",
        f"--poison-key={POISON_KEY}",
        f"--state-file={state_file}",
        f"--demo-log={tmp_path / 'demo.log'}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: state_file.is_file() or proc.poll() is not None,
            timeout=120,
            interval=0.5,
            message=lambda: f"the stack to come up:\n{log.read_text(errors='replace')}",
        )
        assert proc.poll() is None, f"stack exited with {proc.returncode}:\n{log.read_text()}"
        yield RunningStack(proc, json.loads(state_file.read_text()), log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_the_stack_serves_the_demo_to_prometheus_and_stops_cleanly(
    running_stack: RunningStack,
) -> None:
    s, api = running_stack, running_stack.api
    banner = s.output()
    for url in (s.state["prometheus_url"], f"{s.state['demo_url']}/metrics"):
        assert url in banner, f"{url} not printed:\n{banner}"

    # The compose config's jobs, with the demo's target rewritten to its local address.
    config, _ = stack.prometheus_files(stack.load_compose(), stack.COMPOSE_FILE.parent)
    compose_jobs = {j["job_name"] for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    demo_target = s.state["demo_url"].removeprefix("http://")

    def demo_up() -> bool:
        return any(
            t["labels"]["job"] == "pyrallel-demo"
            and t["labels"]["instance"] == demo_target
            and t["health"] == "up"
            for t in api.targets()
        )

    wait_until(demo_up, timeout=60, interval=1, message=lambda: f"demo up: {api.targets()}")
    assert {t["labels"]["job"] for t in api.targets()} == compose_jobs

    # The same rule file as the compose stack: the generated one, unchanged.
    groups = api.get("/api/v1/rules")["groups"]
    assert [g["name"] for g in groups] == [alerts.RULE_GROUP]
    assert {r["name"] for r in groups[0]["rules"]} == set(alerts.alert_names())
    assert groups[0]["file"].endswith(generate.RULES_PATH.name)

    for expr in (
        'pyrallel_system_in_flight{job="pyrallel-demo"}',
        'pyrallel_partition_true_lag{job="pyrallel-demo"}',
        # The poison key hangs the handler: its partition's blocking duration rises.
        'max(pyrallel_partition_blocking_duration_sec{job="pyrallel-demo"}) > 1',
    ):

        def samples(e: str = expr) -> list[dict[str, Any]]:
            return api.query(e)

        wait_until(samples, timeout=60, interval=1, message=expr)

    pids = [pid for pid in s.state["pids"].values() if pid is not None]
    assert len(pids) == 3 and all(_alive(pid) for pid in pids), s.state

    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(90) == 0, s.output()
    assert "stack stopped" in s.output()
    left = [pid for pid in pids if _alive(pid)]
    assert not left, f"still running after the stack stopped: {left}"
    assert not Path(s.state["work_dir"]).exists(), "the stack's temp dir was left behind"
