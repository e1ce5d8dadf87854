"""Failure handling: retries with backoff, the failure policy, dead-letter writes.

A failed call keeps its key's lane busy: a retry is a timer on the poll thread, so other
keys and the poll loop never wait for it. After the last attempt ``on_failure`` decides:
``stop`` (the offset stays pending forever, so no commit passes it), ``skip`` (done,
counted, logged) or ``dlq`` (done only once the dead-letter write is confirmed).
"""

from __future__ import annotations

import heapq
import logging
import random
import time

from pyrallel._core.base import DLQ_RETRY, RETRY, RuntimeState
from pyrallel._core.state import PartitionState
from pyrallel.errors import HandlerError
from pyrallel.message import Message

log = logging.getLogger("pyrallel._core.poller")


class Failures(RuntimeState):
    def _failed(
        self,
        st: PartitionState,
        msg: Message,
        error: BaseException,
        now: float,
        ready: list[Message],
    ) -> None:
        cfg = self.config
        self.counters["failed"] += 1
        self._telemetry.handler_error(msg, error)
        coord = (msg.topic, msg.partition, msg.offset)
        self._first_failure.setdefault(coord, time.time())
        self._last_error[coord] = error
        if msg.attempt <= cfg.max_retries:
            delay = self._backoff(msg.attempt)
            log.info(
                "retrying in %.3fs topic=%s partition=%s offset=%s attempt=%s error=%s",
                delay,
                msg.topic,
                msg.partition,
                msg.offset,
                msg.attempt,
                type(error).__name__,
            )
            msg.attempt += 1
            self.counters["retried"] += 1
            self._telemetry.retry(msg)
            heapq.heappush(self._timers, (now + delay, next(self._seq), RETRY, msg))
            return
        policy = cfg.on_failure
        if policy == "skip":
            log.warning(
                "skipping failed message topic=%s partition=%s offset=%s attempts=%s error=%r",
                msg.topic,
                msg.partition,
                msg.offset,
                msg.attempt,
                error,
            )
            self.counters["skipped_failures"] += 1
            self._telemetry.failure_skipped(msg)
            self._finish(st, msg, now, ready)
        elif policy == "dlq":
            assert self._dlq is not None
            self._dlq.send(msg, error, msg.attempt, self._first_failure[coord])
        else:
            # The offset stays pending, so no commit ever passes it; it no longer counts
            # as in flight, so the shutdown drain does not wait for it.
            st.held -= 1
            self._in_flight -= 1
            if self.error is None:
                self.error = HandlerError(msg.topic, msg.partition, msg.offset, error, msg.attempt)
                self.error.__cause__ = error
                log.error("%s; stopping the consumer (on_failure='stop')", self.error)
            self._stop.set()

    def _backoff(self, attempt: int) -> float:
        cfg = self.config
        base = min(cfg.retry_backoff_max_ms, cfg.retry_backoff_ms * (2 ** (attempt - 1)))
        return float(base) * random.uniform(0.8, 1.2) / 1000

    def _fire_timers(self, now: float) -> None:
        ready: list[Message] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, kind, msg = heapq.heappop(self._timers)
                st = self._parts.get((msg.topic, msg.partition))
                if st is None or st.epoch != msg._epoch:
                    continue
                if kind == RETRY:
                    ready.append(msg)
                else:
                    coord = (msg.topic, msg.partition, msg.offset)
                    assert self._dlq is not None
                    self._dlq.send(
                        msg, self._last_error[coord], msg.attempt, self._first_failure[coord]
                    )
        if ready and not self._closing:
            self._engine.submit(ready)

    def _dlq_delivered(self, msg: Message) -> None:
        with self._lock:
            st = self._parts.get((msg.topic, msg.partition))
            self.counters["dead_lettered"] += 1
            self._telemetry.dlq(msg, "delivered")
            if st is None or st.epoch != msg._epoch:
                return
            ready: list[Message] = []
            self._finish(st, msg, time.monotonic(), ready)
        if ready and not self._closing:
            self._engine.submit(ready)

    def _dlq_failed(self, msg: Message, reason: str) -> None:
        with self._lock:
            self.counters["dlq_failures"] += 1
            self._telemetry.dlq(msg, "failed")
            coord = (msg.topic, msg.partition, msg.offset)
            tries = self._dlq_tries[coord] = self._dlq_tries.get(coord, 0) + 1
            # The first failure and every 10th are warnings; a long outage must not flood.
            level = logging.WARNING if tries == 1 or tries % 10 == 0 else logging.DEBUG
            log.log(
                level,
                "dead-letter write failed (try %d), offset stays uncommitted "
                "topic=%s partition=%s offset=%s: %s",
                tries,
                msg.topic,
                msg.partition,
                msg.offset,
                reason,
            )
            delay = self._backoff(tries)
            heapq.heappush(
                self._timers, (time.monotonic() + delay, next(self._seq), DLQ_RETRY, msg)
            )
