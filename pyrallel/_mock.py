"""librdkafka's in-process mock cluster: the embedded default for ``pyrallel demo``.

A client created with ``test.mock.num.brokers`` starts a mock cluster whose brokers
listen on real 127.0.0.1 ports; other clients reach it through those addresses. It
auto-creates topics (4 partitions), supports classic consumer groups and commits with
metadata, but has no admin API.
"""

from __future__ import annotations

from types import TracebackType

from confluent_kafka import Producer

MOCK_PARTITIONS = 4


class MockCluster:
    def __init__(self, brokers: int = 3) -> None:
        # The cluster lives as long as this client; log_level 4 hides its startup notice.
        self._owner: Producer | None = Producer(
            {"bootstrap.servers": "", "test.mock.num.brokers": brokers, "log_level": 4}
        )
        metadata = self._owner.list_topics(timeout=10)
        self.bootstrap = ",".join(
            f"{b.host}:{b.port}" for b in sorted(metadata.brokers.values(), key=lambda b: b.id)
        )

    def close(self) -> None:
        if self._owner is not None:
            self._owner.flush(5)
            self._owner = None

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        self.close()
