"""Ordering lanes: who runs now, who waits, and in which order."""

from __future__ import annotations

from pyrallel._core.lanes import Lanes
from pyrallel.message import Message


def msg(offset: int, key: bytes | None) -> Message:
    return Message("t", 0, offset, key, b"v")


def test_key_lanes_serialise_one_key_and_release_in_fifo_order() -> None:
    lanes = Lanes("key")
    a0, a1, a2, b0 = msg(0, b"a"), msg(1, b"a"), msg(2, b"a"), msg(3, b"b")
    assert lanes.admit(a0) is True
    assert lanes.admit(a1) is False
    assert lanes.admit(b0) is True  # another key is not held back
    assert lanes.admit(a2) is False
    assert lanes.queued == 2
    assert lanes.release(a0) is a1
    assert lanes.release(a1) is a2
    assert lanes.release(a2) is None
    assert lanes.queued == 0
    assert lanes.release(b0) is None
    assert lanes.busy_lanes == 0  # idle lanes are forgotten: memory follows held messages


def test_null_keys_run_unordered_in_key_mode() -> None:
    lanes = Lanes("key")
    assert all(lanes.admit(msg(i, None)) for i in range(5))
    assert lanes.queued == 0
    assert lanes.release(msg(0, None)) is None


def test_partition_mode_serialises_everything() -> None:
    lanes = Lanes("partition")
    first = msg(0, b"a")
    assert lanes.admit(first)
    assert not lanes.admit(msg(1, b"b"))
    assert not lanes.admit(msg(2, None))
    nxt = lanes.release(first)
    assert nxt is not None and nxt.offset == 1


def test_unordered_mode_never_queues() -> None:
    lanes = Lanes("unordered")
    assert all(lanes.admit(msg(i, b"same")) for i in range(10))
    assert lanes.queued == 0


def test_drop_queued_keeps_busy_lane_busy() -> None:
    lanes = Lanes("key")
    head = msg(0, b"a")
    lanes.admit(head)
    lanes.admit(msg(1, b"a"))
    lanes.admit(msg(2, b"a"))
    dropped = lanes.drop_queued()
    assert [m.offset for m in dropped] == [1, 2]
    assert lanes.queued == 0
    assert not lanes.admit(msg(3, b"a"))  # head still running: the key stays held
    assert lanes.release(head) is not None
