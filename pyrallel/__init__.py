"""Pyrallel: consume Kafka partitions in parallel, keep per-key order, commit only what is done."""

from pyrallel.config import ConsumerConfig
from pyrallel.consumer import ParallelConsumer
from pyrallel.errors import (
    ConfigError,
    ConsumerStateError,
    HandlerError,
    HandlerTimeoutError,
    KafkaClientError,
    PyrallelError,
    WorkerDiedError,
)
from pyrallel.message import Message
from pyrallel.snapshot import MetricsSnapshot, PartitionMetrics

__all__ = [
    "ConfigError",
    "ConsumerConfig",
    "ConsumerStateError",
    "HandlerError",
    "HandlerTimeoutError",
    "KafkaClientError",
    "Message",
    "MetricsSnapshot",
    "ParallelConsumer",
    "PartitionMetrics",
    "PyrallelError",
    "WorkerDiedError",
]
__version__ = "0.1.0"
