"""The real broker behaves as the library relies on: groups, commits, transactions, restarts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from devtools.kafka_broker import KafkaBroker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.broker

Factory = Callable[..., Any]


def consume_n(consumer: Consumer, n: int, timeout: float = 30.0) -> list[Message]:
    got: list[Message] = []

    def have_all() -> bool:
        msg = consumer.poll(0.5)
        if msg is not None:
            assert msg.error() is None, msg.error()
            got.append(msg)
        return len(got) >= n

    wait_until(have_all, timeout, interval=0, message=lambda: f"{n} messages (got {len(got)})")
    return got


def consume_to_eof(consumer: Consumer, partitions: int, timeout: float = 30.0) -> list[Message]:
    """Data messages until every assigned partition reported EOF (needs enable.partition.eof)."""
    got: list[Message] = []
    at_eof: set[int] = set()

    def all_at_eof() -> bool:
        msg = consumer.poll(0.5)
        if msg is None:
            return False
        err = msg.error()
        if err is not None:
            assert err.code() == KafkaError._PARTITION_EOF, err
            partition = msg.partition()
            assert partition is not None
            at_eof.add(partition)
        else:
            got.append(msg)
        return len(at_eof) == partitions

    wait_until(all_at_eof, timeout, interval=0, message=lambda: f"EOF on {partitions} partitions")
    return got


def committed_offsets(
    consumer: Consumer, topic: str, partitions: int
) -> dict[int, tuple[int, str | None]]:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    # The group coordinator may still be loading (first use, or right after a restart).
    result = wait_until(
        lambda: consumer.committed(tps, timeout=5),
        timeout=30,
        message="committed offsets",
        ignore=(KafkaException,),
    )
    for tp in result:
        assert tp.error is None, tp.error
    return {tp.partition: (tp.offset, tp.metadata) for tp in result if tp.offset >= 0}


def test_keyed_messages_are_consumed_in_order_and_committed(
    make_topic: Factory, produce_keyed: Factory, make_consumer: Factory
) -> None:
    topic = make_topic(partitions=3)
    produced = produce_keyed(topic, 100, keys=10)

    assert len(produced.records) == 100
    assert all(len(parts) == 1 for parts in produced.partitions_by_key().values())
    assert set(produced.end_offsets) == {0, 1, 2}, "10 keys should reach all 3 partitions"

    consumer = make_consumer()
    consumer.subscribe([topic])
    messages = consume_n(consumer, 100)

    for partition in range(3):
        seen = [(m.offset(), m.key(), m.value()) for m in messages if m.partition() == partition]
        sent = [(r.offset, r.key, r.value) for r in produced.records if r.partition == partition]
        assert seen == sent, f"partition {partition} out of order or incomplete"

    to_commit = [TopicPartition(topic, p, end) for p, end in produced.end_offsets.items()]
    consumer.commit(offsets=to_commit, asynchronous=False)
    consumer.close()

    checker = make_consumer()
    committed = committed_offsets(checker, topic, 3)
    assert {p: off for p, (off, _) in committed.items()} == produced.end_offsets
    for partition, end in produced.end_offsets.items():
        _, high = checker.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        assert high == end


def test_transaction_markers_put_end_offset_past_last_record(
    make_topic: Factory,
    make_producer: Factory,
    produce_keyed: Factory,
    make_consumer: Factory,
    unique_name: Callable[[str], str],
) -> None:
    topic = make_topic(partitions=1)
    producer = make_producer(**{"transactional.id": unique_name("tx")})
    producer.init_transactions(30)

    producer.begin_transaction()
    committed = produce_keyed(topic, 5, keys=["a"], producer=producer)
    producer.commit_transaction(30)

    last_data_offset = committed.records[-1].offset
    assert last_data_offset == 4
    reader = make_consumer(**{"isolation.level": "read_committed", "enable.partition.eof": True})

    def stable_end() -> int:
        # read_committed: this is the last stable offset, which only moves once the
        # coordinator has written the markers, a moment after commit/abort returned.
        _, high = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return int(high)

    # The commit marker occupies offset 5: "last record + 1" is not the end of the log.
    wait_until(lambda: stable_end() == last_data_offset + 2, message="LSO past commit marker")

    producer.begin_transaction()
    produce_keyed(topic, 3, keys=["a"], producer=producer, value=lambda i: b"aborted")
    producer.abort_transaction(30)
    wait_until(
        lambda: stable_end() == last_data_offset + 2 + 3 + 1, message="LSO past abort marker"
    )

    reader.assign([TopicPartition(topic, 0, 0)])
    seen = consume_to_eof(reader, partitions=1)
    assert [(m.offset(), m.value()) for m in seen] == [
        (r.offset, r.value) for r in committed.records
    ]


def test_broker_restart_keeps_committed_offsets_and_data(
    kafka_broker: KafkaBroker,
    make_topic: Factory,
    produce_keyed: Factory,
    make_consumer: Factory,
    unique_name: Callable[[str], str],
) -> None:
    topic = make_topic(partitions=2)
    produced = produce_keyed(topic, 20, keys=4)
    committer = make_consumer()
    committer.commit(
        offsets=[
            TopicPartition(topic, p, end, f"meta-{p}") for p, end in produced.end_offsets.items()
        ],
        asynchronous=False,
    )
    committer.close()
    port_before = kafka_broker.port

    kafka_broker.restart()

    assert kafka_broker.port == port_before
    checker = make_consumer()
    assert committed_offsets(checker, topic, 2) == {
        p: (end, f"meta-{p}") for p, end in produced.end_offsets.items()
    }
    fresh = make_consumer(**{"group.id": unique_name("g-fresh"), "enable.partition.eof": True})
    fresh.assign([TopicPartition(topic, p, 0) for p in range(2)])
    assert len(consume_to_eof(fresh, partitions=2)) == 20
