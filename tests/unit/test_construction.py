"""Issue 3: a handler or setting that cannot work is refused when the consumer is built.

No broker: construction must fail before anything connects.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyrallel import ConfigError, ConsumerConfig, Message, ParallelConsumer


def _config(**overrides: Any) -> ConsumerConfig:
    # Port 1: nothing listens there; construction must not try to connect anyway.
    return ConsumerConfig(bootstrap_servers="127.0.0.1:1", group_id="g", topics=["t"], **overrides)


def sync_handler(msg: Message) -> None:
    pass


async def async_handler(msg: Message) -> None:
    pass


def test_sync_handler_with_async_engine_is_refused_naming_handler() -> None:
    with pytest.raises(ConfigError) as info:
        ParallelConsumer(_config(engine="async"), sync_handler)
    assert info.value.field == "handler"
    assert "handler" in str(info.value)
    assert "async" in str(info.value)


def test_async_handler_with_thread_engine_is_refused_naming_handler() -> None:
    with pytest.raises(ConfigError) as info:
        ParallelConsumer(_config(engine="thread"), async_handler)
    assert info.value.field == "handler"


def test_process_count_zero_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        _config(engine="process", process_count=0)
    assert info.value.field == "process_count"
    assert "process_count" in str(info.value)
    assert info.value.value == 0


def test_lambda_with_process_engine_is_refused() -> None:
    """A lambda cannot be pickled to a worker process: refused at construction.

    Needs ``pyrallel/engines/process.py``.
    """
    with pytest.raises(ConfigError) as info:
        ParallelConsumer(_config(engine="process", process_count=1), lambda msg: None)
    assert info.value.field == "handler"


def test_start_after_stop_is_refused() -> None:
    from pyrallel import ConsumerStateError

    consumer = ParallelConsumer(_config(), async_handler)
    consumer.stop(timeout=1)  # never started: nothing to drain, no error
    with pytest.raises(ConsumerStateError, match="after start\\(\\) or stop\\(\\)"):
        consumer.start()


def test_unreachable_brokers_make_health_fail_with_the_reason() -> None:
    from pyrallel.observability.http import health
    from pyrallel.snapshot import MetricsSnapshot

    def snap(down: float) -> MetricsSnapshot:
        return MetricsSnapshot(
            group_id="g",
            client_id="c",
            total_in_flight=0,
            max_in_flight=10,
            is_paused=False,
            running=True,
            poll_age_sec=0.01,
            brokers_down_sec=down,
            last_client_error="127.0.0.1:1/bootstrap: Connect failed",
        )

    ok, reason = health(snap(0.0), None, 10.0)
    assert ok
    ok, reason = health(snap(25.0), None, 10.0)
    assert not ok
    assert "no Kafka broker reachable for 25 s" in reason and "Connect failed" in reason
