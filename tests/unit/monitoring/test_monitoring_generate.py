"""`pyrallel generate`: deterministic output, and `--check` fails on drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pyrallel import cli
from pyrallel.monitoring import generate

REPO_ROOT = Path(__file__).resolve().parents[3]


def _copy_committed(tmp_path: Path) -> Path:
    """A temporary checkout holding only the committed generated files."""
    for rel in generate.generated_files():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / rel, target)
    return tmp_path


def test_committed_files_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check", "--out", str(REPO_ROOT)]) == 0, capsys.readouterr().err


def test_check_fails_listing_an_edited_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_committed(tmp_path)
    assert generate.main(["--check", "--out", str(out)]) == 0
    capsys.readouterr()

    dashboard = out / "dashboards" / "pyrallel-performance.json"
    data = json.loads(dashboard.read_text(encoding="utf-8"))
    data["panels"][1]["targets"][0]["expr"] = "pyrallel_partition_true_lag > 0"
    dashboard.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    rules = out / "monitoring" / "prometheus" / "pyrallel-alerts.yml"
    rules.write_text(rules.read_text(encoding="utf-8").replace("for: 15m", "for: 5m"), "utf-8")

    assert generate.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "changed: dashboards/pyrallel-performance.json" in err
    assert "changed: monitoring/prometheus/pyrallel-alerts.yml" in err
    assert "runbooks/" not in err  # only the drifted files are listed


def test_check_reports_missing_and_stale_files_and_writing_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_committed(tmp_path)
    (out / "runbooks" / "PyrallelPoisonPill.md").unlink()
    (out / "runbooks" / "PyrallelRetiredAlert.md").write_text("# old\n", encoding="utf-8")
    (out / "dashboards" / "pyrallel-commit-point-lag.json").write_text("{}\n", encoding="utf-8")
    (out / "dashboards" / "team-dashboard.json").write_text("{}\n", encoding="utf-8")

    assert generate.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "missing: runbooks/PyrallelPoisonPill.md" in err
    assert "stale: runbooks/PyrallelRetiredAlert.md" in err
    assert "stale: dashboards/pyrallel-commit-point-lag.json" in err
    assert "team-dashboard.json" not in err  # not a generated name: left alone

    assert generate.main(["--out", str(out)]) == 0
    written = capsys.readouterr().out
    assert "wrote: runbooks/PyrallelPoisonPill.md" in written
    assert "removed: runbooks/PyrallelRetiredAlert.md" in written
    assert (out / "dashboards" / "team-dashboard.json").exists()
    assert generate.main(["--check", "--out", str(out)]) == 0


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert generate.main(["--out", str(first)]) == 0
    assert generate.main(["--out", str(second)]) == 0
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(generate.generated_files())
    for rel in files:
        text = (first / rel).read_bytes()
        assert text == (second / rel).read_bytes()
        assert text.endswith(b"\n") and not text.endswith(b"\n\n")
        assert b"\r" not in text
        if rel.suffix == ".json":
            decoded = text.decode()
            assert decoded == json.dumps(json.loads(decoded), sort_keys=True, indent=2) + "\n"
        if rel.suffix == ".yml":
            yaml.safe_load(text)


def test_second_write_touches_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate.main(["--out", str(tmp_path)])
    capsys.readouterr()
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_runbook_base_url_reaches_every_output(tmp_path: Path) -> None:
    base = "https://git.example.test/pyrallel/blob/main/runbooks"
    assert generate.main(["--out", str(tmp_path), "--runbook-base-url", base]) == 0
    url = f"{base}/PyrallelPoisonPill.md"
    for rel in (
        generate.RULES_PATH,
        generate.RULE_TESTS_PATH,
        Path("dashboards/pyrallel-performance.json"),
    ):
        assert url in (tmp_path / rel).read_text(encoding="utf-8"), rel
    # A check with another base URL sees every file that carries links as drifted.
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1


def test_cli_dispatches_generate(tmp_path: Path) -> None:
    assert cli.main(["generate", "--out", str(tmp_path)]) == 0
    assert cli.main(["generate", "--check", "--out", str(tmp_path)]) == 0


def test_check_in_an_empty_directory_says_where_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyrallel.monitoring.generate import main

    assert main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "none of the generated files is under" in err
    assert "--out" in err
