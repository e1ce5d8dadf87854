"""Picklable handlers for worker processes (process engines re-import them by name)."""

from __future__ import annotations

from typing import Any

from benchmarks.protocol import cpu_work


class CpuHandler:
    """``cpu_work(iterations)`` per message; a module-level class, so instances pickle."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, msg: Any) -> None:
        cpu_work(self.iterations)
