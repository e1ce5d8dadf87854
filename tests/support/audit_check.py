"""Check the execution records of :mod:`tests.support.audit_worker` processes.

Inputs (all in one directory, see :func:`load_dir`):

* ``*.audit`` files, one per worker process (format in ``audit_worker``);
* ``produced.tsv``: ``topic partition offset keyhex`` per produced record (the truth);
* ``deaths.tsv`` (optional): ``pid ns`` per process the test killed with SIGKILL, ``ns``
  taken after the kill was reaped, so the process wrote nothing later;
* ``commits.tsv`` (optional): ``ns topic partition offset metadata`` per observation
  of the group's committed offset (``ns`` taken after the broker answered).

Definitions (what :func:`check` reports):

execution
    One handler call: a ``B`` record and its ``E`` (*completed*), ``C`` (*cancelled* by
    the consumer: revoke past the grace, or stop) or nothing (*cut*: the process died
    in the middle). A cut execution of a process the test killed is *bounded* by the
    death time; one of a process that is neither killed nor cleanly exited (``X``) is
    *unbounded* and only counted.
lost
    A produced offset with no completed execution anywhere.
duplicates
    Completions beyond the first: an offset completed ``n`` times adds ``n - 1``. Each
    is charged to the process whose completion was redone (every completion but the
    last), so the duplicates a crash causes are those charged to the killed process.
reruns
    Executions beyond the first begin of an offset (any outcome): includes re-runs of
    cut and cancelled executions, which are not duplicates.
order violation
    Per key (topic, partition, key) and its produced offsets ``o1 < o2 < ...`` that were
    completed: the *first completion* of ``o(i+1)`` (the completed execution that ended
    first) began before the first completion of ``o(i)`` ended. Re-runs after a crash
    or a revoke (an earlier offset completed again later) are duplicates, not
    violations: only first completions are ordered, and they must not even overlap.
overlap
    Two executions of one key whose intervals intersect (``b2 < e1`` and ``b1 < e2``):
    a completed execution is ``[begin, end]``, a cancelled one ``[begin, cancel]``.
    Both must be *live*: an overlap with a cut execution bounded by its process's death
    (``[begin, death]``) is reported apart as ``overlaps_with_killed``; after a kill -9
    the dead process runs nothing, so a new owner's execution that starts before the
    death time would mean two owners at once, which the group protocol excludes.
    Unbounded cut executions take no part.
commit violation
    An observed commit ``(offset C, metadata)`` at time ``t`` where some produced offset
    below ``C``, or inside the metadata's done ranges, had no completion that ended
    before ``t``: the group claimed as done a record nobody had finished (C11/C12).
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyrallel.offsets import metadata as codec

Coord = tuple[str, int, int]  # topic, partition, offset
KeyId = tuple[str, int, str]  # topic, partition, keyhex

COMPLETED = "completed"
CANCELLED = "cancelled"
CUT = "cut"

_EXAMPLES = 10


@dataclass
class Execution:
    process: str  # "<name>-<pid>"
    pid: int
    seq: int
    topic: str
    partition: int
    offset: int
    key: str
    begin_ns: int
    end_ns: int | None = None
    outcome: str = CUT

    @property
    def coord(self) -> Coord:
        return (self.topic, self.partition, self.offset)

    @property
    def key_id(self) -> KeyId:
        return (self.topic, self.partition, self.key)


@dataclass
class Process:
    name: str
    pid: int
    path: str = ""
    started_ns: int | None = None
    exit_ns: int | None = None
    exit_code: int | None = None
    death_ns: int | None = None  # set when the test killed it
    last_ns: int = 0
    events: list[tuple[str, str, int]] = field(default_factory=list)  # kind, parts, ns
    bad_lines: int = 0

    @property
    def ident(self) -> str:
        return f"{self.name}-{self.pid}"

    @property
    def killed(self) -> bool:
        return self.death_ns is not None


@dataclass
class CommitObservation:
    ns: int
    topic: str
    partition: int
    offset: int
    metadata: str = ""


@dataclass
class AuditData:
    processes: dict[str, Process]
    executions: list[Execution]


@dataclass
class ProcessStats:
    process: str
    killed: bool
    clean_exit: bool
    begun: int = 0
    completed: int = 0
    cancelled: int = 0
    cut: int = 0
    redone: int = 0  # completions of this process that were completed again later
    max_redo_lag_ms: float | None = None  # death (or exit) minus end of a redone completion


@dataclass
class Report:
    expected: int
    completed_offsets: int
    executions: int
    lost: int
    duplicates: int
    duplicate_offsets: int
    reruns: int
    order_violations: int
    overlaps: int
    overlaps_with_killed: int
    cut: int
    cut_unbounded: int
    cancelled: int
    unexpected: int
    commit_violations: int
    commit_observations: int
    duplicates_by_process: dict[str, int] = field(default_factory=dict)
    processes: dict[str, ProcessStats] = field(default_factory=dict)
    lost_examples: list[Coord] = field(default_factory=list)
    order_examples: list[str] = field(default_factory=list)
    overlap_examples: list[str] = field(default_factory=list)
    commit_examples: list[str] = field(default_factory=list)
    unexpected_examples: list[Coord] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.order_violations == 0
            and self.overlaps == 0
            and self.overlaps_with_killed == 0
            and self.commit_violations == 0
            and self.unexpected == 0
        )

    def duplicates_of(self, *, killed: bool) -> int:
        return sum(
            n
            for ident, n in self.duplicates_by_process.items()
            if self.processes[ident].killed == killed
        )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"expected={self.expected} completed={self.completed_offsets} lost={self.lost} "
            f"executions={self.executions} duplicates={self.duplicates} "
            f"(offsets {self.duplicate_offsets}; from killed processes "
            f"{self.duplicates_of(killed=True)}, from live/clean ones "
            f"{self.duplicates_of(killed=False)}) reruns={self.reruns}",
            f"order_violations={self.order_violations} overlaps={self.overlaps} "
            f"overlaps_with_killed={self.overlaps_with_killed} cut={self.cut} "
            f"(unbounded {self.cut_unbounded}) cancelled={self.cancelled} "
            f"unexpected={self.unexpected} commit_violations={self.commit_violations} "
            f"(of {self.commit_observations} observations) bad_lines={self.bad_lines}",
        ]
        for st in self.processes.values():
            state = "killed" if st.killed else ("exited" if st.clean_exit else "no-exit")
            lag = "" if st.max_redo_lag_ms is None else f" max_redo_lag_ms={st.max_redo_lag_ms:.0f}"
            lines.append(
                f"  {st.process:<16} {state:<7} begun={st.begun} completed={st.completed} "
                f"cancelled={st.cancelled} cut={st.cut} redone={st.redone}{lag}"
            )
        for title, examples in (
            ("lost", self.lost_examples),
            ("order", self.order_examples),
            ("overlap", self.overlap_examples),
            ("commit", self.commit_examples),
            ("unexpected", self.unexpected_examples),
        ):
            for ex in examples:
                lines.append(f"  {title}: {ex}")
        return "\n".join(lines)


# -- loading ---------------------------------------------------------------------------


def parse_audit(path: Path, deaths: Mapping[int, int] | None = None) -> AuditData:
    """One worker's ``.audit`` file. A last line without newline (torn) is ignored."""
    text = path.read_bytes().decode(errors="replace")
    lines = text.split("\n")
    lines.pop()  # the part after the last newline: empty, or a torn write
    stem = path.stem
    name, _, pid_text = stem.rpartition("-")
    proc = Process(name=name, pid=int(pid_text), path=str(path))
    execs: dict[int, Execution] = {}
    for line in lines:
        f = line.split("\t")
        try:
            kind = f[0]
            if kind == "B":
                ex = Execution(
                    proc.ident, proc.pid, int(f[1]), f[2], int(f[3]), int(f[4]), f[5], int(f[6])
                )
                execs[ex.seq] = ex
                proc.last_ns = max(proc.last_ns, ex.begin_ns)
            elif kind in ("E", "C"):
                ex = execs[int(f[1])]
                ex.end_ns = int(f[2])
                ex.outcome = COMPLETED if kind == "E" else CANCELLED
                proc.last_ns = max(proc.last_ns, ex.end_ns)
            elif kind == "H":
                proc.name, proc.pid, proc.started_ns = f[1], int(f[2]), int(f[3])
            elif kind == "R":
                proc.events.append((f[1], f[2], int(f[3])))
            elif kind == "X":
                proc.exit_ns, proc.exit_code = int(f[1]), int(f[2])
            else:
                proc.bad_lines += 1
        except (IndexError, ValueError, KeyError):
            proc.bad_lines += 1
    if deaths and proc.pid in deaths:
        proc.death_ns = deaths[proc.pid]
    return AuditData({proc.ident: proc}, list(execs.values()))


def load_audits(directory: Path, deaths: Mapping[int, int] | None = None) -> AuditData:
    processes: dict[str, Process] = {}
    executions: list[Execution] = []
    for path in sorted(directory.glob("*.audit")):
        data = parse_audit(path, deaths)
        processes.update(data.processes)
        executions.extend(data.executions)
    return AuditData(processes, executions)


Produced = dict[Coord, str]  # coord -> keyhex


def write_produced(path: Path, records: Iterable[tuple[str, int, int, bytes | None]]) -> None:
    with path.open("w") as out:
        for topic, partition, offset, key in records:
            out.write(f"{topic}\t{partition}\t{offset}\t{'-' if key is None else key.hex()}\n")


def read_produced(path: Path) -> Produced:
    produced: Produced = {}
    for line in path.read_text().splitlines():
        topic, partition, offset, key = line.split("\t")
        produced[(topic, int(partition), int(offset))] = key
    return produced


def read_deaths(path: Path) -> dict[int, int]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        pid, ns = line.split("\t")
        out[int(pid)] = int(ns)
    return out


def read_commits(path: Path) -> list[CommitObservation]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        ns, topic, partition, offset, meta = [*line.split("\t"), ""][:5]
        out.append(CommitObservation(int(ns), topic, int(partition), int(offset), meta))
    return out


def load_dir(directory: Path) -> tuple[AuditData, Produced, list[CommitObservation]]:
    deaths = read_deaths(directory / "deaths.tsv")
    return (
        load_audits(directory, deaths),
        read_produced(directory / "produced.tsv"),
        read_commits(directory / "commits.tsv"),
    )


# -- checking --------------------------------------------------------------------------


def check(
    data: AuditData,
    produced: Produced,
    commits: Sequence[CommitObservation] = (),
) -> Report:
    procs = data.processes
    by_coord: dict[Coord, list[Execution]] = defaultdict(list)
    for ex in data.executions:
        by_coord[ex.coord].append(ex)
    completions: dict[Coord, list[Execution]] = {}
    for coord, runs in by_coord.items():
        done = sorted((e for e in runs if e.outcome == COMPLETED), key=lambda e: e.end_ns or 0)
        if done:
            completions[coord] = done

    stats = {
        ident: ProcessStats(ident, p.killed, p.exit_ns is not None) for ident, p in procs.items()
    }
    cut = cut_unbounded = cancelled = 0
    for ex in data.executions:
        st = stats[ex.process]
        st.begun += 1
        if ex.outcome == COMPLETED:
            st.completed += 1
        elif ex.outcome == CANCELLED:
            st.cancelled += 1
            cancelled += 1
        else:
            st.cut += 1
            cut += 1
            if not procs[ex.process].killed:
                cut_unbounded += 1

    expected = set(produced)
    lost = sorted(expected - set(completions))
    unexpected = sorted(set(by_coord) - expected)

    duplicates = 0
    dup_offsets = 0
    dup_by_proc: Counter[str] = Counter()
    for done in completions.values():
        if len(done) > 1:
            dup_offsets += 1
            duplicates += len(done) - 1
            for ex in done[:-1]:
                proc = procs[ex.process]
                st = stats[ex.process]
                dup_by_proc[ex.process] += 1
                st.redone += 1
                horizon = proc.death_ns or proc.exit_ns
                if horizon is not None and ex.end_ns is not None:
                    lag = (horizon - ex.end_ns) / 1e6
                    if st.max_redo_lag_ms is None or lag > st.max_redo_lag_ms:
                        st.max_redo_lag_ms = lag
    reruns = sum(len(runs) - 1 for runs in by_coord.values())

    order_count, order_examples = _order_violations(produced, completions)
    overlaps, with_killed, overlap_examples = _overlaps(data.executions, procs)
    commit_count, commit_examples, observations = _commit_violations(produced, completions, commits)

    return Report(
        expected=len(expected),
        completed_offsets=len(expected & set(completions)),
        executions=len(data.executions),
        lost=len(lost),
        duplicates=duplicates,
        duplicate_offsets=dup_offsets,
        reruns=reruns,
        order_violations=order_count,
        overlaps=overlaps,
        overlaps_with_killed=with_killed,
        cut=cut,
        cut_unbounded=cut_unbounded,
        cancelled=cancelled,
        unexpected=len(unexpected),
        commit_violations=commit_count,
        commit_observations=observations,
        duplicates_by_process=dict(dup_by_proc),
        processes=stats,
        lost_examples=lost[:_EXAMPLES],
        order_examples=order_examples,
        overlap_examples=overlap_examples,
        commit_examples=commit_examples,
        unexpected_examples=unexpected[:_EXAMPLES],
        bad_lines=sum(p.bad_lines for p in procs.values()),
    )


def _describe(ex: Execution) -> str:
    end = "-" if ex.end_ns is None else str(ex.end_ns)
    return (
        f"{ex.process}#{ex.seq} {ex.topic}[{ex.partition}]@{ex.offset} key={ex.key} "
        f"{ex.outcome} [{ex.begin_ns}, {end}]"
    )


def _order_violations(
    produced: Produced, completions: Mapping[Coord, list[Execution]]
) -> tuple[int, list[str]]:
    by_key: dict[KeyId, list[int]] = defaultdict(list)
    for (topic, partition, offset), key in produced.items():
        if key != "-":  # null keys have no order in key mode
            by_key[(topic, partition, key)].append(offset)
    count = 0
    examples: list[str] = []
    for (topic, partition, _), offsets in by_key.items():
        offsets.sort()
        prev: Execution | None = None
        for offset in offsets:
            done = completions.get((topic, partition, offset))
            if not done:
                continue  # lost: reported as such
            first = done[0]
            if prev is not None and prev.end_ns is not None and first.begin_ns < prev.end_ns:
                count += 1
                if len(examples) < _EXAMPLES:
                    examples.append(
                        f"first completion {_describe(first)} began before first completion "
                        f"{_describe(prev)} of the earlier offset ended"
                    )
            prev = first
    return count, examples


def _overlaps(
    executions: Sequence[Execution], procs: Mapping[str, Process]
) -> tuple[int, int, list[str]]:
    by_key: dict[KeyId, list[tuple[int, int, bool, Execution]]] = defaultdict(list)
    for ex in executions:
        if ex.key == "-":
            continue
        if ex.end_ns is not None:
            by_key[ex.key_id].append((ex.begin_ns, ex.end_ns, False, ex))
        else:
            death = procs[ex.process].death_ns
            if death is not None:
                by_key[ex.key_id].append((ex.begin_ns, death, True, ex))
    live = killed = 0
    examples: list[str] = []
    for intervals in by_key.values():
        intervals.sort(key=lambda iv: (iv[0], iv[1]))
        reach: tuple[int, int, bool, Execution] | None = None  # the one ending last so far
        for iv in intervals:
            if reach is not None and iv[0] < reach[1]:
                if iv[2] or reach[2]:
                    killed += 1
                else:
                    live += 1
                if len(examples) < _EXAMPLES:
                    examples.append(f"{_describe(iv[3])} overlaps {_describe(reach[3])}")
            if reach is None or iv[1] > reach[1]:
                reach = iv
    return live, killed, examples


def _commit_violations(
    produced: Produced,
    completions: Mapping[Coord, list[Execution]],
    commits: Sequence[CommitObservation],
) -> tuple[int, list[str], int]:
    if not commits:
        return 0, [], 0
    never = 2**63
    # Per partition: produced offsets ascending, first completion end, and its prefix max.
    offsets_of: dict[tuple[str, int], list[int]] = defaultdict(list)
    for topic, partition, offset in produced:
        offsets_of[(topic, partition)].append(offset)
    first_end: dict[tuple[str, int], list[int]] = {}
    prefix_max: dict[tuple[str, int], list[int]] = {}
    for tp, offsets in offsets_of.items():
        offsets.sort()
        ends = []
        for o in offsets:
            done = completions.get((*tp, o))
            ends.append((done[0].end_ns or never) if done else never)
        first_end[tp] = ends
        running, pm = 0, []
        for e in ends:
            running = max(running, e)
            pm.append(running)
        prefix_max[tp] = pm
    # The earliest sighting of each distinct commit is the strictest one to check.
    earliest: dict[tuple[str, int, int, str], int] = {}
    for c in commits:
        k = (c.topic, c.partition, c.offset, c.metadata)
        if k not in earliest or c.ns < earliest[k]:
            earliest[k] = c.ns
    count = 0
    examples: list[str] = []
    for (topic, partition, offset, meta), ns in sorted(earliest.items(), key=lambda kv: kv[1]):
        tp = (topic, partition)
        offsets = offsets_of.get(tp, [])
        bad: list[int] = []
        i = bisect.bisect_left(offsets, offset)  # offsets[:i] are below the commit
        if i and prefix_max[tp][i - 1] > ns:
            bad.extend(o for o, e in zip(offsets[:i], first_end[tp][:i], strict=True) if e > ns)
        ranges = codec.decode(meta, offset) if meta else None
        for lo, hi in ranges or ():
            a, b = bisect.bisect_left(offsets, lo), bisect.bisect_right(offsets, hi)
            bad.extend(o for o, e in zip(offsets[a:b], first_end[tp][a:b], strict=True) if e > ns)
        if bad:
            count += 1
            if len(examples) < _EXAMPLES:
                where = "below it or in its metadata"
                examples.append(
                    f"commit {topic}[{partition}]={offset} seen at {ns} claims unfinished "
                    f"offsets {where}: {sorted(bad)[:10]} ({len(bad)} in all)"
                )
    return count, examples, len(earliest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.audit_check")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    data, produced, commits = load_dir(args.directory)
    report = check(data, produced, commits)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
