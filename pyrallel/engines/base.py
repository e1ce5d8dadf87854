"""The engine contract.

The consumer's poll thread calls :meth:`ExecutionEngine.submit` with messages that may
run now; the engine runs the handler and reports each outcome through the ``deliver``
callback it was started with, from whatever thread it likes. ``deliver`` is cheap and
thread-safe; the engine never touches offsets, lanes or Kafka.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from pyrallel.message import Message

Deliver = Callable[[Message, BaseException | None, float], None]
"""``deliver(message, error_or_None, duration_seconds)``."""

SpanFactory = Callable[[Message], AbstractContextManager[Any]]
"""Opens the per-message processing span around a handler call (see observability)."""


class ExecutionEngine(ABC):
    name: str = "engine"
    restarts: int = 0
    """Workers replaced after dying or timing out (process engine)."""

    @abstractmethod
    def start(self, deliver: Deliver) -> None:
        """Begin accepting work; outcomes go to ``deliver``."""

    @abstractmethod
    def submit(self, messages: list[Message]) -> None:
        """Run the handler for each message (called from the poll thread)."""

    def abandon(self, topic: str, partition: int) -> None:  # noqa: B027 - optional hook
        """Best effort: stop running work of a revoked partition; its results are ignored."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Stop: work still running after ``timeout`` seconds is cancelled or left behind."""
