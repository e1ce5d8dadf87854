"""``pyrallel generate``: write the alert rules, their promtool tests, the dashboards and
the runbook pages, or check that the committed copies are current.

Output is deterministic (sorted keys, stable order, a trailing newline), so the files are
committed and ``pyrallel generate --check`` (CI) fails, listing the files, whenever one
differs from what the generator produces. Runbook pages and ``pyrallel-*`` dashboards that
no alert or dashboard produces any more count as drift too; writing removes them.

Paths, relative to ``--out`` (default: the current directory, the repository root)::

    monitoring/prometheus/pyrallel-alerts.yml             Prometheus rule file
    monitoring/prometheus/tests/pyrallel-alerts-test.yml  promtool test rules cases
    dashboards/<uid>.json                                 Grafana dashboards
    runbooks/<AlertName>.md                               one page per alert
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyrallel.monitoring import _rule_tests, alerts, dashboards, runbooks
from pyrallel.monitoring.thresholds import DEFAULT_THRESHOLDS, Thresholds

RULES_PATH = Path("monitoring/prometheus/pyrallel-alerts.yml")
RULE_TESTS_PATH = Path("monitoring/prometheus/tests/pyrallel-alerts-test.yml")
DASHBOARDS_DIR = Path("dashboards")
RUNBOOKS_DIR = Path("runbooks")


def generated_files(
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    runbook_base_url: str = alerts.DEFAULT_RUNBOOK_BASE_URL,
) -> dict[Path, str]:
    """Relative path to file content, for every file the generator owns."""
    files = {
        RULES_PATH: alerts.render_rules(alerts.build_rules(thresholds, runbook_base_url)),
        RULE_TESTS_PATH: _rule_tests.render_rule_tests(
            _rule_tests.build_rule_tests(thresholds, runbook_base_url)
        ),
    }
    for uid, dashboard in dashboards.build_dashboards(thresholds, runbook_base_url).items():
        files[DASHBOARDS_DIR / f"{uid}.json"] = dashboards.render_dashboard(dashboard)
    for name, text in runbooks.render_runbooks(thresholds, runbook_base_url).items():
        files[RUNBOOKS_DIR / name] = text
    return files


def _stale(out: Path, files: dict[Path, str]) -> list[Path]:
    """Owned-looking files the generator no longer produces."""
    owned = [*(out / RUNBOOKS_DIR).glob("*.md"), *(out / DASHBOARDS_DIR).glob("pyrallel-*.json")]
    return sorted(p.relative_to(out) for p in owned if p.relative_to(out) not in files)


def drifted(out: Path, files: dict[Path, str]) -> list[str]:
    """One line per file under ``out`` that differs from ``files``: changed, missing, stale."""
    problems = []
    for rel, text in sorted(files.items()):
        path = out / rel
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"changed: {rel}")
    problems += [f"stale: {rel}" for rel in _stale(out, files)]
    return problems


def write(out: Path, files: dict[Path, str]) -> list[str]:
    """Write what differs, remove stale files; one line per file touched."""
    done = []
    for rel, text in sorted(files.items()):
        path = out / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        done.append(f"wrote: {rel}")
    for rel in _stale(out, files):
        (out / rel).unlink()
        done.append(f"removed: {rel}")
    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrallel generate",
        description="Write alert rules, promtool tests, Grafana dashboards and runbook pages.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 and list the files that differ from the generator",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path.cwd(),
        metavar="DIR",
        help="repository root to write into (default: the current directory)",
    )
    parser.add_argument(
        "--runbook-base-url",
        default=alerts.DEFAULT_RUNBOOK_BASE_URL,
        metavar="URL",
        help=(
            "where runbook pages are served; alerts and panels link to <URL>/<AlertName>.md"
            f" (default: {alerts.DEFAULT_RUNBOOK_BASE_URL!r})"
        ),
    )
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``pyrallel generate``; returns the exit status."""
    args = _parser().parse_args(argv)
    out: Path = args.out
    files = generated_files(DEFAULT_THRESHOLDS, args.runbook_base_url)
    if args.check:
        problems = drifted(out, files)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            if all(line.startswith("missing: ") for line in problems):
                print(
                    f"pyrallel generate: none of the generated files is under {out.resolve()};"
                    " run it from the repository root or pass --out",
                    file=sys.stderr,
                )
                return 1
            print(
                f"pyrallel generate: {len(problems)} generated file(s) out of date;"
                " run `pyrallel generate` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"pyrallel generate: {len(files)} generated files are up to date")
        return 0
    for line in write(out, files):
        print(line)
    return 0
