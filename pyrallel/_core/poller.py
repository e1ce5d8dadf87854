"""The poll loop: the one thread that owns the ``confluent_kafka.Consumer``.

Everything that touches the consumer (poll, pause/resume, commit, rebalance callbacks)
happens on this thread. Engines report outcomes through :meth:`Runtime.deliver` (a
deque append, safe from any thread); the loop drains them, updates the offset trackers
and lanes, dispatches what became runnable and commits. The loop keeps calling Kafka
while paused, so slow handlers never trip ``max.poll.interval.ms``.

The loop, intake, outcomes, backpressure and shutdown live here; commits, rebalance
callbacks and failure handling are mixins in :mod:`.committer`, :mod:`.rebalance` and
:mod:`.failures`, over the shared state declared in :mod:`.base`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pyrallel._core.committer import Commits
from pyrallel._core.deadletter import DeadLetterWriter, producer_settings
from pyrallel._core.failures import Failures
from pyrallel._core.rebalance import Rebalance
from pyrallel._core.state import PartitionState
from pyrallel.config import ConsumerConfig
from pyrallel.engines.base import ExecutionEngine
from pyrallel.errors import KafkaClientError
from pyrallel.message import Message
from pyrallel.observability.hooks import Completion, NullTelemetry
from pyrallel.offsets.tracker import OffsetError
from pyrallel.snapshot import MetricsSnapshot, PartitionMetrics

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[dict[str, Any]], Any]

_IDLE_POLL_S = 0.05  # nothing in flight: block this long in consume()
_BUSY_WAIT_S = 0.002  # work in flight, nothing fetched: wait this long for a completion
_PAUSE_AFTER_S = 0.5  # at the in-flight cap this long: pause partitions in librdkafka
_ERROR_LOG_EVERY_S = 30.0  # one warning per kind of client error per this many seconds

COUNTERS: tuple[str, ...] = (
    "processed",  # handler calls that succeeded
    "failed",  # handler calls that raised or timed out
    "retried",
    "skipped_failures",  # on_failure="skip"
    "dead_lettered",  # DLQ writes confirmed
    "dlq_failures",  # DLQ writes refused (retried)
    "skipped_done",  # fetched offsets an earlier owner had finished (commit metadata)
    "commits",  # partitions the broker confirmed
    "commit_failures",
    "pauses",  # backpressure paused fetching in librdkafka
    "resumes",
    "admission_blocks",  # commit metadata near its budget: one partition paused
    "admission_unblocks",
    "share_pauses",  # a partition paused for holding more than its share of the cap
    "worker_restarts",
    "assigned",
    "revoked",
    "lost",
    "fenced",  # results of an earlier assignment, dropped
)
"""The keys of ``MetricsSnapshot.counters`` (cumulative since start)."""


class Runtime(Commits, Rebalance, Failures):
    """Owns the consumer and all per-partition state; see the module docstring."""

    def __init__(
        self,
        config: ConsumerConfig,
        engine: ExecutionEngine,
        telemetry: NullTelemetry | None = None,
        consumer_factory: ConsumerFactory = Consumer,
        dlq_settings: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self._engine = engine
        self._telemetry = telemetry or NullTelemetry()
        self._consumer_factory = consumer_factory
        self._consumer: Any = None
        self._lock = threading.RLock()
        self._parts: dict[tuple[str, int], PartitionState] = {}
        self._epochs = itertools.count(1)
        self._completions: deque[Completion] = deque()
        self._wake = threading.Event()
        self._in_flight = 0
        self._max = config.max_in_flight_messages
        self._resume_at = self._max - max(1, self._max // 4)
        self._paused = False  # backpressure engaged (the seed's is_paused)
        self._kafka_paused = False  # partitions actually paused in librdkafka
        self._saturated_since: float | None = None
        self._stop = threading.Event()
        self._drain_timeout = config.shutdown_timeout_ms / 1000
        self._closing = False
        self._drain_deadline = 0.0  # while the shutdown drain runs: when it gives up
        self.running = False
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.last_poll = time.monotonic()
        self.brokers_down_since: float | None = None
        self.last_client_error: str | None = None
        self._error_log: dict[int, tuple[float, int]] = {}
        self._next_broker_probe = 0.0
        self._next_commit = 0.0
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, int, Message]] = []
        self._first_failure: dict[tuple[str, int, int], float] = {}
        self._last_error: dict[tuple[str, int, int], BaseException] = {}
        self._dlq_tries: dict[tuple[str, int, int], int] = {}
        self._metadata_warned = False
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        strategy = str(config.kafka.get("partition.assignment.strategy", ""))
        self._cooperative = (
            "cooperative" in strategy or config.kafka.get("group.protocol") == "consumer"
        )
        self._guard_metadata = config.commit_metadata
        # In partition order only one message per partition can run, so a window filled
        # by one partition serialises everything; in key order a pause costs more (the
        # prefetched records are dropped) than the skew it would fix, measured.
        self._balance = config.ordering == "partition"
        self._dlq: DeadLetterWriter | None = None
        if config.on_failure == "dlq":
            self._dlq = DeadLetterWriter(
                producer_settings(
                    config.bootstrap_servers, config.client_id, config.kafka, dlq_settings or {}
                ),
                config.dlq_topic_for,
                self._dlq_delivered,
                self._dlq_failed,
            )

    # -- thread-safe entry points ---------------------------------------------------------

    def deliver(self, msg: Message, error: BaseException | None, duration: float) -> None:
        """Called by engines from any thread when a handler call ends."""
        self._completions.append((msg, error, duration))
        if not self._wake.is_set():
            self._wake.set()

    def request_stop(self, drain_timeout: float | None = None) -> None:
        if drain_timeout is not None:
            self._drain_timeout = drain_timeout
        self._stop.set()
        self._wake.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def snapshot(self) -> MetricsSnapshot:
        now = time.monotonic()
        with self._lock:
            parts = {}
            for key, st in self._parts.items():
                tr = st.tracker
                since = tr.blocking_since
                blocking = tr.blocking_offset
                committed = st.committed
                hwm = st.high_watermark
                parts[key] = PartitionMetrics(
                    topic=st.topic,
                    partition=st.partition,
                    true_lag=tr.true_lag,
                    gap_count=tr.gap_count,
                    blocking_offset=blocking,
                    blocking_duration_sec=(now - since)
                    if (blocking is not None and since is not None)
                    else 0.0,
                    queued_count=st.lanes.queued,
                    in_flight=st.held,
                    last_fetched_offset=tr.last_fetched,
                    commit_offset=tr.commit_offset,
                    committed_offset=committed,
                    high_watermark=hwm,
                    broker_lag=(hwm - committed)
                    if (hwm is not None and committed is not None)
                    else None,
                    epoch=st.epoch,
                )
            return MetricsSnapshot(
                group_id=self.config.group_id,
                client_id=self.config.client_id,
                total_in_flight=self._in_flight,
                max_in_flight=self._max,
                is_paused=self._paused,
                running=self.running,
                poll_age_sec=now - self.last_poll,
                brokers_down_sec=0.0
                if self.brokers_down_since is None
                else now - self.brokers_down_since,
                last_client_error=self.last_client_error,
                partitions=parts,
                counters=dict(self.counters),
            )

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.config
        try:
            settings = cfg.consumer_settings()
            settings["on_commit"] = self._on_commit
            settings.setdefault("error_cb", self._on_client_error)
            self._consumer = self._consumer_factory(settings)
            self._consumer.subscribe(
                list(cfg.topics),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self._engine.start(self.deliver)
            self.running = True
            log.info(
                "consumer started group=%s client=%s topics=%s",
                cfg.group_id,
                cfg.client_id,
                list(cfg.topics),
            )
            while not self._stop.is_set():
                self._step()
        except BaseException as exc:
            log.exception("poll loop failed group=%s client=%s", cfg.group_id, cfg.client_id)
            if self.error is None:
                self.error = exc
        finally:
            try:
                self._shutdown()
            finally:
                self.running = False
                self.finished.set()

    def _step(self) -> None:
        consumer = self._consumer
        if self._completions:
            self._drain_completions()
        now = time.monotonic()
        if self._timers and self._timers[0][0] <= now:
            self._fire_timers(now)
        if self._dlq is not None:
            self._dlq.poll()
        if now >= self._next_commit:
            self._periodic(now)
        if self.brokers_down_since is not None:
            self._check_brokers_back(now)
        if self._guard_metadata:
            self._guard_metadata_budget(now)
        if self._balance and len(self._parts) > 1:
            self._balance_partitions()
        free = self._max - self._in_flight
        self._apply_backpressure(free, now)
        if self._kafka_paused:
            # Keep serving callbacks and the poll interval while paused; nothing is fetched.
            self._wait_for_completion(_IDLE_POLL_S)
            msgs = consumer.consume(1, 0)
        elif free <= 0:
            # Saturated but not yet paused: wait for capacity without fetching (a pause
            # would drop librdkafka's prefetched records and cost a fetch round trip).
            since = self._saturated_since if self._saturated_since is not None else now
            self._wait_for_completion(min(_IDLE_POLL_S, max(0.0, since + _PAUSE_AFTER_S - now)))
            return
        else:
            busy = self._in_flight > 0 or bool(self._timers)
            timeout = 0.0 if (busy or self._completions) else _IDLE_POLL_S
            limit = min(self.config.poll_batch_size, free)
            # consume(n, t) waits for n records or t seconds: at low rates it would hold
            # every record for up to t. Wait for one, then take what is already there.
            msgs = consumer.consume(1, timeout)
            if msgs and limit > 1:
                msgs.extend(consumer.consume(limit - 1, 0))
            if not msgs and busy and not self._completions:
                self._wait_for_completion(_BUSY_WAIT_S)
        self.last_poll = time.monotonic()
        if msgs:
            self._accept(msgs)

    def _wait_for_completion(self, timeout: float) -> None:
        if not self._completions:
            self._wake.wait(timeout)

    # -- intake -------------------------------------------------------------------------------

    def _accept(self, msgs: Sequence[Any]) -> None:
        now = time.monotonic()
        ready: list[Message] = []
        parts = self._parts
        skipped: dict[str, int] = {}
        with self._lock:
            for raw in msgs:
                err = raw.error()
                if err is not None:
                    self._on_message_error(err)
                    continue
                key = (raw.topic(), raw.partition())
                st = parts.get(key)
                if st is None or st.revoking or self._closing:
                    continue  # not ours any more; never committed, so redelivered
                offset = raw.offset()
                done = st.done_ranges
                tracker = st.tracker
                try:
                    if done is not None and done.contains(offset):
                        tracker.add_done(offset)
                        skipped[key[0]] = skipped.get(key[0], 0) + 1
                        continue
                    tracker.add(offset, now)
                except OffsetError as exc:
                    log.warning(
                        "ignoring out-of-order record topic=%s partition=%s offset=%s: %s",
                        key[0],
                        key[1],
                        offset,
                        exc,
                    )
                    continue
                ts_type, ts = raw.timestamp()
                msg = Message(
                    key[0],
                    key[1],
                    offset,
                    raw.key(),
                    raw.value(),
                    raw.headers(),
                    ts if ts_type else None,
                )
                msg._epoch = st.epoch
                st.held += 1
                self._in_flight += 1
                if st.lanes.admit(msg):
                    ready.append(msg)
            for topic, count in skipped.items():
                self.counters["skipped_done"] += count
                self._telemetry.skipped_done(topic, count)
        if ready:
            self._engine.submit(ready)

    def _on_message_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaClientError(f"fatal Kafka error: {err.str()}")
        log.warning("Kafka reported: %s", err.str())

    def _on_client_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.error = self.error or KafkaClientError(f"fatal Kafka error: {err.str()}")
            self.request_stop(0)
            return
        now = time.monotonic()
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self.brokers_down_since is None:
            self.brokers_down_since = now
            self.last_client_error = err.str()
        # librdkafka repeats connection errors every retry: one line per kind per 30 s.
        code = err.code()
        last, suppressed = self._error_log.get(code, (0.0, 0))
        if now - last >= _ERROR_LOG_EVERY_S or last == 0.0:
            more = (
                f" ({suppressed} similar in the last {_ERROR_LOG_EVERY_S:.0f} s)"
                if suppressed
                else ""
            )
            log.warning("Kafka client error: %s%s", err.str(), more)
            self._error_log[code] = (now, 0)
        else:
            self._error_log[code] = (last, suppressed + 1)

    def _check_brokers_back(self, now: float) -> None:
        """While librdkafka says all brokers are down, probe metadata now and then."""
        if now < self._next_broker_probe:
            return
        self._next_broker_probe = now + 5.0
        try:
            self._consumer.list_topics(timeout=1.0)
        except KafkaException:
            return
        log.info("Kafka brokers reachable again")
        self.brokers_down_since = None

    # -- outcomes -----------------------------------------------------------------------------

    def _drain_completions(self) -> None:
        self._wake.clear()
        completions = self._completions
        batch: list[Completion] = []
        while completions:
            batch.append(completions.popleft())
        ready: list[Message] = []
        now = time.monotonic()
        parts = self._parts
        with self._lock:
            for msg, error, _ in batch:
                st = parts.get((msg.topic, msg.partition))
                if st is None or st.epoch != msg._epoch:
                    self.counters["fenced"] += 1
                    continue  # from an earlier assignment: dropped, never committed
                if error is None:
                    self._finish(st, msg, now, ready)
                else:
                    self._failed(st, msg, error, now, ready)
            self._telemetry.completed(batch)
        if ready and not self._closing:
            self._engine.submit(ready)

    def _finish(self, st: PartitionState, msg: Message, now: float, ready: list[Message]) -> None:
        st.tracker.complete(msg.offset, now)
        st.held -= 1
        self._in_flight -= 1
        self.counters["processed"] += 1
        if self._first_failure:
            coord = (msg.topic, msg.partition, msg.offset)
            self._first_failure.pop(coord, None)
            self._last_error.pop(coord, None)
            self._dlq_tries.pop(coord, None)
        nxt = st.lanes.release(msg)
        if nxt is not None:
            ready.append(nxt)

    # -- backpressure ---------------------------------------------------------------------------

    def _assigned(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for (t, p), st in self._parts.items() if not st.revoking]

    def _apply_backpressure(self, free: int, now: float) -> None:
        """At the cap, stop fetching; pause Kafka only if the cap holds for a while.

        Short bursts at the cap are absorbed by not calling ``consume`` (librdkafka keeps
        its prefetched records). If the cap holds longer than ``_PAUSE_AFTER_S``, every
        assigned partition is paused so the loop can keep polling (rebalance callbacks,
        ``max.poll.interval.ms``) without receiving records. Resume waits until a quarter
        of the cap is free, so pause/resume does not flap once per completion.
        """
        if free <= 0:
            if self._saturated_since is None:
                self._saturated_since = now
                self._set_backpressure(True)
            elif not self._kafka_paused and now - self._saturated_since >= _PAUSE_AFTER_S:
                self._pause_kafka(True)
        elif self._kafka_paused:
            if self._in_flight <= self._resume_at:
                self._pause_kafka(False)
                self._saturated_since = None
                self._set_backpressure(False)
        elif self._saturated_since is not None:
            self._saturated_since = None
            self._set_backpressure(False)

    def _balance_partitions(self) -> None:
        """In partition order, keep one partition from filling the cap while others starve.

        librdkafka returns records in per-partition chunks, so without this the whole
        window can hold one partition's backlog (mostly queued behind its busy keys)
        while other partitions, with runnable work, wait. Once in-flight passes 3/4 of
        the cap, a partition holding more than its equal share is paused on its own; it
        resumes below 3/4 of its share or when the cap is no longer contended.
        """
        share = max(1, self._max // len(self._parts))
        in_flight = self._in_flight
        contended = in_flight >= self._max * 3 // 4
        for st in self._parts.values():
            if st.revoking:
                continue
            if not st.over_share:
                if contended and st.held >= share:
                    st.over_share = True
                    self.counters["share_pauses"] += 1
                    self._apply_hold(st, st.admission_blocked)
            elif st.held <= share * 3 // 4 or in_flight < self._max // 2:
                st.over_share = False
                self._apply_hold(st, True)

    def _set_backpressure(self, on: bool) -> None:
        with self._lock:
            self._paused = on

    def _pause_kafka(self, paused: bool) -> None:
        tps = self._assigned()
        if not paused:
            tps = [tp for tp in tps if not self._parts[(tp.topic, tp.partition)].held_back]
        if tps:
            try:
                (self._consumer.pause if paused else self._consumer.resume)(tps)
            except KafkaException as exc:
                log.warning("could not %s partitions: %s", "pause" if paused else "resume", exc)
        self._kafka_paused = paused
        self.counters["pauses" if paused else "resumes"] += 1
        log.debug(
            "%s fetching in_flight=%s max=%s",
            "paused" if paused else "resumed",
            self._in_flight,
            self._max,
        )

    # -- shutdown -------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        try:
            with self._lock:
                self._closing = True
                for st in self._parts.values():
                    self._drop_waiting(st)
            tps = self._assigned()
            if tps:
                with contextlib.suppress(KafkaException):
                    consumer.pause(tps)
            deadline = self._drain_deadline = time.monotonic() + self._drain_timeout
            while self._in_flight > 0 and time.monotonic() < deadline:
                self._wake.wait(min(0.01, max(0.0, deadline - time.monotonic())))
                self._drain_completions()
                if self._dlq is not None:
                    self._dlq.poll()
                consumer.consume(1, 0)  # serve callbacks; anything fetched is ignored
            self._drain_deadline = 0.0
            if self._in_flight:
                log.warning(
                    "stopping with %d message(s) unfinished; they stay uncommitted", self._in_flight
                )
            with self._lock:
                states = list(self._parts.values())
            self._commit(states, asynchronous=False)
        finally:
            self._engine.stop(1.0)
            if self._dlq is not None:
                self._dlq.close(1.0)
            try:
                consumer.close()
            except (KafkaException, RuntimeError) as exc:
                log.warning("closing the Kafka consumer failed: %s", exc)
            with self._lock:
                keys = list(self._parts)
                self._parts.clear()
                self._in_flight = 0
            self._telemetry.partitions_removed(keys)
            log.info(
                "consumer stopped group=%s client=%s", self.config.group_id, self.config.client_id
            )
