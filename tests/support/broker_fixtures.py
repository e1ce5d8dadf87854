"""Fixtures backed by one real Apache Kafka broker per test session (a pytest plugin
loaded by tests/conftest.py, so every test directory shares the one broker).

Tests using them must be marked ``@pytest.mark.broker`` (the ``bootstrap`` fixture
enforces it), so ``-m "not broker"`` really runs without Java.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports NewTopic, but its stubs do not say so (mypy --strict).
from confluent_kafka.cimpl import NewTopic

from devtools.kafka_broker import KafkaBroker
from tests.support.waiting import wait_until

ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / ".artifacts"
KEPT_LOG = ARTIFACTS_DIR / "kafka-broker.log"

_summary_key = pytest.StashKey[list[str]]()

# Short timeouts so consumer-group tests join and fail over in seconds, not 45 s.
FAST_CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}


def _summary(config: pytest.Config) -> list[str]:
    return config.stash.setdefault(_summary_key, [])


def _keep_log(config: pytest.Config, broker: KafkaBroker) -> None:
    if not broker.log_path.is_file():
        _summary(config).append(f"kafka broker log missing: {broker.log_path}")
        return
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(broker.log_path, KEPT_LOG)
    _summary(config).append(f"kafka broker log kept (tests failed): {KEPT_LOG}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_summary_key, [])
    if lines:
        terminalreporter.section("kafka broker")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker]:
    """The session's broker. ``restart()`` on it is allowed: it keeps data and port."""
    # A log kept by an earlier failing run would be mistaken for this run's.
    KEPT_LOG.unlink(missing_ok=True)
    broker = KafkaBroker()
    try:
        broker.start()
    except BaseException:
        _keep_log(request.config, broker)
        broker.close()
        raise
    _summary(request.config).append(
        f"kafka {broker.version} at {broker.bootstrap} (pid {broker.pid}), "
        f"first start took {broker.last_start_seconds:.1f} s"
    )
    try:
        yield broker
    finally:
        if request.session.testsfailed:
            _keep_log(request.config, broker)
        broker.close()


@pytest.fixture
def bootstrap(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> str:
    if request.node.get_closest_marker("broker") is None:
        pytest.fail(f"{request.node.nodeid} uses the real broker: mark it @pytest.mark.broker")
    if not kafka_broker.is_running():
        pytest.fail(f"the session's kafka broker is not running:\n{kafka_broker.log_tail()}")
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def admin(kafka_broker: KafkaBroker) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_broker.bootstrap})


MakeTopic = Callable[..., str]


@pytest.fixture
def make_topic(
    admin: AdminClient, bootstrap: str, unique_name: Callable[[str], str]
) -> Iterator[MakeTopic]:
    """``make_topic(partitions=1, config=None, *, name=None) -> name``.

    Returns once metadata shows every partition with a leader; topics are deleted at
    teardown (best effort).
    """
    created: list[str] = []

    def make(
        partitions: int = 1,
        config: Mapping[str, str | int] | None = None,
        *,
        name: str | None = None,
        timeout: float = 30.0,
    ) -> str:
        topic = name or unique_name("t")
        new = NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=1,
            config={k: str(v) for k, v in (config or {}).items()},
        )
        admin.create_topics([new], operation_timeout=timeout)[topic].result(timeout=timeout)
        created.append(topic)

        def all_partitions_led() -> bool:
            meta = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
            if meta is None or meta.error is not None or len(meta.partitions) != partitions:
                return False
            return all(p.leader >= 0 and p.error is None for p in meta.partitions.values())

        wait_until(
            all_partitions_led,
            timeout=timeout,
            message=f"topic {topic} to have {partitions} led partitions",
            ignore=(KafkaException,),
        )
        return topic

    yield make

    if created:
        futures = admin.delete_topics(created, operation_timeout=10)
        for future in futures.values():
            # Best effort: a failed delete must not fail the test.
            with contextlib.suppress(Exception):
                future.result(timeout=15)


MakeProducer = Callable[..., Producer]
MakeConsumer = Callable[..., Consumer]


@pytest.fixture
def make_producer(bootstrap: str) -> Iterator[MakeProducer]:
    """``make_producer(conf=None, /, **more) -> Producer`` on the session broker.

    ``more`` takes librdkafka keys as they are, e.g. ``**{"transactional.id": "x"}``.
    Producers are flushed and closed at teardown.
    """
    producers: list[Producer] = []

    def make(conf: Mapping[str, Any] | None = None, /, **more: Any) -> Producer:
        producer = Producer({"bootstrap.servers": bootstrap, **(conf or {}), **more})
        producers.append(producer)
        return producer

    yield make

    for producer in reversed(producers):
        producer.flush(10)
        close = getattr(producer, "close", None)
        if close is not None:
            close()


@pytest.fixture
def make_consumer(bootstrap: str, group_id: str) -> Iterator[MakeConsumer]:
    """``make_consumer(conf=None, /, **more) -> Consumer`` on the session broker.

    Defaults: ``group.id`` = this test's ``group_id`` fixture (so consumers made in one
    test share a group), ``auto.offset.reset=earliest``, ``enable.auto.commit=false`` and
    fast session/heartbeat timeouts. Consumers still open are closed at teardown.
    """
    consumers: list[Consumer] = []

    def make(conf: Mapping[str, Any] | None = None, /, **more: Any) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group_id,
                **FAST_CONSUMER_DEFAULTS,
                **(conf or {}),
                **more,
            }
        )
        consumers.append(consumer)
        return consumer

    yield make

    for consumer in reversed(consumers):
        with contextlib.suppress(RuntimeError):  # the test closed it already
            consumer.close()


@dataclass(frozen=True)
class ProducedRecord:
    key: bytes
    value: bytes
    partition: int
    offset: int


@dataclass
class Produced:
    records: list[ProducedRecord] = field(default_factory=list)

    @property
    def end_offsets(self) -> dict[int, int]:
        """Per partition that got records: the offset after the last one (the high mark)."""
        ends: dict[int, int] = {}
        for record in self.records:
            ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
        return ends

    def partitions_by_key(self) -> dict[bytes, set[int]]:
        result: dict[bytes, set[int]] = {}
        for record in self.records:
            result.setdefault(record.key, set()).add(record.partition)
        return result


ProduceKeyed = Callable[..., Produced]


@pytest.fixture
def produce_keyed(make_producer: MakeProducer) -> ProduceKeyed:
    """``produce_keyed(topic, n, keys=10, *, value=None, producer=None) -> Produced``.

    Message ``i`` gets key ``keys[i % len(keys)]`` (``keys`` an int means ``k0..k{n-1}``)
    and value ``value(i)`` (default ``b"<i>"``). Waits for every delivery report and
    fails on any delivery error, so ``Produced.end_offsets`` are real broker offsets.
    """

    def produce(
        topic: str,
        n: int,
        keys: Sequence[str | bytes] | int = 10,
        *,
        value: Callable[[int], bytes] | None = None,
        producer: Producer | None = None,
        timeout: float = 30.0,
    ) -> Produced:
        key_list = [f"k{i}" for i in range(keys)] if isinstance(keys, int) else list(keys)
        encoded = [k.encode() if isinstance(k, str) else k for k in key_list]
        target = producer or make_producer({"linger.ms": 5})
        produced = Produced()
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
                return
            key, payload, partition, offset = msg.key(), msg.value(), msg.partition(), msg.offset()
            assert key is not None and payload is not None
            assert partition is not None and offset is not None
            produced.records.append(ProducedRecord(key, payload, partition, offset))

        for i in range(n):
            payload = value(i) if value is not None else str(i).encode()
            target.produce(
                topic, key=encoded[i % len(encoded)], value=payload, on_delivery=on_delivery
            )
            target.poll(0)
        remaining = target.flush(timeout)
        assert remaining == 0, (
            f"{remaining} of {n} messages to {topic} not delivered in {timeout} s"
        )
        assert not errors, f"delivery to {topic} failed: {errors[:5]}"
        produced.records.sort(key=lambda r: (r.partition, r.offset))
        return produced

    return produce
