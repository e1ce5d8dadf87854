"""The audit checker must fail on each kind of fault, from synthetic worker records."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyrallel.offsets import metadata as codec
from tests.support import audit_check
from tests.support.audit_check import CommitObservation, Report

T = "t"
MS = 1_000_000  # ns


class Proc:
    """Writes one worker's ``.audit`` file in the worker's format."""

    def __init__(self, directory: Path, name: str, pid: int) -> None:
        self.path = directory / f"{name}-{pid}.audit"
        self.pid = pid
        self.seq = 0
        self.lines = [f"H\t{name}\t{pid}\t0\n"]

    def begin(self, partition: int, offset: int, key: str, at: int) -> int:
        self.seq += 1
        self.lines.append(f"B\t{self.seq}\t{T}\t{partition}\t{offset}\t{key}\t{at * MS}\n")
        return self.seq

    def end(self, seq: int, at: int, kind: str = "E") -> None:
        self.lines.append(f"{kind}\t{seq}\t{at * MS}\n")

    def run(self, partition: int, offset: int, key: str, begin: int, end: int) -> None:
        self.end(self.begin(partition, offset, key, begin), end)

    def exit(self, at: int) -> None:
        self.lines.append(f"X\t{at * MS}\t0\n")

    def save(self, tail: str = "") -> None:
        self.path.write_text("".join(self.lines) + tail)


def _produced(directory: Path, keys: list[str], partition: int = 0) -> None:
    """Offset i of ``partition`` has key ``keys[i]``."""
    audit_check.write_produced(
        directory / "produced.tsv",
        [(T, partition, i, k.encode()) for i, k in enumerate(keys)],
    )


def _check(directory: Path, commits: list[CommitObservation] | None = None) -> Report:
    data, produced, observed = audit_check.load_dir(directory)
    return audit_check.check(data, produced, commits if commits is not None else observed)


def _key(name: str) -> str:
    return name.encode().hex()


A, B = _key("a"), _key("b")


def test_clean_run_is_ok(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b", "a", "b"])
    p = Proc(tmp_path, "W1", 100)
    p.run(0, 0, A, 0, 10)
    p.run(0, 1, B, 0, 5)
    p.run(0, 2, A, 10, 20)
    p.run(0, 3, B, 6, 9)
    p.exit(30)
    p.save()
    report = _check(tmp_path)
    assert report.ok, report.summary()
    assert (report.expected, report.completed_offsets, report.lost) == (4, 4, 0)
    assert report.duplicates == report.overlaps == report.order_violations == 0
    assert audit_check.main([str(tmp_path)]) == 0


def test_lost_offset_fails(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b", "a"])
    p = Proc(tmp_path, "W1", 100)
    p.run(0, 0, A, 0, 10)
    p.run(0, 2, A, 10, 20)
    p.exit(30)
    p.save()
    report = _check(tmp_path)
    assert not report.ok
    assert report.lost == 1 and report.lost_examples == [(T, 0, 1)]
    assert audit_check.main([str(tmp_path)]) == 1


def test_cancelled_or_cut_execution_is_not_a_completion(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 0, A, 0, 10)
    w1.end(w1.begin(0, 1, B, 0), 3, kind="C")  # cancelled by a revoke
    w1.exit(20)
    w1.save()
    w2 = Proc(tmp_path, "W2", 200)
    w2.begin(0, 1, B, 30)  # cut: W2 never exits, nobody ends offset 1
    w2.save()
    report = _check(tmp_path)
    assert report.lost == 1 and report.cancelled == 1 and report.cut == 1
    assert report.cut_unbounded == 1  # W2 neither exited nor is known dead


def test_duplicate_is_counted_and_charged_to_the_redone_process(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b"])
    (tmp_path / "deaths.tsv").write_text(f"100\t{50 * MS}\n")
    w1 = Proc(tmp_path, "W1", 100)  # killed at 50 ms after completing both
    w1.run(0, 0, A, 0, 10)
    w1.run(0, 1, B, 0, 40)
    w1.save()
    w2 = Proc(tmp_path, "W2", 200)  # nothing was committed: both run again
    w2.run(0, 0, A, 100, 110)
    w2.run(0, 1, B, 100, 105)
    w2.run(0, 1, B, 200, 205)  # and offset 1 a third time
    w2.exit(300)
    w2.save()
    report = _check(tmp_path)
    assert report.ok, report.summary()  # duplicates are allowed, just counted
    assert report.duplicates == 3 and report.duplicate_offsets == 2
    assert report.duplicates_by_process == {"W1-100": 2, "W2-200": 1}
    assert report.duplicates_of(killed=True) == 2
    assert report.processes["W1-100"].max_redo_lag_ms == pytest.approx(40)  # 50 - 10
    assert report.order_violations == 0, "re-runs after a crash are not order violations"


def test_overlap_of_two_live_executions_fails(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b", "a"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 0, A, 0, 10)
    w1.run(0, 1, B, 0, 10)
    w1.exit(20)
    w1.save()
    w2 = Proc(tmp_path, "W2", 200)
    w2.run(0, 0, A, 5, 8)  # a second owner runs key a while W1 still does
    w2.run(0, 2, A, 12, 20)
    w2.exit(30)
    w2.save()
    report = _check(tmp_path)
    assert not report.ok
    assert report.overlaps == 1 and report.overlaps_with_killed == 0
    assert "W2-200#1" in report.overlap_examples[0]


def test_cancelled_execution_is_live_until_its_cancel(tmp_path: Path) -> None:
    _produced(tmp_path, ["a"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.end(w1.begin(0, 0, A, 0), 50, kind="C")
    w1.exit(60)
    w1.save()
    w2 = Proc(tmp_path, "W2", 200)
    w2.run(0, 0, A, 40, 45)  # began before W1 let go of the key
    w2.exit(60)
    w2.save()
    assert _check(tmp_path).overlaps == 1


def test_overlap_with_a_killed_execution_is_bounded_by_the_death(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "a"])
    (tmp_path / "deaths.tsv").write_text(f"100\t{50 * MS}\n")
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 0, A, 0, 10)
    w1.begin(0, 1, A, 10)  # cut by the kill at 50 ms
    w1.save()
    w2 = Proc(tmp_path, "W2", 200)
    w2.run(0, 1, A, 60, 70)  # after the death: fine
    w2.exit(80)
    w2.save()
    report = _check(tmp_path)
    assert report.ok, report.summary()
    assert report.cut == 1 and report.cut_unbounded == 0

    w2.lines = w2.lines[:1]
    w2.run(0, 1, A, 40, 70)  # began while the killed process was still alive
    w2.exit(80)
    w2.save()
    report = _check(tmp_path)
    assert not report.ok
    assert report.overlaps == 0 and report.overlaps_with_killed == 1


def test_order_violation_fails(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b", "a"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 2, A, 0, 10)  # offset 2 of key a first ...
    w1.run(0, 0, A, 10, 20)  # ... then offset 0: out of order, though not overlapping
    w1.run(0, 1, B, 0, 5)
    w1.exit(30)
    w1.save()
    report = _check(tmp_path)
    assert not report.ok
    assert report.order_violations == 1 and report.overlaps == 0


def test_later_offset_must_not_start_before_the_earlier_is_first_done(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "a"])
    w1 = Proc(tmp_path, "W1", 100)
    s0 = w1.begin(0, 0, A, 0)
    w1.run(0, 1, A, 5, 8)  # ran while offset 0 was still running
    w1.end(s0, 10)
    w1.exit(20)
    w1.save()
    report = _check(tmp_path)
    assert report.order_violations == 1 and report.overlaps == 1


def test_commit_past_unfinished_offset_fails(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b", "a", "b"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 0, A, 0, 10)
    w1.run(0, 1, B, 0, 100)
    w1.run(0, 2, A, 10, 20)
    w1.run(0, 3, B, 100, 110)
    w1.exit(200)
    w1.save()
    good = [
        CommitObservation(15 * MS, T, 0, 1),  # 0 done: commit 1
        CommitObservation(150 * MS, T, 0, 4),
    ]
    assert _check(tmp_path, good).ok
    early = [CommitObservation(50 * MS, T, 0, 3)]  # claims offset 1 (ends at 100) done
    report = _check(tmp_path, early)
    assert not report.ok and report.commit_violations == 1
    assert "[1]" in report.commit_examples[0]


def test_commit_metadata_claiming_unfinished_offset_fails(tmp_path: Path) -> None:
    _produced(tmp_path, ["a", "b", "c", "d"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 0, A, 0, 100)
    w1.run(0, 1, B, 0, 10)
    w1.run(0, 2, _key("c"), 0, 80)
    w1.run(0, 3, _key("d"), 0, 10)
    w1.exit(200)
    w1.save()
    fine = codec.encode(0, [(1, 1), (3, 3)], 4096)
    wrong = codec.encode(0, [(1, 3)], 4096)  # says 2 is done at 50 ms: it ends at 80
    assert fine and wrong
    (tmp_path / "commits.tsv").write_text(
        f"{50 * MS}\t{T}\t0\t0\t{fine}\n{60 * MS}\t{T}\t0\t0\t{wrong}\n"
    )
    report = _check(tmp_path)
    assert report.commit_observations == 2
    assert report.commit_violations == 1 and "[2]" in report.commit_examples[0]


def test_torn_last_line_of_a_killed_process_is_ignored(tmp_path: Path) -> None:
    _produced(tmp_path, ["a"])
    (tmp_path / "deaths.tsv").write_text(f"100\t{50 * MS}\n")
    w1 = Proc(tmp_path, "W1", 100)
    w1.begin(0, 0, A, 0)
    w1.save(tail="E\t1\t4")  # the kill tore the end record: the execution stays cut
    w2 = Proc(tmp_path, "W2", 200)
    w2.run(0, 0, A, 60, 70)
    w2.exit(80)
    w2.save()
    report = _check(tmp_path)
    assert report.ok, report.summary()
    assert report.cut == 1 and report.bad_lines == 0


def test_execution_of_an_offset_never_produced_fails(tmp_path: Path) -> None:
    _produced(tmp_path, ["a"])
    w1 = Proc(tmp_path, "W1", 100)
    w1.run(0, 0, A, 0, 10)
    w1.run(0, 7, A, 10, 20)
    w1.exit(30)
    w1.save()
    report = _check(tmp_path)
    assert not report.ok and report.unexpected == 1
