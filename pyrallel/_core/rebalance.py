"""Rebalance callbacks: epochs on assign, graceful revoke, lost partitions.

They run inside ``consume()`` on the poll thread. Each assignment gets a new epoch, so
results from before it are dropped; a revoke waits up to ``max_revoke_grace_ms`` for
running work, commits what finished and abandons the rest; lost partitions are dropped
without a commit.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from pyrallel._core.base import RuntimeState
from pyrallel._core.state import PartitionState
from pyrallel.offsets import metadata as commit_metadata

log = logging.getLogger("pyrallel._core.poller")


class Rebalance(RuntimeState):
    # -- rebalance ------------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        committed: dict[tuple[str, int], TopicPartition] = {}
        if partitions:
            try:
                for tp in consumer.committed(partitions, timeout=10):
                    committed[(tp.topic, tp.partition)] = tp
            except KafkaException as exc:
                log.warning("could not read committed offsets at assignment: %s", exc)
        with self._lock:
            for key in keys:
                st = PartitionState(key[0], key[1], next(self._epochs), self.config.ordering)
                tp = committed.get(key)
                if tp is not None and tp.offset >= 0:
                    st.committed = tp.offset
                    if self.config.commit_metadata and tp.metadata:
                        ranges = commit_metadata.decode(tp.metadata, tp.offset)
                        if ranges is None:
                            if not self._metadata_warned:
                                self._metadata_warned = True
                                log.warning(
                                    "ignoring commit metadata not written by Pyrallel "
                                    "topic=%s partition=%s",
                                    *key,
                                )
                        elif ranges:
                            st.done_ranges = commit_metadata.DoneRanges(ranges)
                self._parts[key] = st
            self.counters["assigned"] += len(keys)
        self._telemetry.rebalance("assign", keys)
        log.info("assigned %s", keys)
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        if (self._kafka_paused or self._closing) and partitions:
            consumer.pause(partitions)  # closing: nothing fetched now would be processed

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._telemetry.rebalance("revoke", keys)
        with self._lock:
            states = [self._parts[k] for k in keys if k in self._parts]
            for st in states:
                st.revoking = True
                self._drop_waiting(st)
        deadline = time.monotonic() + self.config.max_revoke_grace_ms / 1000
        if self._closing:
            # Stopping: a revoke during the drain may wait as long as the drain itself
            # (so draining handlers finish here); the revoke at close() waits not at all.
            deadline = min(deadline, self._drain_deadline)
        while any(st.held for st in states) and time.monotonic() < deadline:
            self._wake.wait(min(0.01, max(0.0, deadline - time.monotonic())))
            self._drain_completions()
            if self._dlq is not None:
                self._dlq.poll()
        for st in states:
            st.revoking = False  # nothing was ignored during the wait: positions are exact
        if not self._closing:
            # While closing, the drain loop discards what consume() returns, so the
            # position may be past records nobody processed: never commit it.
            self._advance_positions(states)
        self._commit(states, asynchronous=False)
        self._forget(states)
        with self._lock:
            self.counters["revoked"] += len(keys)
        log.info("revoked %s", keys)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._telemetry.rebalance("lost", keys)
        log.warning("partitions lost (not committing) %s", keys)
        with self._lock:
            states = [self._parts[k] for k in keys if k in self._parts]
            for st in states:
                self._drop_waiting(st)
            self.counters["lost"] += len(keys)
        self._forget(states)

    def _drop_waiting(self, st: PartitionState) -> None:
        """Forget queued and retry-waiting messages of a partition (they stay uncommitted)."""
        dropped = len(st.lanes.drop_queued())
        keep = []
        for timer in self._timers:
            msg = timer[3]
            if (msg.topic, msg.partition) == st.key and msg._epoch == st.epoch:
                dropped += 1
            else:
                keep.append(timer)
        if len(keep) != len(self._timers):
            heapq.heapify(keep)
            self._timers = keep
        st.held -= dropped
        self._in_flight -= dropped

    def _forget(self, states: Sequence[PartitionState]) -> None:
        with self._lock:
            for st in states:
                self._in_flight -= st.held
                st.held = 0
                self._parts.pop(st.key, None)
        for st in states:
            self._engine.abandon(st.topic, st.partition)
        self._telemetry.partitions_removed([st.key for st in states])
