"""End to end: real Kafka, ParallelConsumers serving ``/metrics``, a real Prometheus.

Prometheus scrapes two consumers every second and evaluates the rule file built from
``Thresholds.for_testing()`` (second-scale ``for:``). Through its HTTP API the tests
assert that every target expression of the generated dashboards (read from the JSON in
``dashboards/``) and every alert expression parses and returns what the scenario makes
it return, and that the blocking-duration alerts fire carrying their ``runbook_url``.

The scenario (one topic, three partitions, ~50 msg/s produced throughout):

* consumer A (``on_failure="dlq"``, one retry): its handler hangs for good on the one
  message keyed ``poison`` (blocking duration, blocking offset, gaps and true lag rise on
  that partition) and raises on every message keyed ``bad`` (handler errors, a retry,
  then a dead-letter write);
* consumer B, another group (``on_failure="skip"``): raises on ``bad`` too (failures
  skipped), never hangs.

Every dashboard expression must return samples: the gauges exist while partitions are
assigned, the counters whose labels are known up front are exported at 0 from the start
(``OpenTelemetryTelemetry._zero_known_series``), and the ``bad`` key makes the rest
(handler errors, the duration histogram's error series).

Dashboard template variables are substituted as Grafana does for a user who picked this
test's consumers:

* ``$group`` and ``$topic``: the values the dashboards' own variable queries return
  (``label_values(<selector>, <label>)`` asked as ``/api/v1/label/<label>/values`` with
  ``match[]=<selector>``), narrowed to this test's names and joined as Grafana writes a
  multi-value regex selection, ``(a|b)``. The names use only ``[a-z0-9-]``, which RE2
  reads literally, so no escaping is needed;
* ``$__rate_interval``: Grafana's ``max($__interval + scrape interval, 4 x scrape
  interval)``; for a short time range that is 4 x the 1 s scrape interval, ``4s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from pyrallel import ConsumerConfig, Message, ParallelConsumer
from pyrallel.monitoring import alerts, generate
from pyrallel.monitoring.thresholds import Thresholds
from pyrallel.observability import catalog
from pyrallel.observability.http import Server, serve
from tests.support.prometheus import PrometheusAPI, PromQLError, prometheus_factory  # noqa: F401
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.prometheus]

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO_ROOT / generate.DASHBOARDS_DIR
RUNBOOKS_DIR = REPO_ROOT / generate.RUNBOOKS_DIR
RUNBOOK_BASE_URL = RUNBOOKS_DIR.as_uri()
"""Alerts link straight to the repository's runbook pages, so a test can open them."""

SCRAPE_INTERVAL_S = 1
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"
POISON, BAD = b"poison", b"bad"
TESTING = Thresholds.for_testing()

MUST_FIRE = (alerts.COMMIT_BLOCKED, alerts.POISON_PILL)
MUST_RETURN_DATA = {*MUST_FIRE, alerts.DEAD_LETTER_WRITES}
"""Alert expressions the scenario makes true. The others may be empty (their condition is
false here); for those the query must succeed and every metric they read must have
samples, so "empty" can only mean "condition false", never "metric missing"."""

_METRIC_NAMES = sorted((m.prometheus for m in catalog.CATALOG), key=len, reverse=True)


def metrics_in(expr: str) -> set[str]:
    """Catalog metric names an expression reads (histograms through ``_bucket``)."""
    found = set()
    for name in _METRIC_NAMES:
        if re.search(rf"\b{re.escape(name)}(_bucket|_sum|_count)?\b", expr):
            found.add(name)
    return found


# -- reading the generated dashboards ------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def dashboard_files() -> list[Path]:
    files = sorted(DASHBOARDS_DIR.glob("pyrallel-*.json"))
    assert files, f"no generated dashboards in {DASHBOARDS_DIR}"
    return files


def dashboard_expressions() -> list[str]:
    """Every target ``expr`` of every generated dashboard, first occurrence order."""
    exprs: dict[str, None] = {}
    for path in dashboard_files():
        data = json.loads(path.read_text(encoding="utf-8"))
        for panel in _panels(data["panels"]):
            for target in panel.get("targets", []):
                exprs[target["expr"]] = None
    return list(exprs)


def variable_queries() -> dict[str, str]:
    """Query-type template variables of the dashboards: name to query (all agree)."""
    found: dict[str, str] = {}
    for path in dashboard_files():
        data = json.loads(path.read_text(encoding="utf-8"))
        for var in data["templating"]["list"]:
            if var["type"] == "query":
                assert found.setdefault(var["name"], var["query"]) == var["query"], path
    return found


_LABEL_VALUES = re.compile(r"label_values\((?P<selector>.+),\s*(?P<label>\w+)\)")


# -- the scenario ----------------------------------------------------------------------


@dataclass
class Scenario:
    api: PrometheusAPI
    topic: str
    groups: tuple[str, str]
    poison_partition: int
    poison_offset: int

    def substitute(self, expr: str) -> str:
        out = (
            expr.replace("$__rate_interval", RATE_INTERVAL)
            .replace("$group", "(" + "|".join(self.groups) + ")")
            .replace("$topic", f"({self.topic})")
        )
        assert "$" not in out, f"unsubstituted variable in {out}"
        return out


def _create_topics(client: AdminClient, topics: dict[str, int]) -> None:
    new = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()]
    for future in client.create_topics(new, operation_timeout=30).values():
        future.result(30)

    def led() -> bool:
        meta = client.list_topics(timeout=5).topics
        return all(
            t in meta
            and len(meta[t].partitions) == n
            and all(p.leader >= 0 for p in meta[t].partitions.values())
            for t, n in topics.items()
        )

    wait_until(led, timeout=30, message=f"topics {sorted(topics)} led")


def _produce_poison(bootstrap: str, topic: str) -> tuple[int, int]:
    """The one message keyed ``poison``: its (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    where: list[tuple[int, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        where.append((msg.partition(), msg.offset()))

    producer.produce(topic, key=POISON, value=b"hangs", on_delivery=on_delivery)
    assert producer.flush(15) == 0
    (found,) = where
    return found


def _produce_steadily(bootstrap: str, topic: str, stop: threading.Event) -> None:
    """~50 msg/s over twelve keys, every 25th keyed ``bad``, until ``stop``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    i = 0
    while not stop.wait(0.02):
        key = BAD if i % 25 == 0 else f"k{i % 12}".encode()
        producer.produce(topic, key=key, value=str(i).encode())
        producer.poll(0)
        i += 1
    producer.flush(10)


def _handler(release: threading.Event, *, hang_on_poison: bool) -> Callable[[Message], Any]:
    async def handle(msg: Message) -> None:
        if hang_on_poison and msg.key == POISON:
            while not release.is_set():
                await asyncio.sleep(0.05)
            return
        if msg.key == BAD:
            raise ValueError(f"bad message at offset {msg.offset}")
        await asyncio.sleep(random.uniform(0, 0.005))

    return handle


@pytest.fixture(scope="module")
def scenario(
    kafka_broker: Any,
    admin: AdminClient,
    prometheus_factory: Any,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scenario]:
    bootstrap = kafka_broker.bootstrap
    name = f"e2e-prom-{uuid.uuid4().hex[:8]}"
    topic, groups = name, (f"{name}-a", f"{name}-b")
    _create_topics(admin, {topic: 3, f"{topic}.dlq": 1})
    poison_partition, poison_offset = _produce_poison(bootstrap, topic)

    release, stop = threading.Event(), threading.Event()
    fast = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
    common: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topics": [topic],
        "commit_interval_ms": 200,
        "kafka": fast,
    }
    consumers = [
        ParallelConsumer(
            ConsumerConfig(
                group_id=groups[0],
                on_failure="dlq",
                max_retries=1,
                retry_backoff_ms=20,
                **common,
            ),
            _handler(release, hang_on_poison=True),
        ),
        ParallelConsumer(
            ConsumerConfig(group_id=groups[1], on_failure="skip", **common),
            _handler(release, hang_on_poison=False),
        ),
    ]
    servers: list[Server] = []
    producer = threading.Thread(target=_produce_steadily, args=(bootstrap, topic, stop))
    try:
        for consumer in consumers:
            servers.append(serve(consumer, port=0))
            consumer.start()
        producer.start()

        rules = tmp_path_factory.mktemp("rules") / "pyrallel-alerts.yml"
        rules.write_text(alerts.render_rules(alerts.build_rules(TESTING, RUNBOOK_BASE_URL)))
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "rule_files": ["pyrallel-alerts.yml"],
            "scrape_configs": [
                {
                    "job_name": "pyrallel",
                    "static_configs": [{"targets": [f"127.0.0.1:{s.port}" for s in servers]}],
                }
            ],
        }
        _, api = prometheus_factory(config, {"pyrallel-alerts.yml": rules})
        yield Scenario(api, topic, groups, poison_partition, poison_offset)
    finally:
        stop.set()
        release.set()  # lets A's drain finish instead of waiting out its deadline
        if producer.is_alive():
            producer.join(15)
        for consumer in consumers:
            consumer.stop(timeout=10)
        for server in servers:
            server.close()
        with contextlib.suppress(Exception):
            for future in admin.delete_topics([topic, f"{topic}.dlq"]).values():
                future.result(15)


def _poll_all(
    api: PrometheusAPI, exprs: list[str], need_data: set[str], timeout: float
) -> tuple[dict[str, int], dict[str, str]]:
    """Query every expression until each in ``need_data`` has returned samples once.

    Returns (expression -> most samples seen, expression -> query error). A query error
    is final: the same expression fails the same way on the next try.
    """
    seen: dict[str, int] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        for expr in exprs:
            if expr in errors or seen.get(expr, 0) > 0:
                continue
            try:
                seen[expr] = max(seen.get(expr, 0), len(api.query(expr)))
            except PromQLError as exc:
                errors[expr] = str(exc)
        pending = [e for e in need_data if e not in errors and seen.get(e, 0) == 0]
        if not pending or time.monotonic() > deadline:
            return seen, errors
        time.sleep(SCRAPE_INTERVAL_S)


# -- the tests ---------------------------------------------------------------------------


def test_targets_are_up(scenario: Scenario) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets = scenario.api.targets()
        return targets if len(targets) == 2 and all(t["health"] == "up" for t in targets) else None

    wait_until(all_up, timeout=30, message=lambda: f"both targets up: {scenario.api.targets()}")


def test_dashboard_variables_resolve_to_this_scenario(scenario: Scenario) -> None:
    queries = variable_queries()
    assert set(queries) == {"group", "topic"}, queries
    expected = {"group": set(scenario.groups), "topic": {scenario.topic}}
    for name, query in queries.items():
        match = _LABEL_VALUES.fullmatch(query)
        assert match, f"${name}: not a label_values(<selector>, <label>) query: {query}"
        selector = scenario.substitute(match["selector"])

        def resolved(
            label: str = match["label"], selector: str = selector, want: set[str] = expected[name]
        ) -> bool:
            return want <= set(scenario.api.label_values(label, selector))

        wait_until(resolved, timeout=45, message=f"${name} ({query}) to list {expected[name]}")


def test_every_dashboard_expression_returns_data(scenario: Scenario) -> None:
    raw = dashboard_expressions()
    assert len(raw) >= 20, raw  # three dashboards' worth: the reader found the targets
    exprs = {scenario.substitute(e): e for e in raw}
    seen, errors = _poll_all(scenario.api, list(exprs), set(exprs), timeout=60)
    assert not errors, "dashboard expressions Prometheus rejects:\n" + "\n".join(
        f"{exprs[e]}\n  -> {msg}" for e, msg in errors.items()
    )
    empty = [exprs[e] for e in exprs if seen.get(e, 0) == 0]
    assert not empty, "dashboard expressions with no data:\n" + "\n".join(empty)


def test_every_alert_expression_parses_and_reads_live_metrics(scenario: Scenario) -> None:
    rules = {rule.name: rule.expr for rule in alerts.alert_rules(TESTING)}
    assert set(rules) == set(alerts.alert_names())
    must = {rules[name] for name in MUST_RETURN_DATA}
    seen, errors = _poll_all(scenario.api, list(rules.values()), must, timeout=60)
    assert not errors, "alert expressions Prometheus rejects:\n" + "\n".join(
        f"{e}\n  -> {msg}" for e, msg in errors.items()
    )
    silent = [name for name in MUST_RETURN_DATA if seen.get(rules[name], 0) == 0]
    assert not silent, f"alert expressions the scenario makes true returned nothing: {silent}"

    # The rest may be legitimately empty: check that what they read is really there, so
    # an empty answer means "condition false", not "metric misspelt or missing".
    needed = {m for expr in rules.values() for m in metrics_in(expr)}
    assert len(needed) >= 10, needed  # the name matcher found the rules' metrics
    missing = [m for m in sorted(needed) if not scenario.api.query(m)]
    assert not missing, f"metrics the alert rules read have no samples: {missing}"


def test_blocking_alerts_fire_with_their_runbook(scenario: Scenario) -> None:
    def firing() -> dict[str, dict[str, Any]] | None:
        found = {
            a["labels"]["alertname"]: a
            for a in scenario.api.alerts()
            if a["state"] == "firing" and a["labels"]["alertname"] in MUST_FIRE
        }
        return found if set(found) == set(MUST_FIRE) else None

    # blocking_critical_s (8 s) + blocking_for_s (2 s) + a few scrape/eval ticks.
    fired = wait_until(
        firing,
        timeout=60,
        interval=0.5,
        message=lambda: f"{MUST_FIRE} firing: {scenario.api.alerts()}",
    )
    assert fired is not None
    severities = {rule.name: rule.severity for rule in alerts.alert_rules(TESTING)}
    for name, alert in fired.items():
        labels, notes = alert["labels"], alert["annotations"]
        assert labels["group"] == scenario.groups[0], alert  # B never blocks
        assert labels["topic"] == scenario.topic, alert
        assert labels["partition"] == str(scenario.poison_partition), alert
        assert labels["severity"] == severities[name], alert
        assert notes["runbook_url"] == alerts.runbook_url(RUNBOOK_BASE_URL, name), alert
        runbook = Path(urlparse(notes["runbook_url"]).path)
        assert runbook.is_file(), f"{name} links to a missing runbook {runbook}"
        assert f"# {name}" in runbook.read_text(encoding="utf-8")
        # The summary template queries the blocking offset back from Prometheus.
        assert f"Offset {scenario.poison_offset} " in notes["summary"], notes["summary"]

    stray = [
        a
        for a in scenario.api.alerts()
        if a["labels"]["alertname"] in MUST_FIRE and a["labels"]["group"] != scenario.groups[0]
    ]
    assert not stray, f"blocking alerts for the consumer that never blocks: {stray}"
