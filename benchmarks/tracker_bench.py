"""Scenario 4: :class:`pyrallel.offsets.tracker.PartitionTracker` on its own.

``completions`` offsets are completed in random order. ``window=W`` is the consumer's
case: at most ``W`` offsets are pending at once (``max_in_flight_messages``), each new
completion is a random one of the pending ones, and offset ``j + W`` is fetched as
``j`` completes. ``window=0`` fetches everything first, then completes all of it in a
random permutation: the worst case, ``completions`` pending at once.

Timing excludes drawing the random order. Reads (``gap_count``, ``blocking_offset``,
``true_lag``, ``commit_offset``, ``completed_ranges()``) are timed half-way through,
when the tracker holds about the most gaps (their time is not counted as completion
time). Memory is the tracemalloc peak of a separate pass (tracemalloc slows allocation,
so it is off while timing); with ``window=0`` the peak is reached once everything is
fetched, so that pass stops there.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from pyrallel.offsets.tracker import PartitionTracker


def completion_order(n: int, window: int, seed: int) -> list[int]:
    """The order in which offsets ``0..n-1`` complete (see the module docstring)."""
    rng = random.Random(seed)
    if window <= 0 or window >= n:
        order = list(range(n))
        rng.shuffle(order)
        return order
    pending = list(range(window))
    order = []
    nxt = window
    while pending:
        i = rng.randrange(len(pending))
        order.append(pending[i])
        if nxt < n:
            pending[i] = nxt
            nxt += 1
        else:
            pending[i] = pending[-1]
            pending.pop()
    return order


def _drive(
    tracker: PartitionTracker,
    order: list[int],
    window: int,
    at_half: Callable[[PartitionTracker], None] | None = None,
    *,
    fetch_only: bool = False,
) -> float:
    """Feed and complete ``order``; returns the seconds spent inside ``at_half``."""
    n = len(order)
    ahead = n if window <= 0 else window
    fetched = 0
    half = n // 2
    add, complete = tracker.add, tracker.complete
    if fetch_only:
        for offset in range(n):
            add(offset, 0.0)
        return 0.0
    aside = 0.0
    for j, offset in enumerate(order):
        limit = min(n, j + ahead)
        while fetched < limit:
            add(fetched, 0.0)
            fetched += 1
        complete(offset, 0.0)
        if j == half and at_half is not None:
            began = time.perf_counter()
            at_half(tracker)
            aside = time.perf_counter() - began
    return aside


def _read_costs(tracker: PartitionTracker, rounds: int = 100_000) -> dict[str, Any]:
    def per_read(read: Callable[[], object], count: int) -> float:
        began = time.perf_counter()
        for _ in range(count):
            read()
        return round((time.perf_counter() - began) / count * 1e9, 1)

    out: dict[str, Any] = {
        "pending": tracker.pending_count,
        "gaps": tracker.gap_count,
        "gap_count_ns": per_read(lambda: tracker.gap_count, rounds),
        "blocking_offset_ns": per_read(lambda: tracker.blocking_offset, rounds),
        "true_lag_ns": per_read(lambda: tracker.true_lag, rounds),
        "commit_offset_ns": per_read(lambda: tracker.commit_offset, rounds),
    }
    began = time.perf_counter()
    ranges = tracker.completed_ranges()
    out["completed_ranges_ms"] = round((time.perf_counter() - began) * 1000, 3)
    out["ranges"] = len(ranges)
    return out


def run_tracker(spec: dict[str, str]) -> dict[str, Any]:
    n = int(spec.get("completions", "1000000"))
    window = int(spec.get("window", "1000"))
    seed = int(spec.get("seed", "1"))
    order = completion_order(n, window, seed)
    reads: dict[str, Any] = {}

    def note_reads(tracker: PartitionTracker) -> None:
        reads.update(_read_costs(tracker))

    gc.collect()
    tracker = PartitionTracker()
    began = time.perf_counter()
    aside = _drive(tracker, order, window, note_reads)
    seconds = time.perf_counter() - began - aside
    correct = tracker.commit_offset == n and tracker.gap_count == 0 and not tracker.pending_count
    del tracker

    gc.collect()
    tracemalloc.start()
    _drive(PartitionTracker(), order, window, fetch_only=window <= 0 or window >= n)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "processed": n,
        "window_s": round(seconds, 4),
        "rate": round(n / seconds, 1),
        "us_per_completion": round(seconds / n * 1e6, 3),
        "peak_kib": round(peak / 1024, 1),
        "max_pending": n if window <= 0 or window >= n else window,
        "reads_at_half": reads,
        "correct": correct,
    }
