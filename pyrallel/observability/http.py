"""``/metrics``, ``/status`` and ``/healthz`` for one consumer, on a small threaded server.

::

    server = serve(consumer, port=9464)      # 127.0.0.1 unless told otherwise
    ...
    server.close()

``/metrics``
    Prometheus text exposition. What it serves, first match wins:

    1. the ``registry`` passed to :func:`serve` (e.g. the one your own
       ``PrometheusMetricReader(registry=...)`` writes to);
    2. the private registry of the consumer's :class:`OpenTelemetryTelemetry` when it
       runs its own MeterProvider (the default when the application configured none):
       every catalog metric of this consumer and nothing else;
    3. otherwise (your own MeterProvider exports elsewhere, or telemetry is off) the
       catalog's gauges read straight from ``get_metrics()`` on each scrape, so the
       seed's signals are always there; counters and histograms then live only in your
       own pipeline.
``/status``
    ``get_metrics().to_dict()`` as JSON, plus ``health`` (what ``/healthz`` says) and
    ``config``: the consumer's settings with secret-looking librdkafka values masked
    (``ConsumerConfig.redacted_kafka``). ``pyrallel status`` reads it.
``/healthz``
    200 while the poll loop runs and polled Kafka less than ``max_poll_age_s`` ago; 503
    otherwise (not started, stopped, stopped by an error, or stuck), the body says why.
    The loop polls continuously even while paused, so a slow handler never fails it.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from pyrallel.config import ConsumerConfig
from pyrallel.observability.metrics import PARTITION_GAUGES, SYSTEM_GAUGES
from pyrallel.snapshot import MetricsSnapshot

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464
"""The port OpenTelemetry's Prometheus exporter uses by convention."""


class Observed(Protocol):
    """What the endpoints read from a consumer (:class:`~pyrallel.ParallelConsumer`)."""

    config: ConsumerConfig

    def get_metrics(self) -> MetricsSnapshot: ...

    @property
    def error(self) -> BaseException | None: ...


def health(
    snapshot: MetricsSnapshot, error: BaseException | None, max_poll_age_s: float
) -> tuple[bool, str]:
    """``(healthy, reason)`` as ``/healthz`` judges it."""
    if error is not None:
        return False, f"consumer stopped by an error: {type(error).__name__}: {error}"
    if not snapshot.running:
        return False, "poll loop is not running (not started yet, or stopped)"
    down = snapshot.brokers_down_sec
    if down >= max_poll_age_s:
        return False, f"no Kafka broker reachable for {down:.0f} s: {snapshot.last_client_error}"
    age = snapshot.poll_age_sec
    if age >= max_poll_age_s:
        return False, f"poll loop stuck: last poll {age:.1f} s ago (limit {max_poll_age_s:g} s)"
    return True, f"ok: last poll {age:.3f} s ago"


def config_summary(config: ConsumerConfig) -> dict[str, Any]:
    """Every config field, JSON-ready, with ``kafka`` secrets masked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "kafka":
            value = config.redacted_kafka()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


class _SnapshotGauges:
    """prometheus_client collector: the catalog gauges straight from ``get_metrics()``."""

    def __init__(self, consumer: Observed) -> None:
        self._consumer = consumer

    def collect(self) -> Iterator[Metric]:
        snap = self._consumer.get_metrics()
        system = [snap.group_id, snap.client_id]
        for mdef, read in SYSTEM_GAUGES.items():
            family = GaugeMetricFamily(mdef.prometheus, mdef.help, labels=list(mdef.labels))
            family.add_metric(system, read(snap))
            yield family
        parts = sorted(snap.partitions.items())
        for pdef, read_part in PARTITION_GAUGES.items():
            family = GaugeMetricFamily(pdef.prometheus, pdef.help, labels=list(pdef.labels))
            for (topic, partition), part in parts:
                value = read_part(part)
                if value is not None:
                    family.add_metric([*system, topic, str(partition)], value)
            yield family


def _registry_for(consumer: Observed, registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    telemetry = getattr(consumer, "telemetry", None)
    own = getattr(telemetry, "prometheus_registry", None)
    if isinstance(own, CollectorRegistry):
        return own
    fallback = CollectorRegistry(auto_describe=True)
    fallback.register(_SnapshotGauges(consumer))
    return fallback


class Server:
    """A running endpoint server; ``close()`` stops it (also as a context manager)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])
        """The bound port (the real one when ``serve(port=0)`` picked a free port)."""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port; idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scrape must not keep the process alive
    consumer: Observed
    registry: CollectorRegistry
    max_poll_age_s: float


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "pyrallel"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                self._send(
                    HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(self.server.registry)
                )
            elif path == "/status":
                self._send_json(HTTPStatus.OK, self._status())
            elif path == "/healthz":
                ok, reason = self._health()
                status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, "text/plain; charset=utf-8", (reason + "\n").encode())
            else:
                body = b"not found; try /metrics, /status or /healthz\n"
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", body)
        except Exception as exc:
            log.exception("serving %s failed", path)
            body = f"{type(exc).__name__}: {exc}\n".encode()
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", body)

    def _health(self) -> tuple[bool, str]:
        consumer = self.server.consumer
        return health(consumer.get_metrics(), consumer.error, self.server.max_poll_age_s)

    def _status(self) -> dict[str, Any]:
        consumer = self.server.consumer
        snap = consumer.get_metrics()
        ok, reason = health(snap, consumer.error, self.server.max_poll_age_s)
        out = snap.to_dict()
        out["health"] = {"ok": ok, "reason": reason, "max_poll_age_s": self.server.max_poll_age_s}
        out["config"] = config_summary(consumer.config)
        return out

    def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True, default=str).encode()
        self._send(status, "application/json", body)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # The base class prints every request to stderr; a library must not.
        log.debug("%s " + format, self.address_string(), *args)


def serve(
    consumer: Observed,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    *,
    registry: CollectorRegistry | None = None,
    max_poll_age_s: float = 10.0,
) -> Server:
    """Serve ``/metrics``, ``/status`` and ``/healthz`` for ``consumer`` in a daemon thread.

    ``port=0`` picks a free port (read it back from :attr:`Server.port`). ``registry``
    overrides what ``/metrics`` exposes (module docstring). ``max_poll_age_s`` is how long
    the poll loop may go without calling Kafka before ``/healthz`` answers 503. Raises
    :class:`OSError` naming ``host:port`` when the address cannot be bound.
    """
    try:
        httpd = _HTTPServer((host, port), _Handler)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {why}") from exc
    httpd.consumer = consumer
    httpd.registry = _registry_for(consumer, registry)
    httpd.max_poll_age_s = max_poll_age_s
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.2},
        name=f"pyrallel-http-{httpd.server_address[1]}",
        daemon=True,
    )
    thread.start()
    server = Server(httpd, thread)
    log.info("serving /metrics /status /healthz on %s", server.url)
    return server
