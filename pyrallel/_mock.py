"""librdkafka's in-process mock cluster: the embedded default for ``pyrallel demo``.

A client created with ``test.mock.num.brokers`` (and an empty ``bootstrap.servers``)
starts a mock cluster whose brokers listen on real 127.0.0.1 ports; its metadata names
them, and any other client or process reaches the cluster through those addresses. The
cluster lives exactly as long as that client, so keep this object referenced. It
auto-creates topics with 4 partitions (not configurable from Python), supports classic
consumer groups and commits with metadata, but has no admin API.
"""

from __future__ import annotations

from types import TracebackType

from confluent_kafka import Producer

MOCK_PARTITIONS = 4


class MockCluster:
    def __init__(self, brokers: int = 3, *, timeout: float = 10.0) -> None:
        # log_level 4 hides the "Mock cluster enabled" notice every creation prints.
        self._owner: Producer | None = Producer(
            {"bootstrap.servers": "", "test.mock.num.brokers": brokers, "log_level": 4}
        )
        found = self._owner.list_topics(timeout=timeout).brokers
        if len(found) != brokers:
            raise RuntimeError(f"mock cluster reported {len(found)} of {brokers} brokers")
        self.bootstrap = ",".join(f"{b.host}:{b.port}" for _, b in sorted(found.items()))

    def close(self) -> None:
        owner, self._owner = self._owner, None
        if owner is None:
            return
        owner.flush(5)
        # Producer.close() (recent confluent-kafka) stops the brokers now; older versions
        # stop them when the last reference goes.
        close = getattr(owner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
