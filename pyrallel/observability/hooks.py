"""The telemetry interface the core calls.

The core calls these hooks at a few points (once per completion batch, per commit, per
rebalance); the default :class:`NullTelemetry` does nothing, so turning telemetry off
changes no behaviour. Gauges are not pushed through here: they are observed from the
consumer's snapshot at collection time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pyrallel.engines.base import SpanFactory
from pyrallel.message import Message

if TYPE_CHECKING:
    from pyrallel.snapshot import MetricsSnapshot

Completion = tuple[Message, BaseException | None, float]


class NullTelemetry:
    span_factory: SpanFactory | None = None

    def bind(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        """Register gauges that read ``snapshot()`` when collected."""

    def completed(self, batch: Sequence[Completion]) -> None:
        """Handler calls finished (successfully or not), in one batch."""

    def committed(self, succeeded: int, failed: int) -> None:
        """A commit request finished: partitions accepted / refused."""

    def rebalance(self, kind: str, partitions: Sequence[tuple[str, int]]) -> None:
        """``kind`` is ``assign``, ``revoke`` or ``lost``."""

    def partitions_removed(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Drop the series of partitions this consumer no longer owns."""

    def retry(self, msg: Message) -> None: ...

    def handler_error(self, msg: Message, error: BaseException) -> None: ...

    def failure_skipped(self, msg: Message) -> None: ...

    def dlq(self, msg: Message, outcome: str) -> None: ...

    def skipped_done(self, topic: str, count: int) -> None: ...

    def worker_restart(self, count: int) -> None: ...

    def close(self) -> None: ...


Telemetry = NullTelemetry
