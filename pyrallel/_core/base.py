"""State the poll loop's parts share, declared once so each part type-checks alone.

:class:`~pyrallel._core.poller.Runtime` is assembled from mixins — commits
(:mod:`.committer`), rebalance callbacks (:mod:`.rebalance`) and failure handling
(:mod:`.failures`) — that all run on the poll thread and work on this state.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

from pyrallel._core.deadletter import DeadLetterWriter
from pyrallel._core.state import PartitionState
from pyrallel.config import ConsumerConfig
from pyrallel.engines.base import ExecutionEngine
from pyrallel.message import Message
from pyrallel.observability.hooks import NullTelemetry
from pyrallel.offsets import metadata as commit_metadata

METADATA_BUDGET = commit_metadata.DEFAULT_MAX_BYTES  # broker's offset.metadata.max.bytes
RETRY = 0  # timer kinds: run the handler again
DLQ_RETRY = 1  # write the dead-letter copy again

Key = tuple[str, int]
Coord = tuple[str, int, int]


class RuntimeState:
    config: ConsumerConfig
    counters: dict[str, int]
    error: BaseException | None
    _engine: ExecutionEngine
    _telemetry: NullTelemetry
    _consumer: Any
    _lock: threading.RLock
    _parts: dict[Key, PartitionState]
    _epochs: itertools.count[int]
    _wake: threading.Event
    _stop: threading.Event
    _in_flight: int
    _closing: bool
    _drain_deadline: float
    _kafka_paused: bool
    _cooperative: bool
    _next_commit: float
    _seq: itertools.count[int]
    _timers: list[tuple[float, int, int, Message]]
    _first_failure: dict[Coord, float]
    _last_error: dict[Coord, BaseException]
    _dlq_tries: dict[Coord, int]
    _metadata_warned: bool
    _dlq: DeadLetterWriter | None

    # Provided by the parts (see Runtime); declared so each part can call the others.
    def _finish(self, st: PartitionState, msg: Message, now: float, ready: list[Message]) -> None:
        raise NotImplementedError

    def _drain_completions(self) -> None:
        raise NotImplementedError

    def _commit(self, states: Sequence[PartitionState], *, asynchronous: bool) -> None:
        raise NotImplementedError

    def _advance_positions(self, states: Sequence[PartitionState]) -> None:
        raise NotImplementedError

    def _apply_hold(self, st: PartitionState, before: bool) -> None:
        raise NotImplementedError
