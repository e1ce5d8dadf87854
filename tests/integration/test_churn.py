"""Issue 4 on the real broker with several consumer *processes*: churn, crashes, a broker
restart and kills during a revoke, each checked by the execution audit.

Every consumer is a ``tests.support.audit_worker`` process writing an append-only audit
of each handler execution; ``tests.support.audit_check`` reads them back together with
what was produced and every commit of the group observed while the run went on (a
monitor reads the committed offsets and metadata every 200 ms), and reports lost
offsets, duplicates, per-key order violations, overlaps and commits that claimed
unfinished work. Definitions are in ``audit_check``'s docstring.

Sizes are scaled down for CI; ``PYRALLEL_CHURN_FULL=1`` runs the issue's numbers
(60,000 messages over 300 keys on 6 partitions). ``PYRALLEL_CHURN_SEED`` fixes the random
schedule (printed by every test), ``PYRALLEL_CHURN_KEEP=DIR`` keeps the run directories
(audits, statuses, worker logs, ``report.json``) under ``DIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from devtools.kafka_broker import KafkaBroker
from tests.support import audit_check
from tests.support.waiting import wait_until

FULL = os.environ.get("PYRALLEL_CHURN_FULL") == "1"
SEED = int(os.environ.get("PYRALLEL_CHURN_SEED", str(random.randrange(1 << 30))))
KEEP = os.environ.get("PYRALLEL_CHURN_KEEP")
REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION_TIMEOUT_MS = 6000

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.timeout(1200 if FULL else 300),
]


# -- harness ---------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    started: float = field(default_factory=time.monotonic)
    stopping: bool = False  # SIGTERM sent
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def audit_path(self) -> Path:
        return self.out / f"{self.name}-{self.pid}.audit"

    @property
    def log_path(self) -> Path:
        return self.out / f"{self.name}-{self.pid}.log"

    @property
    def live(self) -> bool:
        return not self.stopping and not self.killed and self.proc.poll() is None

    def audit_text(self) -> str:
        try:
            return self.audit_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def completed(self) -> int:
        return self.audit_text().count("\nE\t")

    def last_status(self) -> dict[str, Any] | None:
        try:
            lines = (self.out / f"{self.name}-{self.pid}.status").read_text().splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                status: dict[str, Any] = json.loads(line)
                return status
        return None


class CommitMonitor:
    """Reads the group's committed offsets (and metadata) every ``interval`` seconds.

    A plain consumer that never subscribes: ``committed()`` is an OffsetFetch, it does
    not join the group. Each answer is appended to ``commits.tsv`` with the time it
    arrived, for the audit's commit check.
    """

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int, out: Path) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "log_level": 2}
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._file = (out / "commits.tsv").open("a")
        self._stop = threading.Event()
        self.latest: dict[int, int] = {}
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="commit-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                tps = self._consumer.committed(self._tps, timeout=2)
            except KafkaException:
                self.errors += 1
                continue
            ns = time.time_ns()
            for tp in tps:
                if tp.error is not None or tp.offset < 0:
                    continue
                meta = tp.metadata or ""
                self._file.write(f"{ns}\t{tp.topic}\t{tp.partition}\t{tp.offset}\t{meta}\n")
                self.latest[tp.partition] = tp.offset
            self._file.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._file.close()
        self._consumer.close()


class Scenario:
    """One audited run: topic, produced manifest, workers, commit monitor, deaths."""

    def __init__(self, out: Path, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.out = out
        self.bootstrap = bootstrap
        self.group = group
        self.topic = topic
        self.partitions = partitions
        self.workers: list[Worker] = []
        self.ends: dict[int, int] = {}
        self.produced_total = 0
        self.events: list[str] = []
        self.bad_exits: list[str] = []
        self._seq = 0
        self._t0 = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        (out / "produced.tsv").touch()
        self.monitor = CommitMonitor(bootstrap, group, topic, partitions, out)

    def note(self, text: str) -> None:
        line = f"[{time.monotonic() - self._t0:7.2f}s] {text}"
        self.events.append(line)
        print(line, flush=True)

    def record_produced(self, produced: Any) -> None:
        with (self.out / "produced.tsv").open("a") as f:
            for r in produced.records:
                f.write(f"{self.topic}\t{r.partition}\t{r.offset}\t{r.key.hex()}\n")
                self.ends[r.partition] = max(self.ends.get(r.partition, 0), r.offset + 1)
        self.produced_total += len(produced.records)

    def spawn(self, prefix: str = "W", **options: Any) -> Worker:
        self._seq += 1
        name = f"{prefix}{self._seq}"
        args = [
            sys.executable,
            "-m",
            "tests.support.audit_worker",
            "--bootstrap",
            self.bootstrap,
            "--group",
            self.group,
            "--topic",
            self.topic,
            "--out",
            str(self.out),
            "--name",
            name,
            "--session-timeout-ms",
            str(SESSION_TIMEOUT_MS),
            "--seed",
            str(SEED + self._seq),
        ]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not False and value is not None:
                args += [flag, str(value)]
        with (self.out / f"{name}.stdout").open("ab") as stdout:
            proc = subprocess.Popen(
                args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stdout
            )
        worker = Worker(name, proc, self.out)
        self.workers.append(worker)
        self.note(f"started {name} pid {proc.pid}")
        return worker

    def terminate(self, worker: Worker) -> None:
        # Before its first status line the worker may not have installed its SIGTERM
        # handler yet (still importing): the signal would kill it outright.
        wait_until(
            lambda: worker.last_status() is not None or worker.proc.poll() is not None,
            timeout=30,
            interval=0.05,
            message=f"{worker.name} to start consuming",
        )
        worker.stopping = True
        worker.proc.send_signal(signal.SIGTERM)
        self.note(f"SIGTERM {worker.name} pid {worker.pid}")

    def kill(self, worker: Worker) -> dict[str, Any] | None:
        """``kill -9``; returns the worker's last status line before the kill."""
        status = worker.last_status()
        worker.proc.kill()
        worker.proc.wait(10)
        ns = time.time_ns()  # after the reap: the process wrote nothing later
        worker.killed = True
        with (self.out / "deaths.tsv").open("a") as f:
            f.write(f"{worker.pid}\t{ns}\n")
        held = status["in_flight"] if status else None
        executing = status["executing"] if status else None
        self.note(
            f"kill -9 {worker.name} pid {worker.pid} (last status: in_flight={held} "
            f"executing={executing})"
        )
        return status

    def live(self) -> list[Worker]:
        self.check_workers()
        return [w for w in self.workers if w.live]

    def check_workers(self) -> None:
        """Fail at once when a worker exited although nobody stopped it."""
        for w in self.workers:
            code = w.proc.poll()
            if code is not None and not w.stopping and not w.killed:
                tail = "\n".join(w.log_path.read_text(errors="replace").splitlines()[-30:])
                pytest.fail(f"{w.name} pid {w.pid} exited {code} by itself:\n{tail}")

    def all_committed(self) -> bool:
        self.check_workers()
        latest = self.monitor.latest
        return all(latest.get(p) == end for p, end in self.ends.items())

    def wait_committed(self, timeout: float) -> None:
        wait_until(
            self.all_committed,
            timeout=timeout,
            interval=0.2,
            message=lambda: f"commits {self.ends} (now {self.monitor.latest})",
        )

    def wait_exited(self, worker: Worker, timeout: float = 40) -> int:
        try:
            return worker.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{worker.name} pid {worker.pid} did not exit {timeout:.0f} s after SIGTERM"
            )

    def finish(self) -> None:
        """SIGTERM every live worker and wait for each; non-zero exits are kept in
        ``bad_exits`` (checked by ``_assert_sound``, after the report is written)."""
        for w in self.workers:
            if w.proc.poll() is None and not w.stopping:
                self.terminate(w)
        for w in self.workers:
            if not w.killed:
                code = self.wait_exited(w)
                if code != 0:
                    self.bad_exits.append(f"{w.name} pid {w.pid} exited {code}; see {w.log_path}")

    def close(self) -> None:
        for w in self.workers:  # only processes this scenario started, by their pid
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)
        self.monitor.close()

    def report(self) -> audit_check.Report:
        data, produced, commits = audit_check.load_dir(self.out)
        report = audit_check.check(data, produced, commits)
        (self.out / "report.json").write_text(
            json.dumps(report.to_dict(), indent=2, default=str) + "\n"
        )
        (self.out / "summary.txt").write_text(report.summary() + "\n")
        print(report.summary(), flush=True)
        return report


@pytest.fixture
def run_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    if KEEP:
        path = Path(KEEP) / f"{request.node.name}-{int(time.time())}"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path


@pytest.fixture
def scenario_factory(run_dir: Path, bootstrap: str, group_id: str) -> Iterator[Any]:
    made: list[Scenario] = []

    def make(topic: str, partitions: int) -> Scenario:
        sc = Scenario(run_dir, bootstrap, group_id, topic, partitions)
        made.append(sc)
        print(f"seed {SEED} (PYRALLEL_CHURN_SEED), full={FULL}, dir {run_dir}", flush=True)
        return sc

    yield make
    for sc in made:
        sc.close()


def _assert_sound(sc: Scenario, report: audit_check.Report) -> None:
    detail = report.summary()
    assert not sc.bad_exits, sc.bad_exits
    assert report.bad_lines == 0, detail
    assert report.unexpected == 0, detail
    assert report.lost == 0, detail
    assert report.order_violations == 0, detail
    assert report.commit_violations == 0, detail
    assert report.commit_observations > 0, detail
    assert report.cut_unbounded == 0, detail
    assert report.overlaps == 0, detail
    assert report.overlaps_with_killed == 0, detail


# -- group churn -----------------------------------------------------------------------

CHURN_MESSAGES = 60_000 if FULL else 12_000
CHURN_KEYS = 300
CHURN_PARTITIONS = 6
CHURN_LATENCY = "50-250"  # ms; the revoke grace (5 s) is far longer
CHURN_IN_FLIGHT = 20


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_group_churn_loses_nothing_and_keeps_key_order(
    scenario_factory: Any, make_topic: Any, produce_keyed: Any, strategy: str
) -> None:
    """3 worker processes; every 2-4 s one stops (SIGTERM or kill -9, alternately) or
    starts, until everything is committed. Handlers (10-40 ms) are far shorter than
    the revoke grace (5 s), so no two live executions of a key may overlap."""
    topic = make_topic(partitions=CHURN_PARTITIONS)
    sc: Scenario = scenario_factory(topic, CHURN_PARTITIONS)
    sc.record_produced(produce_keyed(topic, CHURN_MESSAGES, keys=CHURN_KEYS))
    rng = random.Random(SEED)
    opts = {
        "strategy": strategy,
        "latency_ms": CHURN_LATENCY,
        "max_in_flight": CHURN_IN_FLIGHT,
        "grace_ms": 5000,
    }
    for _ in range(3):
        sc.spawn(**opts)
    started = time.monotonic()
    deadline = started + (900 if FULL else 200)
    stops = ["term", "kill"]
    stop_count = {"term": 0, "kill": 0}
    stops_with_work_left = {"term": 0, "kill": 0}
    starts = 0
    while not sc.all_committed():
        assert time.monotonic() < deadline, f"no end of the churn; {sc.monitor.latest}"
        time.sleep(rng.uniform(2.0, 4.0))
        live = sc.live()
        stop = len(live) >= 3 or (len(live) == 2 and rng.random() < 0.5)
        if stop:
            kind = stops[(stop_count["term"] + stop_count["kill"]) % 2]
            victim = rng.choice(live)
            work_left = not sc.all_committed()
            if kind == "kill":
                sc.kill(victim)
            else:
                sc.terminate(victim)
            stop_count[kind] += 1
            stops_with_work_left[kind] += work_left
        else:
            sc.spawn(**opts)
            starts += 1
        if not sc.live():
            sc.spawn(**opts)
            starts += 1
    churn_s = time.monotonic() - started
    sc.note(f"all committed after {churn_s:.1f} s; stops {stop_count}, starts {starts}")
    sc.finish()
    report = sc.report()
    print(
        f"FIGURES churn strategy={strategy} messages={CHURN_MESSAGES} seconds={churn_s:.1f} "
        f"stops={stop_count} starts={starts} lost={report.lost} "
        f"duplicates={report.duplicates} (killed {report.duplicates_of(killed=True)}, "
        f"graceful {report.duplicates_of(killed=False)}) cut={report.cut} "
        f"cancelled={report.cancelled} overlaps={report.overlaps}",
        flush=True,
    )
    assert stops_with_work_left["term"] >= 1 and stops_with_work_left["kill"] >= 1, (
        f"the churn must stop members both ways while work is left: {stops_with_work_left}"
    )
    _assert_sound(sc, report)
    # Every worker ends with its work done: nothing executing is abandoned at a
    # graceful stop when handlers are shorter than the drain timeout.
    for st in report.processes.values():
        if not st.killed:
            assert st.cut == 0, report.summary()


# -- crashes ---------------------------------------------------------------------------

CRASH_MESSAGES = 60_000 if FULL else 8_000
CRASH_KILLS = 5
CRASH_IN_FLIGHT = 100
CRASH_LATENCY = "100-300"  # ms
CRASH_COMMIT_MS = 50
# A completion is in a commit at most one commit interval (plus the async commit's round
# trip and scheduling) after it ends; anything that ended earlier before the kill must
# not run again. Generous, for a loaded 2-core machine.
REDO_WINDOW_MS = CRASH_COMMIT_MS + 1000


def test_kill9_at_random_points_reruns_only_recent_work(
    scenario_factory: Any, make_topic: Any, produce_keyed: Any
) -> None:
    """kill -9 of the only consumer at 5 random points, restarting it each time.

    Bound, stated precisely: a crash re-runs (a) the executions cut by the kill, at most
    the handler calls running then (<= max_in_flight), and (b) *duplicates*: work that
    completed after the last commit that reached the broker. Commits carry the offsets
    completed above the commit point (metadata), so (b) is only the last commit
    interval's completions; with commit_interval (50 ms) well under the handler
    latency (100-300 ms) that is below the in-flight count, and the test asserts
    duplicates per crash <= max_in_flight_messages (the in-flight count at the kill is
    logged from the worker's status line, taken <= 100 ms before the kill). It also
    asserts that nothing completed more than REDO_WINDOW_MS before a kill ran again and
    that every restarted consumer skipped work from the metadata (skipped_done).
    """
    partitions = 6
    topic = make_topic(partitions=partitions)
    sc: Scenario = scenario_factory(topic, partitions)
    sc.record_produced(produce_keyed(topic, CRASH_MESSAGES, keys=300))
    rng = random.Random(SEED)
    opts = {
        "latency_ms": CRASH_LATENCY,
        "max_in_flight": CRASH_IN_FLIGHT,
        "commit_interval_ms": CRASH_COMMIT_MS,
        "status_interval_ms": 50,
    }
    per_kill = CRASH_MESSAGES // (CRASH_KILLS + 2)
    crashes: list[tuple[Worker, dict[str, Any] | None, int]] = []
    worker = sc.spawn("C", **opts)
    for _ in range(CRASH_KILLS):
        # A random point: after this incarnation completed a random share of the work.
        target = rng.randint(per_kill // 5, per_kill)
        wait_until(
            lambda w=worker, t=target: w.completed() >= t or sc.all_committed(),
            timeout=120,
            interval=0.02,
            message=lambda w=worker, t=target: f"{w.name} to complete {t} (has {w.completed()})",
        )
        assert not sc.all_committed(), "the run ended before all kills happened"
        status = sc.kill(worker)
        crashes.append((worker, status, target))
        worker = sc.spawn("C", **opts)
    sc.wait_committed(timeout=180 if FULL else 120)
    sc.finish()
    report = sc.report()
    _assert_sound(sc, report)

    rows = []
    for i, (victim, status, target) in enumerate(crashes):
        ident = f"{victim.name}-{victim.pid}"
        st = report.processes[ident]
        successor = sc.workers[sc.workers.index(victim) + 1]
        succ_status = successor.last_status()
        skipped = succ_status["counters"]["skipped_done"] if succ_status else None
        rows.append(
            {
                "crash": i + 1,
                "worker": ident,
                "kill_point_completions": target,
                "killed_after_completing": st.completed,
                "in_flight_at_kill": status["in_flight"] if status else None,
                "executing_at_kill": status["executing"] if status else None,
                "cut": st.cut,
                "duplicates": st.redone,
                "max_redo_lag_ms": st.max_redo_lag_ms,
                "successor_skipped_done": skipped,
            }
        )
    for row in rows:
        print("FIGURES crash " + json.dumps(row), flush=True)
    (sc.out / "crashes.json").write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        assert row["cut"] <= CRASH_IN_FLIGHT, rows
        assert row["duplicates"] <= CRASH_IN_FLIGHT, rows
        lag = row["max_redo_lag_ms"]
        assert lag is None or lag <= REDO_WINDOW_MS, (
            f"work completed {lag:.0f} ms before a kill ran again: {rows}"
        )
        assert row["successor_skipped_done"], f"a restart skipped nothing via metadata: {rows}"
    # Only kills cause duplicates; the graceful final stop re-runs nothing.
    assert report.duplicates_of(killed=False) == 0, report.summary()


# -- broker restart --------------------------------------------------------------------


def test_broker_restart_mid_run_loses_nothing(
    scenario_factory: Any,
    make_topic: Any,
    produce_keyed: Any,
    kafka_broker: KafkaBroker,
) -> None:
    """Two workers consume; the broker is restarted (same data, same port) mid-run and
    more is produced after it; the group recovers and commits everything."""
    partitions = 6
    first = 20_000 if FULL else 6_000
    topic = make_topic(partitions=partitions)
    sc: Scenario = scenario_factory(topic, partitions)
    sc.record_produced(produce_keyed(topic, first, keys=300))
    opts = {"latency_ms": "50-150", "max_in_flight": 30, "strategy": "cooperative-sticky"}
    workers = [sc.spawn(**opts), sc.spawn(**opts)]
    # A steady group first: both members own partitions and work (a restart in the
    # middle of a rebalance is another case; it loses nothing either, see the report).
    wait_until(
        lambda: all(_owns(w) and w.completed() > 100 for w in workers),
        timeout=90,
        message="both workers owning partitions and processing",
    )
    wait_until(
        lambda: sum(w.completed() for w in workers) >= first // 3,
        timeout=90,
        message="a third of the work done before the restart",
    )
    sc.note("restarting the broker")
    began = time.monotonic()
    kafka_broker.restart()
    sc.note(f"broker back after {time.monotonic() - began:.1f} s")
    assert not sc.all_committed(), "work must be left when the broker comes back"
    sc.record_produced(produce_keyed(topic, first // 4, keys=300))
    sc.wait_committed(timeout=150)
    for w in workers:
        assert w.proc.poll() is None, f"{w.name} died across the broker restart: {w.log_path}"
    sc.finish()
    report = sc.report()
    counters = [(w.name, (w.last_status() or {}).get("counters")) for w in workers]
    print(
        f"FIGURES broker-restart lost={report.lost} duplicates={report.duplicates} "
        f"monitor_errors={sc.monitor.errors} counters={counters}",
        flush=True,
    )
    _assert_sound(sc, report)


# -- kills and revokes -----------------------------------------------------------------

REVOKE_MESSAGES = 2_000
SLOW_EVERY = 100  # offsets with offset % 100 == 7 are slow (one per 100 of a partition)
SLOW_REM = 7
# W1 takes in every record, so slow handlers run on every partition it owns and the
# later records of their keys wait in W1's lanes: polled, never processed.
REVOKE_IN_FLIGHT = 5_000


def _owns(worker: Worker) -> bool:
    status = worker.last_status()
    return bool(status and status["partitions"])


def _slow_running(worker: Worker) -> list[tuple[int, int]]:
    """(partition, offset) of slow executions begun and not yet ended or cancelled."""
    begun: dict[str, tuple[int, int]] = {}
    for line in worker.audit_text().splitlines():
        f = line.split("\t")
        if f[0] == "B" and int(f[4]) % SLOW_EVERY == SLOW_REM:
            begun[f[1]] = (int(f[3]), int(f[4]))
        elif f[0] in ("E", "C"):
            begun.pop(f[1], None)
    return sorted(begun.values())


def _revokes(worker: Worker) -> list[tuple[list[int], int]]:
    """The worker's non-empty revoke hooks: (partitions, ns)."""
    out = []
    for line in worker.audit_text().splitlines():
        f = line.split("\t")
        if f[0] == "R" and f[1] == "revoke" and f[2] != "-":
            out.append(([int(tp.rpartition(":")[2]) for tp in f[2].split(",")], int(f[3])))
    return out


def _revoke_returned(worker: Worker) -> bool:
    return "revoked [(" in worker.log_path.read_text()


def _status_before(worker: Worker, ns: int) -> dict[str, Any] | None:
    """The worker's last status line written before ``ns``."""
    best = None
    path = worker.out / f"{worker.name}-{worker.pid}.status"
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            status = json.loads(line)
            if status["ns"] < ns:
                best = status
    return best


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_kill9_during_revoke_wait_commits_nothing_unfinished(
    scenario_factory: Any, make_topic: Any, produce_keyed: Any, strategy: str
) -> None:
    """C11/C12: W1 holds slow handlers (20 s) and waits in its revoke (grace 30 s) when
    it is killed. Nothing it polled but did not finish (running slow handlers, records
    queued behind their keys) may be committed; W2 takes over everything, 0 lost."""
    partitions = 4
    topic = make_topic(partitions=partitions)
    sc: Scenario = scenario_factory(topic, partitions)
    sc.record_produced(produce_keyed(topic, REVOKE_MESSAGES, keys=40))
    base = {"strategy": strategy, "latency_ms": "5-20", "grace_ms": 30_000}
    w1 = sc.spawn(
        slow_every=SLOW_EVERY,
        slow_rem=SLOW_REM,
        slow_ms=20_000,
        max_in_flight=REVOKE_IN_FLIGHT,
        **base,
    )
    wait_until(
        lambda: {p for p, _ in _slow_running(w1)} == set(range(partitions)),
        timeout=60,
        message="W1 in slow handlers on every partition",
    )
    w2 = sc.spawn(max_in_flight=100, **base)
    revokes = wait_until(lambda: _revokes(w1), timeout=60, message="W1 revoking")
    time.sleep(1.0)  # well inside the 30 s grace: W1 waits for its slow handlers
    revoked, revoke_ns = revokes[0]
    running = [(p, o) for p, o in _slow_running(w1) if p in revoked]
    assert running, f"W1's slow handlers on {revoked} must still run when it is killed"
    assert not _revoke_returned(w1), "W1's revoke must still be waiting"
    before = _status_before(w1, revoke_ns)
    status = sc.kill(w1)
    assert before is not None and status is not None
    sc.note(f"W1 killed waiting in its revoke of {revoked}; slow offsets {running} running")
    sc.wait_committed(timeout=90)
    sc.finish()
    report = sc.report()
    _assert_sound(sc, report)
    st = report.processes[f"{w1.name}-{w1.pid}"]
    polled_unprocessed = before["in_flight"] - before["executing"]
    print(
        f"FIGURES kill-during-revoke strategy={strategy} W1 before the revoke: "
        f"held={before['in_flight']} executing={before['executing']} (polled, never "
        f"processed: {polled_unprocessed}); at the kill: held={status['in_flight']} "
        f"executing={status['executing']}; cut={st.cut} completed={st.completed} "
        f"duplicates={report.duplicates} lost={report.lost} "
        f"commit_violations={report.commit_violations}",
        flush=True,
    )
    assert polled_unprocessed > 0, "W1 must hold polled records it never ran"
    assert st.cut >= len(running), report.summary()
    assert report.processes[f"{w2.name}-{w2.pid}"].completed > 0


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_revoke_outlasting_grace_commits_only_finished_work(
    scenario_factory: Any, make_topic: Any, produce_keyed: Any, strategy: str
) -> None:
    """C11: W1's slow handlers (4 s) outlast the revoke grace (500 ms) when W2 joins:
    W1 commits what finished, abandons (cancels) the rest, and no commit ever passes
    an unfinished offset. Cancelled executions count as live for the overlap check
    (they end at the cancel), so the new owner must not start a key before W1 let go."""
    partitions = 4
    topic = make_topic(partitions=partitions)
    sc: Scenario = scenario_factory(topic, partitions)
    sc.record_produced(produce_keyed(topic, REVOKE_MESSAGES, keys=40))
    base = {"strategy": strategy, "latency_ms": "5-20", "grace_ms": 500}
    w1 = sc.spawn(
        slow_every=SLOW_EVERY,
        slow_rem=SLOW_REM,
        slow_ms=4_000,
        max_in_flight=REVOKE_IN_FLIGHT,
        **base,
    )
    wait_until(
        lambda: {p for p, _ in _slow_running(w1)} == set(range(partitions)),
        timeout=60,
        message="W1 in slow handlers on every partition",
    )
    w2 = sc.spawn(max_in_flight=100, **base)
    wait_until(lambda: _revoke_returned(w1), timeout=60, message="W1's revoke to return")
    sc.terminate(w1)  # W1 drains what it kept or got back (slow ones finish in the drain)
    sc.wait_committed(timeout=90)
    sc.finish()
    report = sc.report()
    _assert_sound(sc, report)
    st = report.processes[f"{w1.name}-{w1.pid}"]
    print(
        f"FIGURES revoke-past-grace strategy={strategy} W1 cancelled={st.cancelled} "
        f"completed={st.completed} duplicates={report.duplicates} overlaps={report.overlaps} "
        f"lost={report.lost} commit_violations={report.commit_violations}",
        flush=True,
    )
    assert st.cancelled >= 1, f"W1 abandoned nothing at the revoke: {report.summary()}"
    assert report.processes[f"{w2.name}-{w2.pid}"].completed > 0


@pytest.mark.parametrize("strategy", ["cooperative-sticky", "range"])
def test_rebalance_during_sigterm_drain_commits_nothing_unprocessed(
    scenario_factory: Any, make_topic: Any, produce_keyed: Any, strategy: str
) -> None:
    """C8/C12: W1 got SIGTERM and is draining a slow handler (3 s) when W2 leaves the
    group, so W1 (a member until it closes) is given W2's partitions, where new records
    then arrive. W1 must not run them (it is closing) and must never commit past them:
    they belong to the next owner, W3.

    Found by this test (cooperative-sticky): the drain loop fetched and discarded those
    records, and the revoke at close() advanced the commit to librdkafka's position,
    past all of them: 330 of 800 records lost. Fixed in ``Runtime._on_revoke`` (no
    position stepping while closing) and ``Runtime._on_assign`` (partitions assigned
    while closing are paused). Also found: an eager revoke during the drain waited 0 s and
    cut it short; a revoke while draining now waits like the drain does (bounded by
    ``max_revoke_grace_ms``, 5 s here, longer than the slow handler)."""
    partitions = 4
    topic = make_topic(partitions=partitions)
    sc: Scenario = scenario_factory(topic, partitions)
    base = {"strategy": strategy, "latency_ms": "5-20", "max_in_flight": 1000}
    w1 = sc.spawn(slow_every=SLOW_EVERY, slow_rem=SLOW_REM, slow_ms=3_000, **base)
    w2 = sc.spawn(**base)
    wait_until(lambda: _owns(w1) and _owns(w2), timeout=60, message="both own partitions")
    sc.record_produced(produce_keyed(topic, 400, keys=40))
    wait_until(lambda: _slow_running(w1), timeout=60, message="W1 in a slow handler")
    sc.terminate(w1)  # drains: the slow handler holds it ~3 s (shutdown timeout 10 s)
    sc.terminate(w2)
    assert sc.wait_exited(w2) == 0
    sc.note("W2 left while W1 drains")
    time.sleep(1.5)  # the group gives W2's partitions to W1, still draining
    sc.record_produced(produce_keyed(topic, 400, keys=40))
    assert sc.wait_exited(w1) == 0
    sc.spawn(**base)
    sc.wait_committed(timeout=60)
    sc.finish()
    report = sc.report()
    st = report.processes[f"{w1.name}-{w1.pid}"]
    print(
        f"FIGURES drain-rebalance strategy={strategy} lost={report.lost} "
        f"commit_violations={report.commit_violations} duplicates={report.duplicates} "
        f"W1 cancelled={st.cancelled}",
        flush=True,
    )
    _assert_sound(sc, report)
    assert st.cancelled == 0, f"the rebalance cut W1's drain: {st.cancelled} cancelled"
