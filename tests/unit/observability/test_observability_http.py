"""serve(): /metrics, /status, /healthz on 127.0.0.1, for a stand-in consumer."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from pyrallel.config import ConsumerConfig
from pyrallel.observability import Server, catalog, serve
from pyrallel.observability.hooks import NullTelemetry
from pyrallel.observability.metrics import OpenTelemetryTelemetry
from pyrallel.snapshot import MetricsSnapshot


class StandIn:
    """What serve() reads from a ParallelConsumer: config, get_metrics(), error, telemetry."""

    def __init__(self, config: ConsumerConfig, state: Any, telemetry: NullTelemetry) -> None:
        self.config = config
        self.state = state
        self._telemetry = telemetry
        self.error: BaseException | None = None
        telemetry.bind(state.snapshot)

    def get_metrics(self) -> MetricsSnapshot:
        snap: MetricsSnapshot = self.state.snapshot()
        return snap


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def consumer(make_config: Any, make_state: Any, make_partition: Any) -> StandIn:
    config = make_config(kafka={"sasl.password": "hunter2", "security.protocol": "SASL_SSL"})
    state = make_state(config)
    state.add(make_partition(partition=1, true_lag=40, blocking_offset=17, broker_lag=40))
    return StandIn(config, state, OpenTelemetryTelemetry(config))


@pytest.fixture
def server(consumer: StandIn) -> Iterator[Server]:
    with serve(consumer, port=0) as srv:
        yield srv


def test_port_zero_binds_a_free_port_on_loopback(server: Server) -> None:
    assert server.port > 0
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_metrics_serves_the_consumers_private_registry(server: Server, consumer: StandIn) -> None:
    status, content_type, body = get(server.url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    lag = families[catalog.PARTITION_TRUE_LAG.prometheus]
    assert [(s.labels, s.value) for s in lag.samples] == [
        (
            {
                "group": consumer.config.group_id,
                "client": consumer.config.client_id,
                "topic": "orders",
                "partition": "1",
            },
            40.0,
        )
    ]


def test_metrics_without_a_private_registry_falls_back_to_snapshot_gauges(
    make_config: Any, make_state: Any, make_partition: Any
) -> None:
    config = make_config()
    state = make_state(config)
    state.add(make_partition(partition=0, true_lag=5, blocking_offset=None))
    state.paused = True
    with serve(StandIn(config, state, NullTelemetry()), port=0) as srv:
        status, _, body = get(srv.url + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body)}
    gauges = {m.prometheus for m in catalog.CATALOG if m.instrument == "gauge"}
    assert gauges <= set(families)
    assert families[catalog.SYSTEM_PAUSED.prometheus].samples[0].value == 1
    blocking = families[catalog.PARTITION_BLOCKING_OFFSET.prometheus].samples[0]
    assert blocking.value == -1 and blocking.labels["partition"] == "0"
    assert not families[catalog.PARTITION_BROKER_LAG.prometheus].samples  # unknown: no sample


def test_an_explicit_registry_wins(make_config: Any, make_state: Any) -> None:
    config = make_config()
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    Counter("application_requests", "the app's own metric", registry=registry).inc()
    consumer = StandIn(
        config, make_state(config), OpenTelemetryTelemetry(config, meter_provider=provider)
    )
    with serve(consumer, port=0, registry=registry) as srv:
        _, _, body = get(srv.url + "/metrics")
    assert "application_requests_total 1.0" in body
    assert catalog.SYSTEM_IN_FLIGHT.prometheus in body


def test_status_is_the_snapshot_plus_health_and_redacted_config(
    server: Server, consumer: StandIn
) -> None:
    status, content_type, body = get(server.url + "/status")
    assert status == 200 and content_type == "application/json"
    doc = json.loads(body)
    expected = consumer.get_metrics().to_dict()
    expected.pop("poll_age_sec")
    assert {k: doc[k] for k in expected} == expected
    assert doc["health"]["ok"] is True
    config = doc["config"]
    assert config["group_id"] == consumer.config.group_id
    assert config["topics"] == ["orders"]
    assert config["kafka"] == {"sasl.password": "***", "security.protocol": "SASL_SSL"}
    assert "hunter2" not in body


def test_healthz_follows_the_poll_loop(consumer: StandIn) -> None:
    with serve(consumer, port=0, max_poll_age_s=3) as srv:
        assert get(srv.url + "/healthz")[0] == 200

        consumer.state.poll_age = 4.2
        status, _, body = get(srv.url + "/healthz")
        assert status == 503
        assert "stuck" in body and "4.2 s" in body and "3 s" in body

        consumer.state.poll_age = 0.1
        assert get(srv.url + "/healthz")[0] == 200

        consumer.state.running = False
        status, _, body = get(srv.url + "/healthz")
        assert status == 503 and "not running" in body

        consumer.state.running = True
        consumer.error = RuntimeError("fatal Kafka error: broker fenced us")
        status, _, body = get(srv.url + "/healthz")
        assert status == 503 and "fenced" in body
        assert json.loads(get(srv.url + "/status")[2])["health"]["ok"] is False


def test_unknown_path_is_404(server: Server) -> None:
    assert get(server.url + "/nope")[0] == 404


def test_port_in_use_is_a_clear_error_naming_the_address(consumer: StandIn) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port}: address already in use"):
            serve(consumer, port=port)


def test_close_releases_the_port(consumer: StandIn) -> None:
    srv = serve(consumer, port=0)
    port = srv.port
    srv.close()
    srv.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    again = serve(consumer, port=port)
    again.close()
