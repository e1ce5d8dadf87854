"""What the consumer knows about one assigned partition (owned by the poll thread)."""

from __future__ import annotations

from pyrallel._core.lanes import Lanes
from pyrallel.offsets.metadata import DoneRanges
from pyrallel.offsets.tracker import PartitionTracker


class PartitionState:
    __slots__ = (
        "admission_blocked",
        "commit_sent",
        "committed",
        "done_ranges",
        "epoch",
        "held",
        "high_watermark",
        "lanes",
        "metadata_sent",
        "next_budget_check",
        "over_share",
        "partition",
        "revoking",
        "topic",
        "tracker",
    )

    def __init__(self, topic: str, partition: int, epoch: int, ordering: str) -> None:
        self.topic = topic
        self.partition = partition
        self.epoch = epoch
        """Grows with every assignment; completions carrying an older epoch are dropped."""
        self.tracker = PartitionTracker()
        self.lanes = Lanes(ordering)
        self.held = 0
        """Messages of this partition counted in in-flight (running, queued, retrying, DLQ)."""
        self.revoking = False
        self.admission_blocked = False
        """True while the commit metadata would not fit its budget: fetching is paused."""
        self.done_ranges: DoneRanges | None = None
        """Offsets an earlier owner finished (from commit metadata), skipped when fetched."""
        self.committed: int | None = None
        self.commit_sent: int | None = None
        self.metadata_sent: str | None = None
        self.high_watermark: int | None = None
        self.next_budget_check = 0.0
        self.over_share = False
        """True while this partition holds more than its share of a contended cap."""

    @property
    def held_back(self) -> bool:
        """Fetching of this partition alone is paused (metadata budget or fair share)."""
        return self.admission_blocked or self.over_share

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.partition)
