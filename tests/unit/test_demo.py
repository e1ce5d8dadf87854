"""`pyrallel demo` on the embedded mock cluster (the README's main job)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyrallel.cli import main


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrallel.cli", "demo", "--quiet", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("ordering", "engine"), [("key", "async"), ("partition", "async"), ("unordered", "thread")]
)
def test_demo_verifies_everything_on_the_mock_cluster(ordering: str, engine: str) -> None:
    result = _demo(
        "--messages",
        "3000",
        "--keys",
        "50",
        "--latency-ms",
        "0-1",
        "--ordering",
        ordering,
        "--engine",
        engine,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["processed"] == 3000
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["ordering_violations"] == 0
    assert summary["committed_equals_end"] is True
    assert summary["msgs_per_s"] > 0
    assert summary["cluster"] == "embedded-mock"
    assert set(summary) >= {
        "processed",
        "duration_s",
        "msgs_per_s",
        "ordering_violations",
        "lost",
        "duplicates",
        "committed_equals_end",
    }


def test_demo_rejects_bad_flags_with_a_message() -> None:
    result = _demo("--messages", "0")
    assert result.returncode == 2
    assert "--messages must be >= 1" in result.stderr
    bad = _demo("--latency-ms", "5-1")
    assert bad.returncode == 2
    assert "--latency-ms" in bad.stderr


def test_cli_lists_commands_and_refuses_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "generate", "status", "bench"):
        assert name in out
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
