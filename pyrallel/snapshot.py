"""The ``get_metrics()`` snapshot: the seed's signals, per consumer and per partition."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class PartitionMetrics:
    topic: str
    partition: int
    true_lag: int
    """Last fetched offset + 1 minus the next offset to commit."""
    gap_count: int
    """Finished ranges that cannot be committed yet because an earlier offset is pending."""
    blocking_offset: int | None
    """Lowest unfinished offset (holds the commit point); None when nothing is pending."""
    blocking_duration_sec: float
    """How long ``blocking_offset`` has held the commit point; 0.0 when none."""
    queued_count: int
    """Messages waiting behind a busy key/partition lane."""
    in_flight: int
    """Messages of this partition held: running, waiting, retrying or dead-lettering."""
    last_fetched_offset: int | None
    commit_offset: int | None
    """The offset the next commit will carry."""
    committed_offset: int | None
    """The last offset the broker confirmed."""
    high_watermark: int | None
    broker_lag: int | None
    """High watermark minus committed offset (classic consumer lag)."""
    epoch: int
    """Assignment epoch: grows each time this consumer is given the partition."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    group_id: str
    client_id: str
    total_in_flight: int
    max_in_flight: int
    is_paused: bool
    running: bool
    poll_age_sec: float
    """Seconds since the poll loop last called Kafka."""
    brokers_down_sec: float = 0.0
    """Seconds since librdkafka reported every broker unreachable; 0.0 while connected."""
    last_client_error: str | None = None
    partitions: Mapping[tuple[str, int], PartitionMetrics] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: partitions become a list sorted by topic and partition."""
        out = {
            k: getattr(self, k)
            for k in (
                "group_id",
                "client_id",
                "total_in_flight",
                "max_in_flight",
                "is_paused",
                "running",
                "poll_age_sec",
                "brokers_down_sec",
                "last_client_error",
            )
        }
        out["partitions"] = [asdict(p) for _, p in sorted(self.partitions.items())]
        out["counters"] = dict(self.counters)
        return out
