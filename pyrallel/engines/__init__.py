"""Execution engines: where handlers run (asyncio loop, threads, worker processes)."""

from pyrallel.engines.base import Deliver, ExecutionEngine, SpanFactory

__all__ = ["Deliver", "ExecutionEngine", "SpanFactory"]
