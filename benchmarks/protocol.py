"""What the harness and every worker process agree on (standard library only).

A benchmark run is one worker process: ``python -m benchmarks.worker key=value ...`` in
the project's venv, ``benchmarks/peer_worker.py key=value ...`` in the peer's venv, or
``java ... PcBench key=value ...``. A worker writes one JSON object per line to stdout:

``{"event": "ready", "t": <epoch s>}``
    every expected partition is assigned (the harness starts live producing on it);
``{"event": "mark", "name": ..., "t": <epoch s>}``
    a moment the harness wants to line up with its RSS samples;
``{"event": "result", "processed": N, "window_s": S, "rate": N/S, ...}``
    the last line. ``window_s`` runs from the first handler call to the last handler
    end, so process start and the group join are not part of the rate.

This module is imported by the peer's worker too, which runs another interpreter with
other packages: it must not import pyrallel or anything outside the standard library.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

RESULT = "result"
READY = "ready"
MARK = "mark"


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; anything else is an error."""
    out: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"worker: expected key=value, got {arg!r}")
        out[key] = value
    return out


def to_args(spec: dict[str, Any]) -> list[str]:
    """The inverse of :func:`parse_args` (booleans become 1/0)."""
    args = []
    for key, value in sorted(spec.items()):
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        args.append(f"{key}={value}")
    return args


_emit_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Write one protocol line to stdout (thread-safe, flushed)."""
    line = json.dumps({"event": event, **fields}, sort_keys=True)
    with _emit_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def percentiles_ms(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max in milliseconds (nearest-rank), plus the sample count."""
    if not latencies_ns:
        return {}
    ordered = sorted(latencies_ns)
    n = len(ordered)

    def rank(q: float) -> float:
        index = min(n - 1, max(0, math.ceil(q / 100 * n) - 1))
        return round(ordered[index] / 1e6, 3)

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "p999": rank(99.9),
        "max": round(ordered[-1] / 1e6, 3),
        "count": n,
    }


def cpu_work(iterations: int) -> int:
    """Pure-Python CPU work: the same loop in every contender (calibrated to ~1 ms)."""
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


class Meter:
    """Counts handler calls and their first start / last end (any thread).

    ``begin()`` at handler entry, ``end()`` at exit. ``next()`` on an
    ``itertools.count`` is atomic under the GIL, so thread-engine handlers need no lock.
    ``latency=True`` makes ``end(value)`` record now minus the produce time carried in
    the value (nanoseconds since the epoch, ASCII); values starting with ``w`` are
    warm-up records, counted but not recorded.
    """

    def __init__(self, target: int, *, latency: bool = False) -> None:
        self.target = target
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.started = threading.Event()
        self.done = threading.Event()
        self.latencies: list[int] = []
        self._latency = latency
        self._seq = itertools.count(1)

    def begin(self) -> None:
        if not self.first:
            self.first = time.perf_counter()
            self.started.set()

    def end(self, value: bytes | None = None) -> None:
        if self._latency and value is not None and value[:1] != b"w":
            self.latencies.append(time.time_ns() - int(value))
        n = next(self._seq)
        self.count = n
        self.last = time.perf_counter()
        if n >= self.target:
            self.done.set()

    def observe(self, processed: int) -> None:
        """For engines whose handlers run elsewhere: feed a polled completion count."""
        now = time.perf_counter()
        if processed > 0 and not self.first:
            self.first = now
            self.started.set()
        if processed > self.count:
            self.count = processed
            self.last = now
        if processed >= self.target:
            self.done.set()

    def wait(
        self, start_timeout: float, max_seconds: float, failed: Callable[[], bool] | None = None
    ) -> str | None:
        """Block until the target is reached, or ``max_seconds`` after the first call.

        Returns an error text when no message arrived within ``start_timeout`` or when
        ``failed()`` (checked every 0.1 s) says the consumer died.
        """
        began = time.perf_counter()
        while not self.started.wait(0.1):
            if failed is not None and failed():
                return "the consumer stopped before the first message"
            if time.perf_counter() - began > start_timeout:
                return f"no message within start_timeout={start_timeout:g} s"
        while not self.done.wait(
            min(0.1, max(0.0, self.first + max_seconds - time.perf_counter()))
        ):
            if time.perf_counter() - self.first >= max_seconds:
                break
            if failed is not None and failed():
                return "the consumer stopped during the run"
        return None

    def wait_polling(
        self,
        poll: Callable[[], int],
        start_timeout: float,
        max_seconds: float,
        failed: Callable[[], bool] | None = None,
        interval: float = 0.002,
    ) -> str | None:
        """Like :meth:`wait`, feeding :meth:`observe` with ``poll()`` every ``interval``."""
        began = time.perf_counter()
        while not self.done.is_set():
            self.observe(int(poll()))
            if failed is not None and failed():
                return "the consumer stopped during the run"
            now = time.perf_counter()
            if not self.first and now - began > start_timeout:
                return f"no message within start_timeout={start_timeout:g} s"
            if self.first and now - self.first >= max_seconds:
                break
            time.sleep(interval)
        return None

    def result(self, **extra: Any) -> dict[str, Any]:
        window = self.last - self.first if self.first and self.last > self.first else 0.0
        out: dict[str, Any] = {
            "processed": self.count,
            "window_s": round(window, 6),
            "rate": round(self.count / window, 1) if window > 0 else 0.0,
            "reached_target": self.count >= self.target,
        }
        if self._latency:
            out["latency_ms"] = percentiles_ms(self.latencies)
        out.update(extra)
        return out
