"""A real Prometheus for tests, and a small client for its HTTP API.

``start_prometheus(config, files={...})`` (the ``prometheus_factory`` fixture) runs
``/usr/bin/prometheus`` on a free 127.0.0.1 port with the config written into a temp
dir, waits for ``/-/ready`` and stops it by PID at teardown. The process handling is
:class:`devtools.stack.PrometheusServer`, the same code ``make stack`` runs.

Prometheus is required: CI installs it (Debian package ``prometheus``), so a missing
binary fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from devtools.stack import PrometheusServer, StackError


class PromQLError(AssertionError):
    """Prometheus refused a request (bad expression, bad parameter); carries its message."""


class PrometheusAPI:
    """The few ``/api/v1`` calls the tests make; every answer's ``status`` is checked."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        request = f"{self.url}{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            # 400/422 carry the parser's message in the JSON body: show it.
            try:
                body = json.load(exc)
            except ValueError:
                raise PromQLError(f"GET {request}: HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PromQLError(f"GET {request}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now; the result samples (empty list when nothing matches)."""
        data = self.get("/api/v1/query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        if data["resultType"] not in ("vector", "matrix"):
            # A scalar or string result is a list [time, value], never "no data".
            return [{"metric": {}, "value": result}]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        values: list[str] = self.get(f"/api/v1/label/{label}/values", **{"match[]": match})
        return values

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.get("/api/v1/targets")["activeTargets"]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return alerts


StartPrometheus = Callable[..., tuple[PrometheusServer, PrometheusAPI]]


@pytest.fixture(scope="module")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartPrometheus]:
    """``start_prometheus(config, files=None) -> (server, api)``; stopped at teardown.

    ``config`` is the prometheus.yml mapping; ``files`` maps paths relative to the config
    (rule files) to the files to put there. Module-scoped, so a module's scenario can
    share one server; the log tail is printed at teardown (pytest shows it on failure).
    """
    if shutil.which("prometheus") is None and not Path("/usr/bin/prometheus").is_file():
        pytest.fail("prometheus not found: install the Debian package `prometheus`")
    servers: list[PrometheusServer] = []

    def start(
        config: Mapping[str, Any], files: Mapping[str, Path] | None = None
    ) -> tuple[PrometheusServer, PrometheusAPI]:
        server = PrometheusServer(config, tmp_path_factory.mktemp("prometheus"), files=files)
        servers.append(server)
        try:
            server.start()
        except StackError as exc:
            pytest.fail(str(exc))
        return server, PrometheusAPI(server.url)

    yield start

    for server in servers:
        print(f"prometheus {server.url} (pid {server.pid}){server.log_tail()}")
        server.stop()
