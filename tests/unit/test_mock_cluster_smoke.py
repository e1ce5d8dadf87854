"""The librdkafka mock cluster is usable as a broker by separate clients."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from tests.support.waiting import wait_until


def test_mock_cluster_produces_consumes_and_commits(mock_cluster: str, group_id: str) -> None:
    assert len(mock_cluster.split(",")) == 3
    topic = "mock-smoke"
    producer = Producer({"bootstrap.servers": mock_cluster})
    for i in range(40):
        producer.produce(topic, key=f"k{i % 8}", value=str(i).encode())
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": mock_cluster,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[Message] = []

        def have_all() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(msg)
            return len(got) >= 40

        wait_until(have_all, timeout=30, interval=0, message=lambda: f"40 messages, got {len(got)}")
        assert sorted(int(m.value() or b"-1") for m in got) == list(range(40))

        per_partition = Counter(m.partition() or 0 for m in got)
        consumer.commit(asynchronous=False)
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in per_partition], timeout=10
        )
        assert {tp.partition: tp.offset for tp in committed} == dict(per_partition)
    finally:
        consumer.close()
