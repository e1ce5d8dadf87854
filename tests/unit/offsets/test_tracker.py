"""PartitionTracker against a brute-force model of fetched / done offsets."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyrallel.offsets.tracker import OffsetError, PartitionTracker


class Model:
    """Every fetched offset and whether it is done; answers by brute force."""

    def __init__(self) -> None:
        self.done: dict[int, bool] = {}  # insertion order == ascending offsets

    @property
    def last_fetched(self) -> int | None:
        return next(reversed(self.done)) if self.done else None

    @property
    def pending(self) -> list[int]:
        return [o for o, d in self.done.items() if not d]

    @property
    def commit_offset(self) -> int | None:
        pending = self.pending
        if pending:
            return pending[0]
        last = self.last_fetched
        return None if last is None else last + 1

    def done_above_commit(self) -> list[int]:
        commit = self.commit_offset
        return [o for o, d in self.done.items() if d and commit is not None and o > commit]

    @property
    def gap_count(self) -> int:
        """Maximal runs of done offsets above the commit point, split by pending ones."""
        commit = self.commit_offset
        runs, in_run = 0, False
        for offset, done in self.done.items():
            if commit is None or offset < commit:
                continue
            if done and not in_run:
                runs += 1
            in_run = done
        return runs


def check(tracker: PartitionTracker, model: Model) -> None:
    pending = model.pending
    commit = model.commit_offset
    assert tracker.commit_offset == commit
    assert tracker.last_fetched == model.last_fetched
    assert tracker.pending_count == len(pending)
    assert tracker.blocking_offset == (pending[0] if pending else None)
    last = model.last_fetched
    assert tracker.true_lag == (0 if last is None or commit is None else last + 1 - commit)
    assert tracker.gap_count == model.gap_count
    assert (tracker.blocking_since is None) == (not pending)

    ranges = tracker.completed_ranges()
    assert len(ranges) == model.gap_count
    prev_end = commit if commit is not None else -1
    for start, end in ranges:
        assert prev_end < start <= end  # ascending, disjoint, above the commit point
        assert last is not None and end <= last
        prev_end = end

    def inside(offset: int) -> bool:
        return any(start <= offset <= end for start, end in ranges)

    for offset in model.done_above_commit():
        assert inside(offset), (offset, ranges)
    for offset in pending:
        assert not inside(offset), (offset, ranges)
        assert tracker.is_pending(offset)
    for offset, done in model.done.items():
        if done:
            assert not tracker.is_pending(offset)
    # Each range holds at least one done fetched offset (no empty runs are kept).
    done_set = set(model.done_above_commit())
    for start, end in ranges:
        assert any(start <= o <= end for o in done_set)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_matches_model(data: st.DataObject) -> None:
    tracker, model = PartitionTracker(), Model()
    next_offset = data.draw(st.integers(0, 2**40), label="first")
    now = 0.0
    check(tracker, model)
    for _ in range(data.draw(st.integers(0, 80), label="steps")):
        now += 1.0
        pending = model.pending
        op = data.draw(st.sampled_from(["add", "add", "add_done", "complete", "complete"]))
        if op == "complete" and pending:
            offset = data.draw(st.sampled_from(pending))
            head = offset == pending[0]
            before = tracker.blocking_since
            assert tracker.complete(offset, now) is head
            model.done[offset] = True
            if head:
                assert tracker.blocking_since == (now if model.pending else None)
            else:
                assert tracker.blocking_since == before
        elif op in ("add", "add_done"):
            if model.done:
                next_offset += 1 + data.draw(st.sampled_from([0, 0, 0, 1, 2, 5, 1000]))
            if op == "add":
                was_empty = not pending
                before = tracker.blocking_since
                tracker.add(next_offset, now)
                assert tracker.blocking_since == (now if was_empty else before)
                model.done[next_offset] = False
            else:
                tracker.add_done(next_offset)
                model.done[next_offset] = True
        check(tracker, model)


def test_empty_tracker() -> None:
    t = PartitionTracker()
    assert t.commit_offset is None
    assert t.last_fetched is None
    assert t.blocking_offset is None
    assert t.blocking_since is None
    assert t.true_lag == 0
    assert t.gap_count == 0
    assert t.pending_count == 0
    assert t.completed_ranges() == []
    assert not t.is_pending(0)


def test_sparse_offsets_are_never_assumed() -> None:
    t = PartitionTracker()
    t.add(10, 0.0)
    t.add(15, 0.0)
    t.add(40, 0.0)
    assert t.commit_offset == 10
    assert t.true_lag == 31
    assert t.complete(15, 1.0) is False
    assert t.completed_ranges() == [(11, 39)]  # spans the holes 11-14 and 16-39
    assert t.complete(10, 2.0) is True
    assert t.commit_offset == 40  # not 11, not 16: the next fetched offset not done
    assert t.gap_count == 0
    assert t.complete(40, 3.0) is True
    assert t.commit_offset == 41
    assert t.true_lag == 0


def test_add_done_only_moves_commit_past_it() -> None:
    t = PartitionTracker()
    t.add_done(7)
    assert t.commit_offset == 8
    assert t.gap_count == 0
    t.add(9, 0.0)
    t.add_done(12)
    t.add_done(13)
    assert t.commit_offset == 9
    assert t.gap_count == 1
    assert t.completed_ranges() == [(10, 13)]


def test_offset_errors() -> None:
    t = PartitionTracker()
    t.add(5, 0.0)
    with pytest.raises(OffsetError):
        t.add(5, 0.0)  # duplicate
    with pytest.raises(OffsetError):
        t.add(3, 0.0)  # below the last fetched
    with pytest.raises(OffsetError):
        t.add_done(5)
    with pytest.raises(OffsetError):
        t.add_done(4)
    with pytest.raises(OffsetError):
        t.complete(6, 0.0)  # never fetched
    t.add_done(8)
    with pytest.raises(OffsetError):
        t.complete(8, 0.0)  # fetched already done
    t.complete(5, 0.0)
    with pytest.raises(OffsetError):
        t.complete(5, 0.0)  # twice
    assert issubclass(OffsetError, ValueError)
    # Errors leave the state untouched.
    assert t.commit_offset == 9
    assert t.pending_count == 0


def test_blocking_since() -> None:
    t = PartitionTracker()
    t.add(1, 10.0)
    assert t.blocking_since == 10.0
    t.add(2, 11.0)
    t.add(3, 12.0)
    assert t.blocking_since == 10.0  # still offset 1
    t.complete(2, 13.0)
    assert t.blocking_since == 10.0  # not the head
    t.complete(1, 14.0)
    assert t.blocking_offset == 3
    assert t.blocking_since == 14.0  # 3 became the head at 14
    t.complete(3, 15.0)
    assert t.blocking_since is None
    t.add_done(4)
    assert t.blocking_since is None
    t.add(6, 16.0)
    assert t.blocking_since == 16.0


def test_memory_is_bounded_by_pending_not_messages() -> None:
    n = 1_000_000
    t = PartitionTracker()
    t.add(0, 0.0)  # stuck head
    started = time.monotonic()
    for i in range(1, n + 1):
        offset = 2 * i  # sparse: odd offsets never exist
        t.add(offset, 0.0)
        t.complete(offset, 0.0)
        if i % 1000 == 0:
            assert len(t._pending) == 1
            assert len(t._run_after) == 1
            assert t.gap_count == 1
    elapsed = time.monotonic() - started
    assert t.pending_count == 1
    assert t.gap_count == 1
    assert t.commit_offset == 0
    assert t.true_lag == 2 * n + 1
    assert t.completed_ranges() == [(1, 2 * n)]
    assert elapsed < 30  # generous for slow CI; ~1 s locally
    assert t.complete(0, 1.0) is True
    assert t.commit_offset == 2 * n + 1
    assert t.gap_count == 0
