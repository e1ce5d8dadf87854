"""``pyrallel status``: the incident-guide diagnosis from /status, text and JSON."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from pyrallel import cli
from pyrallel.monitoring.thresholds import Thresholds
from pyrallel.observability import serve
from pyrallel.observability.hooks import NullTelemetry
from pyrallel.observability.status import diagnose, render
from pyrallel.snapshot import MetricsSnapshot


def status_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "group_id": "orders",
        "client_id": "orders-1",
        "total_in_flight": 12,
        "max_in_flight": 1000,
        "is_paused": False,
        "running": True,
        "poll_age_sec": 0.01,
        "partitions": [],
        "counters": {"processed": 10},
        "health": {"ok": True, "reason": "ok"},
    }
    doc.update(overrides)
    return doc


def part(p: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "topic": "orders",
        "partition": p,
        "true_lag": 0,
        "gap_count": 0,
        "blocking_offset": None,
        "blocking_duration_sec": 0.0,
        "queued_count": 0,
        "in_flight": 0,
        "commit_offset": 100,
        "committed_offset": 100,
        "broker_lag": 0,
    }
    row.update(fields)
    return row


def test_healthy_consumer_has_nothing_to_report() -> None:
    d = diagnose(status_doc(partitions=[part(0), part(1)]))
    assert d["healthy"] and not d["paused"]
    assert d["blocking"] == [] and d["lagging"] == []
    assert d["findings"] == ["no problem found: not paused, nothing blocked for long, lag low"]
    text = render(d)
    assert "not paused, in-flight 12/1000 (1 %)" in text


def test_paused_consumer_with_a_poison_offset_names_it_worst_first() -> None:
    t = Thresholds()
    doc = status_doc(
        total_in_flight=1000,
        is_paused=True,
        partitions=[
            part(0, blocking_offset=55, blocking_duration_sec=3.0, true_lag=10),
            part(
                2,
                blocking_offset=4242,
                blocking_duration_sec=t.blocking_critical_s + 123,
                true_lag=9000,
                gap_count=250,
                commit_offset=4242,
                committed_offset=4242,
                broker_lag=9000,
            ),
            part(3, blocking_offset=7, blocking_duration_sec=t.blocking_warning_s + 1),
        ],
        counters={"commit_failures": 2, "lost": 1},
    )
    d = diagnose(doc, t)
    assert [b["partition"] for b in d["blocking"]] == ["orders[2]", "orders[3]", "orders[0]"]
    assert [b["level"] for b in d["blocking"]] == ["critical", "warning", "ok"]
    assert d["lagging"] == [{"partition": "orders[2]", "true_lag": 9000}]
    findings = "\n".join(d["findings"])
    assert "paused by backpressure: 1000/1000" in findings
    assert "orders[2] offset 4242 has blocked commits for 12m03s" in findings
    assert "looping or deadlocked" in findings
    assert "gap count" in findings and "2 commit(s) failed" in findings
    assert "max_poll_interval_ms" in findings

    text = render(d)
    assert "PAUSED by backpressure, in-flight 1000/1000 (100 %)" in text
    assert "orders[2] offset 4242 blocked for 12m03s  CRITICAL" in text
    blocking_section = text.split("blocking offsets")[1]
    assert blocking_section.index("orders[2]") < blocking_section.index("orders[0]")
    assert "orders[2]: 4242 / 4242 / 9000" in text


def test_unhealthy_poll_loop_comes_first() -> None:
    d = diagnose(status_doc(health={"ok": False, "reason": "poll loop stuck: 42 s"}))
    assert not d["healthy"]
    assert d["findings"][0] == "poll loop unhealthy: poll loop stuck: 42 s"


class Snapshotting:
    def __init__(self, snapshot: MetricsSnapshot, config: Any) -> None:
        self.snap = snapshot
        self.config = config
        self.error: BaseException | None = None
        self._telemetry = NullTelemetry()

    def get_metrics(self) -> MetricsSnapshot:
        return self.snap


def test_cli_reads_a_live_endpoint_text_and_json(
    make_config: Any, make_state: Any, make_partition: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_config()
    state = make_state(config)
    state.add(make_partition(partition=4, blocking_offset=99, blocking_duration_sec=75.0))
    with serve(Snapshotting(state.snapshot(), config), port=0) as srv:
        assert cli.main(["status", "--url", srv.url]) == 0
        out = capsys.readouterr().out
        assert f"group={config.group_id}" in out
        assert "orders[4] offset 99 blocked for 1m15s" in out

        assert cli.main(["status", "--url", srv.url + "/status", "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["blocking"][0]["offset"] == 99 and d["blocking"][0]["partition_id"] == 4

    state.running = False
    with serve(Snapshotting(state.snapshot(), config), port=0) as srv:
        assert cli.main(["status", "--url", srv.url.removeprefix("http://")]) == 3
        assert "UNHEALTHY" in capsys.readouterr().out


def test_cli_unreachable_endpoint_exits_non_zero_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        assert cli.main(["status", "--url", f"http://127.0.0.1:{port}", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read http://127.0.0.1:{port}/status" in err
    assert "refused" in err.lower()


def test_cli_refuses_an_answer_that_is_not_a_pyrallel_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class NotPyrallel(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>hello</html>" if self.path == "/html/status" else b'{"ok": 1}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), NotPyrallel)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert cli.main(["status", "--url", base + "/html"]) == 1  # not JSON
        assert cli.main(["status", "--url", base]) == 1  # JSON, but not a status
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capsys.readouterr().err
    assert err.count("pyrallel status: cannot read") == 2
    assert "not a Pyrallel /status document" in err
