"""One run of the Python peer ``pyrallel-consumer`` (PyPI), in its own Python 3.12 venv.

Run by the harness as ``<peer venv>/bin/python -m benchmarks.peer_worker key=value ...``
from the repository root; speaks :mod:`benchmarks.protocol` (the only project module it
imports: this interpreter has the peer's packages, not Pyrallel's). The peer's API, from
its 1.0.0 sources: ``PyrallelConsumer(KafkaConfig, worker, topic)``, ``await start()``,
``await stop()``; the worker gets a ``WorkItem`` whose ``payload`` is the record value.
``execution.mode=async`` awaits an ``async def`` worker; ``process`` runs a picklable sync
worker in forked processes (completions are then counted through a shared counter the
forked workers inherit).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sys
import time
from typing import Any

from benchmarks.protocol import READY, RESULT, Meter, cpu_work, emit, parse_args

# Created before the peer forks its workers, so every worker shares it.
_DONE = multiprocessing.get_context("fork").Value("q", 0)
_ITERATIONS = 0


def process_worker(item: Any) -> None:
    """The peer's process-mode worker: module-level and picklable."""
    cpu_work(_ITERATIONS)
    with _DONE.get_lock():
        _DONE.value += 1


async def _wait_ready(consumer: Any, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kafka = getattr(getattr(consumer, "_poller", None), "consumer", None)
        try:
            if kafka is not None and len(kafka.assignment()) >= expected:
                emit(READY, t=time.time())
                return
        except Exception:  # the client is still being built
            pass
        await asyncio.sleep(0.01)


async def run(spec: dict[str, str]) -> dict[str, Any]:
    global _ITERATIONS
    from pyrallel_consumer.config import KafkaConfig  # type: ignore[import-not-found]
    from pyrallel_consumer.consumer import PyrallelConsumer  # type: ignore[import-not-found]
    from pyrallel_consumer.dto import ExecutionMode, OrderingMode  # type: ignore[import-not-found]

    work = spec.get("work", "noop")
    sleep_s = float(spec.get("sleep_ms", "0")) / 1000
    _ITERATIONS = int(spec.get("cpu_iterations", "0"))
    start_timeout = float(spec.get("start_timeout", "60"))
    max_seconds = float(spec.get("max_seconds", "60"))
    mode = spec.get("engine", "async")
    meter = Meter(int(spec["messages"]), latency=work == "latency")

    config = KafkaConfig(BOOTSTRAP_SERVERS=spec["bootstrap"], CONSUMER_GROUP=spec["group"])
    config.dlq_enabled = False
    config.metrics.enabled = False
    pc = config.parallel_consumer
    pc.ordering_mode = {
        "key": OrderingMode.KEY_HASH,
        "partition": OrderingMode.PARTITION,
        "unordered": OrderingMode.UNORDERED,
    }[spec.get("ordering", "key")]
    pc.execution.max_in_flight = int(spec.get("max_in_flight", "1000"))
    pc.execution.max_retries = 1
    if mode == "process":
        pc.execution.mode = ExecutionMode.PROCESS
        pc.execution.process_config.process_count = int(spec.get("process_count", "2"))
        worker: Any = process_worker
    else:
        pc.execution.mode = ExecutionMode.ASYNC

        async def worker(item: Any) -> None:
            meter.begin()
            if work == "sleep":
                await asyncio.sleep(sleep_s)
            elif work == "cpu":
                cpu_work(_ITERATIONS)
            meter.end(item.payload if work == "latency" else None)

    consumer = PyrallelConsumer(config=config, worker=worker, topic=spec["topic"])
    await consumer.start()
    loop = asyncio.get_running_loop()
    extra: dict[str, Any] = {}
    try:
        await _wait_ready(consumer, int(spec.get("partitions", "1")), start_timeout)
        if mode == "process":
            error = await loop.run_in_executor(
                None, meter.wait_polling, lambda: _DONE.value, start_timeout, max_seconds
            )
        else:
            error = await loop.run_in_executor(None, meter.wait, start_timeout, max_seconds)
        if error:
            extra["error"] = error
    finally:
        try:
            await asyncio.wait_for(consumer.stop(), 20)
        except Exception as exc:  # the result still goes out, with the error
            extra.setdefault("error", f"stop: {type(exc).__name__}: {exc}")
    return meter.result(**extra)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = asyncio.run(run(parse_args(argv)))
    emit(RESULT, **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
