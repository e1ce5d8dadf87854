"""librdkafka's in-process mock cluster, reachable by other clients and processes.

Recipe: any client created with ``test.mock.num.brokers=N`` (and an empty
``bootstrap.servers``) starts N mock brokers on 127.0.0.1 in its own threads and rewrites
its bootstrap list to them. Reading that client's metadata gives the brokers' host:port,
which any other client (or process) can use as ``bootstrap.servers``. The mock cluster
lives exactly as long as the client that created it, so keep it referenced.

The mock auto-creates topics with 4 partitions (not configurable from Python), supports
classic consumer groups, commits and watermarks, but has no admin API.
"""

from __future__ import annotations

from types import TracebackType

from confluent_kafka import Producer


class MockCluster:
    def __init__(self, num_brokers: int = 3, *, timeout: float = 10.0) -> None:
        conf: dict[str, str | int] = {
            "bootstrap.servers": "",
            "test.mock.num.brokers": num_brokers,
            # Silences the "Mock cluster enabled" notice every creation prints.
            "log_level": 4,
        }
        self._handle: Producer | None = Producer(conf)
        brokers = self._handle.list_topics(timeout=timeout).brokers
        if len(brokers) != num_brokers:
            raise RuntimeError(f"mock cluster reported {len(brokers)} of {num_brokers} brokers")
        self.bootstrap = ",".join(
            f"{broker.host}:{broker.port}" for _, broker in sorted(brokers.items())
        )

    def close(self) -> None:
        handle, self._handle = self._handle, None
        # Producer.close() (recent confluent-kafka only) tears the brokers down right now;
        # older versions do it when the last reference goes.
        close = getattr(handle, "close", None)
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
