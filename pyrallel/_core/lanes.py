"""Ordering lanes: which fetched message may run now and which must wait.

A *lane* is a FIFO of messages that must not overlap: one per key (``ordering="key"``),
one per partition (``"partition"``), none at all (``"unordered"``). Lanes live inside a
partition's state, so key order is per topic-partition, as Kafka's is. Admission and
release are O(1): a busy lane with no waiters is stored as ``None``; a lane disappears as
soon as it is idle, so memory follows the messages held, not the keys ever seen.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from pyrallel.message import Message

_PARTITION_LANE = b"\x00pyrallel-partition-lane"


class Lanes:
    __slots__ = ("_lanes", "_mode", "queued")

    def __init__(self, ordering: str) -> None:
        self._mode = ordering
        self._lanes: dict[Hashable, deque[Message] | None] = {}
        self.queued = 0
        """Messages waiting behind a busy lane (the seed's ``queued_count``)."""

    def _lane_of(self, msg: Message) -> Hashable | None:
        mode = self._mode
        if mode == "key":
            # Null keys carry no ordering relation in Kafka: they run unordered.
            return msg.key
        if mode == "partition":
            return _PARTITION_LANE
        return None

    def admit(self, msg: Message) -> bool:
        """True when ``msg`` may run now; otherwise it is queued behind its lane."""
        lane = self._lane_of(msg)
        if lane is None:
            return True
        lanes = self._lanes
        if lane not in lanes:
            lanes[lane] = None
            return True
        waiting = lanes[lane]
        if waiting is None:
            lanes[lane] = deque((msg,))
        else:
            waiting.append(msg)
        self.queued += 1
        return False

    def release(self, msg: Message) -> Message | None:
        """``msg`` finished: free its lane and return the next message to run, if any."""
        lane = self._lane_of(msg)
        if lane is None:
            return None
        lanes = self._lanes
        waiting = lanes.get(lane)
        if waiting:
            nxt = waiting.popleft()
            self.queued -= 1
            if not waiting:
                lanes[lane] = None
            return nxt
        lanes.pop(lane, None)
        return None

    def drop_queued(self) -> list[Message]:
        """Forget every waiting message (revoke/stop); busy lanes stay busy."""
        dropped: list[Message] = []
        for lane, waiting in self._lanes.items():
            if waiting:
                dropped.extend(waiting)
                self._lanes[lane] = None
        self.queued = 0
        return dropped

    @property
    def busy_lanes(self) -> int:
        return len(self._lanes)
