"""Consumer configuration: frozen, validated when built, with one librdkafka pass-through.

librdkafka settings are merged in this order, later wins:

1. Pyrallel's defaults (:data:`KAFKA_DEFAULTS`), e.g. ``auto.offset.reset=earliest``;
2. the caller's ``kafka={...}`` mapping (copied, never mutated);
3. the keys Pyrallel derives from typed fields (``bootstrap.servers``, ``group.id``,
   ``client.id``, ``max.poll.interval.ms``) and the keys it must own
   (``enable.auto.commit=false``, ``enable.auto.offset.store=false``).

A key of group 3 given in ``kafka`` is refused with an error that names the field to use
instead, so there is never a silent override.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from pyrallel.errors import ConfigError

Ordering = Literal["key", "partition", "unordered"]
EngineName = Literal["async", "process", "thread"]
FailurePolicy = Literal["stop", "skip", "dlq"]

ORDERINGS: tuple[str, ...] = ("key", "partition", "unordered")
ENGINES: tuple[str, ...] = ("async", "process", "thread")
FAILURE_POLICIES: tuple[str, ...] = ("stop", "skip", "dlq")

KAFKA_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "auto.offset.reset": "earliest",
        # A resumed partition waits for the fetch already parked at the broker; 500 ms
        # (librdkafka's default) makes every backpressure resume stall that long.
        "fetch.wait.max.ms": 100,
    }
)

# librdkafka keys that mirror a typed field: set the field instead.
_FIELD_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "bootstrap.servers": "bootstrap_servers",
        "metadata.broker.list": "bootstrap_servers",
        "group.id": "group_id",
        "client.id": "client_id",
        "max.poll.interval.ms": "max_poll_interval_ms",
    }
)
# librdkafka keys Pyrallel must own for its commit guarantees.
_OWNED_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "enable.auto.commit": "Pyrallel commits only offsets below which all work is done",
        "enable.auto.offset.store": "Pyrallel stores offsets itself when work completes",
        "on_commit": "Pyrallel registers its own commit callback",
        "enable.partition.eof": "Pyrallel reads partition ends from watermarks",
    }
)

_client_seq = itertools.count(1)


def _default_client_id() -> str:
    return f"pyrallel-{os.getpid()}-{next(_client_seq)}"


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, value, f"an integer >= {low}")


def _choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(name, value, "one of " + ", ".join(repr(a) for a in allowed))


@dataclass(frozen=True)
class ConsumerConfig:
    """Everything a :class:`~pyrallel.ParallelConsumer` needs, checked on construction.

    Durations are in milliseconds and named ``*_ms``.
    """

    bootstrap_servers: str
    """Kafka brokers, ``host:port[,host:port]`` (librdkafka ``bootstrap.servers``)."""
    group_id: str
    """Consumer group (``group.id``); commits and partition assignment belong to it."""
    topics: Sequence[str]
    """Topics to subscribe to; stored as a tuple."""
    ordering: Ordering = "key"
    """``key``: per-key FIFO within a partition; ``partition``: one message of a partition
    at a time; ``unordered``: no ordering. Records with a null key have no ordering
    relation in Kafka, so in ``key`` mode they run unordered (use ``partition`` to keep
    them in offset order)."""
    max_in_flight_messages: int = 1000
    """System-wide cap on messages held (processing + waiting). At the cap, fetching of
    every assigned partition is paused (polling continues). Seed advice: workers x 2..10."""
    engine: EngineName = "async"
    """``async`` (coroutine handlers, I/O-bound), ``process`` (picklable sync handler in
    worker processes, CPU-bound) or ``thread`` (sync handler on a bounded thread pool)."""
    process_count: int | None = None
    """Worker processes for the process engine; ``None`` means ``os.cpu_count()``."""
    thread_count: int | None = None
    """Threads for the thread engine; ``None`` means ``min(64, max_in_flight_messages)``."""
    max_poll_interval_ms: int = 300_000
    """librdkafka ``max.poll.interval.ms``. Pyrallel polls while paused, so slow handlers
    never hit it; raise it only if your poll loop itself can stall."""
    max_revoke_grace_ms: int = 5_000
    """How long revoked partitions' in-flight work may finish (and be committed) before
    the revoke returns; the rest is abandoned and will be redelivered to the new owner."""
    commit_interval_ms: int = 1_000
    """Period of the asynchronous commit of each partition's next safe offset."""
    shutdown_timeout_ms: int = 30_000
    """How long :meth:`ParallelConsumer.run` lets in-flight work drain on SIGINT/SIGTERM."""
    poll_batch_size: int = 500
    """Most messages taken from librdkafka per ``consume`` call."""
    on_failure: FailurePolicy = "stop"
    """After the last attempt fails: ``stop`` the consumer (nothing committed past the
    message), ``skip`` it (counted and logged, then committed as done) or send it to the
    dead-letter topic (``dlq``; committed only once the DLQ write is confirmed)."""
    max_retries: int = 0
    """Extra attempts after the first failure; the key stays blocked while retrying."""
    retry_backoff_ms: int = 100
    """First retry delay; doubles per attempt with +-20 % jitter, capped below."""
    retry_backoff_max_ms: int = 10_000
    """Upper bound of the retry delay."""
    dlq_topic: str | None = None
    """Dead-letter topic; ``None`` means ``<source topic>.dlq``."""
    handler_timeout_ms: int | None = None
    """Per-call limit; a call past it fails with :class:`HandlerTimeoutError`."""
    commit_metadata: bool = True
    """Encode offsets completed above the commit point in the commit metadata, so a new
    owner of the partition skips them instead of running them again."""
    client_id: str = field(default_factory=_default_client_id)
    """librdkafka ``client.id``; also the ``client`` label of every metric series."""
    kafka: Mapping[str, Any] = field(default_factory=dict)
    """Any other librdkafka setting, merged as the module docstring says."""

    def __post_init__(self) -> None:
        self._validate_identity()
        _choice("ordering", self.ordering, ORDERINGS)
        _choice("engine", self.engine, ENGINES)
        _choice("on_failure", self.on_failure, FAILURE_POLICIES)
        _positive_int("max_in_flight_messages", self.max_in_flight_messages)
        _positive_int("poll_batch_size", self.poll_batch_size)
        for name in ("max_poll_interval_ms", "commit_interval_ms"):
            _positive_int(name, getattr(self, name))
        for name in ("max_revoke_grace_ms", "shutdown_timeout_ms", "max_retries"):
            _positive_int(name, getattr(self, name), allow_zero=True)
        _positive_int("retry_backoff_ms", self.retry_backoff_ms, allow_zero=True)
        _positive_int("retry_backoff_max_ms", self.retry_backoff_max_ms, allow_zero=True)
        for name in ("process_count", "thread_count", "handler_timeout_ms"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.dlq_topic is not None and (
            not isinstance(self.dlq_topic, str) or not self.dlq_topic
        ):
            raise ConfigError("dlq_topic", self.dlq_topic, "a non-empty topic name or None")
        self._validate_kafka()
        self._validate_relations()

    def _validate_relations(self) -> None:
        if not isinstance(self.commit_metadata, bool):
            raise ConfigError("commit_metadata", self.commit_metadata, "True or False")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ConfigError(
                "retry_backoff_max_ms",
                self.retry_backoff_max_ms,
                f"at least retry_backoff_ms ({self.retry_backoff_ms})",
            )
        if len(set(self.topics)) != len(self.topics):
            raise ConfigError("topics", list(self.topics), "each topic once")
        session = self.kafka.get("session.timeout.ms", 45_000)
        if (
            isinstance(session, int | str)
            and str(session).isdigit()
            and self.max_poll_interval_ms < int(session)
        ):
            raise ConfigError(
                "max_poll_interval_ms",
                self.max_poll_interval_ms,
                f"at least session.timeout.ms ({int(session)}; librdkafka requires it)",
            )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f}={self.redacted_kafka() if f == 'kafka' else getattr(self, f)!r}"
            for f in self.__dataclass_fields__
        )
        return f"ConsumerConfig({fields})"

    def _validate_identity(self) -> None:
        for name in ("bootstrap_servers", "group_id", "client_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, value, "a non-empty string")
        topics = self.topics
        if isinstance(topics, str) or not isinstance(topics, Sequence) or not topics:
            raise ConfigError("topics", topics, "a non-empty list of topic names, e.g. ['orders']")
        for topic in topics:
            if not isinstance(topic, str) or not topic.strip():
                raise ConfigError("topics", topics, "every topic name must be a non-empty string")
        object.__setattr__(self, "topics", tuple(topics))

    def _validate_kafka(self) -> None:
        if not isinstance(self.kafka, Mapping):
            raise ConfigError("kafka", self.kafka, "a mapping of librdkafka settings")
        for key in self.kafka:
            if not isinstance(key, str):
                raise ConfigError("kafka", key, "librdkafka setting names are strings")
            if key in _FIELD_KEYS:
                raise ConfigError(
                    f"kafka[{key!r}]",
                    self.kafka[key],
                    f"set ConsumerConfig.{_FIELD_KEYS[key]} instead",
                )
            if key in _OWNED_KEYS:
                raise ConfigError(
                    f"kafka[{key!r}]",
                    self.kafka[key],
                    f"Pyrallel owns this setting: {_OWNED_KEYS[key]}",
                )
        object.__setattr__(self, "kafka", MappingProxyType(dict(self.kafka)))

    @property
    def effective_process_count(self) -> int:
        return self.process_count or os.cpu_count() or 1

    @property
    def effective_thread_count(self) -> int:
        return self.thread_count or min(64, self.max_in_flight_messages)

    def dlq_topic_for(self, topic: str) -> str:
        return self.dlq_topic or f"{topic}.dlq"

    def consumer_settings(self) -> dict[str, Any]:
        """The librdkafka settings for the consumer, merged in the documented precedence."""
        settings: dict[str, Any] = dict(KAFKA_DEFAULTS)
        settings.update(self.kafka)
        settings.update(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": self.group_id,
                "client.id": self.client_id,
                "max.poll.interval.ms": self.max_poll_interval_ms,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
            }
        )
        return settings

    def check_with_librdkafka(self) -> None:
        """Let librdkafka judge every setting now (unknown key, bad value), not at start.

        Builds and closes a consumer that never subscribes, so nothing joins a group.
        The error names the offending key; a secret's value never appears in it.
        """
        from confluent_kafka import Consumer, KafkaException

        try:
            Consumer(self.consumer_settings()).close()
        except KafkaException as exc:
            text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
            if text.count('"') < 2:
                raise ConfigError(
                    "kafka", self.redacted_kafka(), f"librdkafka refused it: {text}"
                ) from None
            key = text.rsplit('"', 2)[-2]
            if _is_secret(key):
                text = f'Invalid value for configuration property "{key}"'
            # An unknown key may be a misspelt secret ("sasl.passwrd"): never echo it.
            unknown = text.startswith("No such configuration property")
            shown = "***" if _is_secret(key) or unknown else self.kafka.get(key, "")
            raise ConfigError(f"kafka[{key!r}]", shown, f"librdkafka refused it: {text}") from None

    def redacted_kafka(self) -> dict[str, Any]:
        """``kafka`` with secret-looking values masked, for logs and ``/status``."""
        return {k: ("***" if _is_secret(k) else v) for k, v in self.kafka.items()}


# A key whose name contains one of these has its value masked in logs, /status, repr
# and errors (librdkafka's own sensitive properties: passwords, passphrases, private
# keys, keystores, OAuth/OIDC secrets and configs, JAAS and Kerberos keytab settings).
_SECRET_MARKERS = (
    "password",
    "passphrase",
    "secret",
    "private",
    "key.pem",
    "keystore",
    "token",
    "credential",
    "oauthbearer.config",
    "jaas",
    "keytab",
)


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)
