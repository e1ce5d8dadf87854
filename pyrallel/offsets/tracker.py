"""Per-partition offset tracker: the next safe commit offset, gaps and the blocking offset.

The tracker only reasons about offsets it was handed. Kafka offsets are sparse
(transaction markers, compaction, retention, ``auto.offset.reset=latest``), so
``offset + 1`` may not exist and is never assumed: the next offset to commit is the
lowest fetched offset not yet done, or the last fetched offset + 1 when all are done.

Representation: the sorted list of *pending* offsets (fetched, not done) and, beside
each, whether at least one finished fetched offset follows it before the next pending
one. Every finished offset above the commit point sits in exactly one such run, so the
runs are the "gaps" of the seed's vocabulary and the completed ranges are derived from
the pending list. Memory is O(pending) = O(in-flight), never O(messages), even when one
head offset is stuck while millions behind it finish. ``gap_count``, ``commit_offset``,
``blocking_offset`` and ``true_lag`` are O(1) reads; ``complete`` is O(log n) to find
the offset plus a list delete over at most ``max_in_flight`` entries.
"""

from __future__ import annotations

from bisect import bisect_left


class OffsetError(ValueError):
    """An offset was handed to the tracker out of order, twice, or completed unknown."""


class PartitionTracker:
    __slots__ = ("_gaps", "_last_fetched", "_pending", "_run_after", "blocking_since")

    def __init__(self) -> None:
        self._pending: list[int] = []
        # _run_after[i]: a finished fetched offset lies between _pending[i] and the next
        # pending offset (or the last fetched offset, for the last entry).
        self._run_after: list[bool] = []
        self._gaps = 0
        self._last_fetched: int | None = None
        self.blocking_since: float | None = None
        """Monotonic time at which the current blocking offset became the lowest pending."""

    # -- feeding -----------------------------------------------------------------------

    def _check_new(self, offset: int) -> None:
        if self._last_fetched is not None and offset <= self._last_fetched:
            raise OffsetError(
                f"offset {offset} is not above the last fetched offset {self._last_fetched}"
            )

    def add(self, offset: int, now: float) -> None:
        """Record a fetched offset that still has to be processed."""
        self._check_new(offset)
        if not self._pending:
            self.blocking_since = now
        self._pending.append(offset)
        self._run_after.append(False)
        self._last_fetched = offset

    def add_done(self, offset: int) -> None:
        """Record a fetched offset that is already finished (e.g. known from metadata)."""
        self._check_new(offset)
        if self._pending and not self._run_after[-1]:
            self._run_after[-1] = True
            self._gaps += 1
        self._last_fetched = offset

    def complete(self, offset: int, now: float) -> bool:
        """Mark a pending offset done. Returns True when the commit offset moved."""
        pending = self._pending
        i = bisect_left(pending, offset)
        if i == len(pending) or pending[i] != offset:
            raise OffsetError(f"offset {offset} is not pending")
        runs = self._run_after
        if i == 0:
            # The run after the head now lies below the new commit point.
            self._gaps -= runs[0]
            del pending[0]
            del runs[0]
            self.blocking_since = now if pending else None
            return True
        # Merge: [run before] + this offset + [run after] become a single run.
        self._gaps += 1 - runs[i - 1] - runs[i]
        runs[i - 1] = True
        del pending[i]
        del runs[i]
        return False

    # -- reading -----------------------------------------------------------------------

    @property
    def commit_offset(self) -> int | None:
        """The offset to commit (Kafka's "next offset to read"); None before any fetch."""
        if self._pending:
            return self._pending[0]
        return None if self._last_fetched is None else self._last_fetched + 1

    @property
    def last_fetched(self) -> int | None:
        return self._last_fetched

    @property
    def gap_count(self) -> int:
        return self._gaps

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def blocking_offset(self) -> int | None:
        """The lowest unfinished offset, which holds the commit point; None when all done."""
        return self._pending[0] if self._pending else None

    @property
    def true_lag(self) -> int:
        """Last fetched offset + 1 minus the commit offset: work still inside the system."""
        if self._last_fetched is None:
            return 0
        return (
            self._last_fetched + 1 - (self._pending[0] if self._pending else self._last_fetched + 1)
        )

    def is_pending(self, offset: int) -> bool:
        i = bisect_left(self._pending, offset)
        return i < len(self._pending) and self._pending[i] == offset

    def completed_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ranges of finished offsets above the commit point, ascending.

        A range may include offsets that were never fetched (holes in the log); treating
        those as done is harmless because there is nothing to process there.
        """
        out: list[tuple[int, int]] = []
        pending, runs = self._pending, self._run_after
        last = len(pending) - 1
        for i, has_run in enumerate(runs):
            if has_run:
                end = pending[i + 1] - 1 if i < last else self._last_fetched
                assert end is not None
                out.append((pending[i] + 1, end))
        return out
