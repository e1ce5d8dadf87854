"""A consumer worker *process* that records every handler execution for the audit.

Run as::

    python -m tests.support.audit_worker --bootstrap 127.0.0.1:9092 --group g --topic t \
        --out DIR --name W1 --strategy range --latency-ms 5-20 --max-in-flight 100

It runs ``ParallelConsumer(...).run()`` (SIGTERM/SIGINT: drain, commit, close) with an
async handler that sleeps a random latency. Files, all in ``--out``, named after the
worker and its pid so a restarted worker never appends to a dead one's file:

``<name>-<pid>.audit``
    Append-only execution record, one tab-separated line per event, each written with
    a single ``os.write`` on an ``O_APPEND`` descriptor: there is no user-space buffer,
    so a ``kill -9`` loses nothing that was written, and a line is never interleaved
    with another. Lines (``ns`` is :func:`time.time_ns`, comparable across processes on
    one machine)::

        H  name pid ns                                   process started
        B  seq topic partition offset keyhex ns          execution seq begins
        E  seq ns                                        ... ended (handler returned)
        C  seq ns                                        ... cancelled (revoke past the
                                                         grace, or stop): not done
        R  kind topic:partition,... ns                   rebalance hook (assign/revoke/lost)
        X  ns code                                       clean exit

    A ``B`` without ``E``/``C`` in a file without ``X`` is an execution cut by a kill.
    ``keyhex`` is the key in hex, ``-`` for a null key.

``<name>-<pid>.status``
    A JSON line every ``--status-interval-ms`` (and one at exit): in-flight (held by
    the consumer: running + queued), executing (handler calls running now), counters
    (``skipped_done`` among them) and per-partition commit state.

``<name>-<pid>.log``
    Python logging of the worker and of Pyrallel (INFO).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyrallel import ConsumerConfig, Message, ParallelConsumer
from pyrallel.observability.hooks import NullTelemetry

log = logging.getLogger("audit_worker")


class AppendFile:
    """An ``O_APPEND`` file written one whole line per ``os.write`` (atomic, unbuffered)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, line: str) -> None:
        data = line.encode()
        written = os.write(self._fd, data)
        if written != len(data):  # never for a small regular-file write; be loud if so
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")

    def close(self) -> None:
        os.close(self._fd)


class AuditTelemetry(NullTelemetry):
    """Telemetry that only records rebalance hooks into the audit file (a reader)."""

    def __init__(self, audit: AppendFile) -> None:
        self._audit = audit

    def rebalance(self, kind: str, partitions: Sequence[tuple[str, int]]) -> None:
        parts = ",".join(f"{t}:{p}" for t, p in partitions) or "-"
        self._audit.write(f"R\t{kind}\t{parts}\t{time.time_ns()}\n")


def parse_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition("-")
    low = float(lo)
    high = float(hi) if hi else low
    if high < low or low < 0:
        raise argparse.ArgumentTypeError(f"bad range {text!r}: want LO-HI with 0 <= LO <= HI")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.support.audit_worker")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--topic", required=True, action="append", help="repeat for more topics")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--strategy", default="range", choices=["range", "cooperative-sticky"])
    p.add_argument("--latency-ms", default="5-20", type=parse_range, help="LO-HI, uniform")
    p.add_argument("--max-in-flight", default=100, type=int)
    p.add_argument("--ordering", default="key", choices=["key", "partition", "unordered"])
    p.add_argument("--grace-ms", default=5000, type=int, help="max_revoke_grace_ms")
    p.add_argument("--commit-interval-ms", default=100, type=int)
    p.add_argument("--shutdown-timeout-ms", default=10_000, type=int)
    p.add_argument("--session-timeout-ms", default=6000, type=int)
    p.add_argument("--no-metadata", action="store_true", help="commit_metadata=False")
    p.add_argument("--status-interval-ms", default=100, type=int)
    p.add_argument(
        "--slow-every",
        default=0,
        type=int,
        help="offsets with offset %% N == --slow-rem sleep --slow-ms instead (0: none)",
    )
    p.add_argument("--slow-rem", default=0, type=int)
    p.add_argument("--slow-ms", default=0, type=int)
    p.add_argument("--seed", default=None, type=int)
    return p


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pid = os.getpid()
        stem = f"{args.name}-{self.pid}"
        args.out.mkdir(parents=True, exist_ok=True)
        self.audit = AppendFile(args.out / f"{stem}.audit")
        self.status = AppendFile(args.out / f"{stem}.status")
        self.executing = 0
        self._seq = itertools.count(1)
        self._rng = random.Random(args.seed)
        self._stop_status = threading.Event()
        self.audit.write(f"H\t{args.name}\t{self.pid}\t{time.time_ns()}\n")
        kafka: dict[str, Any] = {
            "partition.assignment.strategy": args.strategy,
            "session.timeout.ms": args.session_timeout_ms,
            "heartbeat.interval.ms": max(100, args.session_timeout_ms // 6),
        }
        self.config = ConsumerConfig(
            bootstrap_servers=args.bootstrap,
            group_id=args.group,
            topics=list(args.topic),
            ordering=args.ordering,
            max_in_flight_messages=args.max_in_flight,
            max_revoke_grace_ms=args.grace_ms,
            commit_interval_ms=args.commit_interval_ms,
            shutdown_timeout_ms=args.shutdown_timeout_ms,
            commit_metadata=not args.no_metadata,
            client_id=f"{args.name}-{self.pid}",
            kafka=kafka,
        )
        self.consumer = ParallelConsumer(
            self.config, self.handle, telemetry=AuditTelemetry(self.audit)
        )

    def _latency(self, msg: Message) -> float:
        a = self.args
        if a.slow_every and msg.offset % a.slow_every == a.slow_rem:
            return float(a.slow_ms) / 1000
        lo, hi = a.latency_ms
        return self._rng.uniform(lo, hi) / 1000

    async def handle(self, msg: Message) -> None:
        seq = next(self._seq)
        key = "-" if msg.key is None else msg.key.hex()
        delay = self._latency(msg)
        self.audit.write(
            f"B\t{seq}\t{msg.topic}\t{msg.partition}\t{msg.offset}\t{key}\t{time.time_ns()}\n"
        )
        self.executing += 1
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.audit.write(f"C\t{seq}\t{time.time_ns()}\n")
            raise
        finally:
            self.executing -= 1
        self.audit.write(f"E\t{seq}\t{time.time_ns()}\n")

    def status_line(self) -> str:
        snap = self.consumer.get_metrics()
        parts = {
            f"{t}:{p}": {
                "committed": m.committed_offset,
                "commit_offset": m.commit_offset,
                "in_flight": m.in_flight,
                "gaps": m.gap_count,
            }
            for (t, p), m in sorted(snap.partitions.items())
        }
        return (
            json.dumps(
                {
                    "ns": time.time_ns(),
                    "name": self.args.name,
                    "pid": self.pid,
                    "running": snap.running,
                    "in_flight": snap.total_in_flight,
                    "executing": self.executing,
                    "max_in_flight": snap.max_in_flight,
                    "paused": snap.is_paused,
                    "counters": dict(snap.counters),
                    "partitions": parts,
                },
                separators=(",", ":"),
            )
            + "\n"
        )

    def _status_loop(self) -> None:
        interval = self.args.status_interval_ms / 1000
        while not self._stop_status.wait(interval):
            try:
                self.status.write(self.status_line())
            except Exception:  # a status line must never take the worker down
                log.exception("status line failed")

    def run(self) -> int:
        thread = threading.Thread(target=self._status_loop, name="audit-status", daemon=True)
        thread.start()
        code = 0
        try:
            self.consumer.run()
        except BaseException:
            log.exception("consumer stopped with an error")
            code = 1
        finally:
            self._stop_status.set()
            thread.join(2)
            self.status.write(self.status_line())
            self.audit.write(f"X\t{time.time_ns()}\t{code}\n")
        return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        filename=str(args.out / f"{args.name}-{os.getpid()}.log"),
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )
    worker = Worker(args)
    log.info("worker %s pid %s starting: %s", args.name, worker.pid, vars(args))
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
