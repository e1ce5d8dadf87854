"""Commits: the next safe offset per partition, with finished offsets in the metadata.

Periodic commits are asynchronous; revoke and stop commit synchronously. The offset is
always the tracker's (never a position past unprocessed records), except for stepping
over records librdkafka consumed without returning (transaction markers).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pyrallel._core.base import METADATA_BUDGET, RuntimeState
from pyrallel._core.state import PartitionState
from pyrallel.offsets import metadata as commit_metadata

log = logging.getLogger("pyrallel._core.poller")


class Commits(RuntimeState):
    # -- commits ----------------------------------------------------------------------------------

    def _periodic(self, now: float) -> None:
        self._next_commit = now + self.config.commit_interval_ms / 1000
        with self._lock:
            states = list(self._parts.values())
        self._advance_positions(states)
        self._commit(states, asynchronous=True)
        restarts = self._engine.restarts
        if restarts > self.counters["worker_restarts"]:
            self._telemetry.worker_restart(restarts - self.counters["worker_restarts"])
            self.counters["worker_restarts"] = restarts
        for st in states:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(st.topic, st.partition), cached=True
                )
            except KafkaException:
                continue
            if high is not None and high >= 0:
                st.high_watermark = high

    def _advance_positions(self, states: Sequence[PartitionState]) -> None:
        """Step over offsets the client consumed without handing them to us.

        librdkafka hides transaction control records (and aborted records) but moves
        its position past them. Without this, a partition whose last record is a commit
        marker would never commit its end offset and would show a lag of 1 forever.
        ``position()`` never passes a record that was not returned by ``consume``, and
        every returned record of an owned partition is tracked, so the offsets between
        the last fetched one and the position need no processing.
        """
        tps = [TopicPartition(st.topic, st.partition) for st in states if not st.revoking]
        if not tps:
            return
        try:
            positions = self._consumer.position(tps)
        except KafkaException:
            return
        with self._lock:
            for tp in positions:
                st = self._parts.get((tp.topic, tp.partition))
                if st is None or tp.offset < 0:
                    continue
                last = st.tracker.last_fetched
                floor = last if last is not None else st.committed
                if floor is not None and tp.offset - 1 > floor - (1 if last is None else 0):
                    st.tracker.add_done(tp.offset - 1)

    def _offsets_for(self, states: Sequence[PartitionState], force: bool) -> list[TopicPartition]:
        out = []
        for st in states:
            offset = st.tracker.commit_offset
            if offset is None:
                continue
            meta = self._metadata(st, offset)
            if not force and offset == st.commit_sent and meta == st.metadata_sent:
                continue
            st.commit_sent, st.metadata_sent = offset, meta
            out.append(
                TopicPartition(st.topic, st.partition, offset, metadata=meta)
                if meta
                else TopicPartition(st.topic, st.partition, offset)
            )
        return out

    def _metadata(self, st: PartitionState, offset: int) -> str:
        """The commit metadata for ``st``: the offsets done above ``offset``, encoded.

        Admission control keeps the map inside the broker's budget: past 3/4 of it the
        partition stops fetching (its in-flight work still completes, which can only
        shrink the map) and resumes once the map is under half. If the map ever does
        not fit, the longest prefix that fits is committed: claiming fewer finished
        offsets is always safe, it only means some may run again after a crash.
        """
        if not self.config.commit_metadata:
            return ""
        ranges = st.tracker.completed_ranges()
        encoded = commit_metadata.encode(offset, ranges, METADATA_BUDGET) if ranges else ""
        size = METADATA_BUDGET + 1 if encoded is None else len(encoded)
        if not self._closing:
            if not st.admission_blocked and size > METADATA_BUDGET * 3 // 4:
                self._block_admission(st, True)
            elif st.admission_blocked and size <= METADATA_BUDGET // 2:
                self._block_admission(st, False)
        if encoded is not None:
            return encoded
        lo, hi = 0, len(ranges)
        best = ""
        while lo < hi:
            mid = (lo + hi + 1) // 2
            candidate = commit_metadata.encode(offset, ranges[:mid], METADATA_BUDGET)
            if candidate is None:
                hi = mid - 1
            else:
                best, lo = candidate, mid
        return best

    def _guard_metadata_budget(self, now: float) -> None:
        """Between commits, stop a partition's intake before its map outgrows the budget.

        The encoded map is never larger than a bitset over the true lag, nor than a
        run-length list of ``gap_count`` ranges, so those O(1) bounds clear almost every
        partition; only one that might be near the budget is measured exactly (at most
        every 50 ms). Unblocking is left to the commit tick.
        """
        limit = METADATA_BUDGET * 3 // 4
        for st in self._parts.values():
            if st.admission_blocked:
                continue
            tracker = st.tracker
            gaps = tracker.gap_count
            if not gaps:
                continue
            lag = tracker.true_lag
            width = 2 * max(1, (lag.bit_length() + 6) // 7)
            bound = min(lag // 8 + 1, gaps * width) * 5 // 4 + 24
            if bound <= limit or now < st.next_budget_check:
                continue
            st.next_budget_check = now + 0.05
            offset = tracker.commit_offset
            if offset is None:
                continue
            size = commit_metadata.encoded_size(offset, tracker.completed_ranges())
            if size > limit:
                self._block_admission(st, True)

    def _block_admission(self, st: PartitionState, blocked: bool) -> None:
        self.counters["admission_blocks" if blocked else "admission_unblocks"] += 1
        log.info(
            "%s fetching topic=%s partition=%s: commit metadata %s its budget",
            "pausing" if blocked else "resuming",
            st.topic,
            st.partition,
            "nears" if blocked else "is back within",
        )
        before = st.held_back
        st.admission_blocked = blocked
        self._apply_hold(st, before)

    def _apply_hold(self, st: PartitionState, before: bool) -> None:
        """Pause or resume one partition when its own hold (metadata, share) changed."""
        after = st.held_back
        if after == before or self._kafka_paused:
            return  # unchanged, or everything is paused and the global resume checks holds
        tp = [TopicPartition(st.topic, st.partition)]
        try:
            (self._consumer.pause if after else self._consumer.resume)(tp)
        except KafkaException as exc:
            log.warning("could not pause/resume %s-%s: %s", st.topic, st.partition, exc)

    def _commit(self, states: Sequence[PartitionState], *, asynchronous: bool) -> None:
        offsets = self._offsets_for(states, force=not asynchronous)
        if not offsets:
            return
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(offsets, str(exc))
            return
        self._on_commit(None, result or [])

    def _commit_failed(self, offsets: Sequence[TopicPartition], reason: str) -> None:
        log.warning("commit failed for %d partition(s): %s", len(offsets), reason)
        self.counters["commit_failures"] += len(offsets)
        self._telemetry.committed(0, len(offsets))
        for tp in offsets:
            st = self._parts.get((tp.topic, tp.partition))
            if st is not None:
                st.commit_sent = None  # send again next tick

    def _on_commit(self, err: KafkaError | None, partitions: Sequence[TopicPartition]) -> None:
        ok = failed = 0
        with self._lock:
            for tp in partitions:
                st = self._parts.get((tp.topic, tp.partition))
                if err is not None or tp.error is not None:
                    failed += 1
                    if st is not None:
                        st.commit_sent = None
                    continue
                ok += 1
                if st is not None and (st.committed is None or tp.offset >= st.committed):
                    st.committed = tp.offset
            self.counters["commits"] += ok
            self.counters["commit_failures"] += failed
        if failed:
            log.warning("commit refused for %d partition(s): %s", failed, err)
        self._telemetry.committed(ok, failed)
