"""Execution audit: did every offset run, once, in key order, without overlap?

Handlers call :meth:`Audit.begin` and :meth:`Audit.end` around their work (the demo and
the tests do); :meth:`Audit.report` compares that record with what was produced.
Thread-safe, so it serves the async and thread engines alike.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field


@dataclass
class AuditReport:
    expected: int
    processed: int
    lost: int
    duplicates: int
    ordering_violations: int
    overlaps: int
    lost_examples: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.ordering_violations == 0 and self.overlaps == 0


class Audit:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: Counter[tuple[str, int, int]] = Counter()
        self._running: set[tuple[str, int, Hashable]] = set()
        self._last_offset: dict[tuple[str, int, Hashable], int] = {}
        self.calls = 0
        self.first_begin: float | None = None
        self.last_end: float | None = None
        self.order_violations = 0
        self.overlaps = 0

    def begin(self, topic: str, partition: int, offset: int, key: Hashable) -> None:
        lane = (topic, partition, key)
        with self._lock:
            self.calls += 1
            if self.first_begin is None:
                self.first_begin = time.monotonic()
            coord = (topic, partition, offset)
            if key is not None:
                if lane in self._running:
                    self.overlaps += 1
                self._running.add(lane)
                last = self._last_offset.get(lane)
                # A re-run of an earlier offset (redelivery after a crash) is a duplicate,
                # not an ordering violation; going backwards *within* first runs is.
                if last is not None and offset < last and self._runs[coord] == 0:
                    self.order_violations += 1
                if last is None or offset > last:
                    self._last_offset[lane] = offset

    def end(self, topic: str, partition: int, offset: int, key: Hashable) -> None:
        with self._lock:
            self.last_end = time.monotonic()
            self._runs[(topic, partition, offset)] += 1
            if key is not None:
                self._running.discard((topic, partition, key))

    def abort(self, topic: str, partition: int, offset: int, key: Hashable) -> None:
        """The call was cancelled (revoke/stop): the lane is free, nothing finished."""
        with self._lock:
            if key is not None:
                self._running.discard((topic, partition, key))

    @property
    def processed(self) -> int:
        with self._lock:
            return len(self._runs)

    def report(self, produced: Mapping[tuple[str, int], list[int]]) -> AuditReport:
        """``produced`` maps (topic, partition) to the data offsets written there."""
        with self._lock:
            expected = {(t, p, o) for (t, p), offsets in produced.items() for o in offsets}
            seen = set(self._runs)
            lost = sorted(expected - seen)
            duplicates = sum(n - 1 for n in self._runs.values() if n > 1)
            return AuditReport(
                expected=len(expected),
                processed=len(seen & expected),
                lost=len(lost),
                duplicates=duplicates,
                ordering_violations=self.order_violations,
                overlaps=self.overlaps,
                lost_examples=lost[:10],
            )
