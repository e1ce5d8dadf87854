"""Dashboards: the seed's six panels exactly, the operator panels beside them, variables,
stable uids, links between dashboards and from panels to runbooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyrallel.monitoring import alerts, dashboards
from pyrallel.monitoring.thresholds import DEFAULT_THRESHOLDS

REPO_ROOT = Path(__file__).resolve().parents[3]

# The seed's section 4, retyped from the guide on purpose: the generator must match it.
SEED_PANELS = [
    ("pyrallel-system-overview", "System Overview", "Total In-Flight", "stat",
     "sum(pyrallel_system_in_flight)"),
    ("pyrallel-system-overview", "System Overview", "Consumer Status", "state-timeline",
     "pyrallel_system_paused"),
    ("pyrallel-performance", "Performance", "True Lag by Partition", "timeseries",
     "pyrallel_partition_true_lag"),
    ("pyrallel-performance", "Performance", "Blocking Duration", "timeseries",
     "max(pyrallel_partition_blocking_duration_sec)"),
    ("pyrallel-internal-state", "Internal State", "Gap Count", "timeseries",
     "sum(pyrallel_partition_gap_count)"),
    ("pyrallel-internal-state", "Internal State", "Queued Messages", "bargauge",
     "pyrallel_partition_queued_count"),
]  # fmt: skip
SEED_TITLES = {title for _, _, title, _, _ in SEED_PANELS}
UIDS = ["pyrallel-system-overview", "pyrallel-performance", "pyrallel-internal-state"]


def _built() -> dict[str, dict[str, Any]]:
    return {uid: dashboards.dashboard_json(d) for uid, d in dashboards.build_dashboards().items()}


def _committed() -> dict[str, dict[str, Any]]:
    out = {}
    for uid in UIDS:
        path = REPO_ROOT / "dashboards" / f"{uid}.json"
        out[uid] = json.loads(path.read_text(encoding="utf-8"))
    return out


def _panels_with_rows(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    row, out = "", []
    for panel in data["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
        else:
            out.append((row, panel))
    return out


def _panel(data: dict[str, Any], title: str) -> dict[str, Any]:
    matches = [p for _, p in _panels_with_rows(data) if p["title"] == title]
    assert len(matches) == 1, f"{title!r}: {len(matches)} panels"
    return matches[0]


@pytest.fixture(params=["built", "committed"])
def boards(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return _built() if request.param == "built" else _committed()


def test_three_dashboards_with_stable_uids_and_files() -> None:
    assert list(dashboards.TITLES) == UIDS
    assert list(_built()) == UIDS
    for uid, data in _committed().items():
        assert data["uid"] == uid
        assert data["title"] == dashboards.TITLES[uid]


@pytest.mark.parametrize(("uid", "row", "title", "type_", "expr"), SEED_PANELS)
def test_seed_panels_are_present_with_the_seed_query_text(
    boards: dict[str, dict[str, Any]], uid: str, row: str, title: str, type_: str, expr: str
) -> None:
    rows = {p["title"]: r for r, p in _panels_with_rows(boards[uid])}
    panel = _panel(boards[uid], title)
    assert rows[title] == row
    assert panel["type"] == type_
    assert panel["targets"][0]["expr"] == expr
    assert panel["targets"][0]["refId"] == "A"


def test_total_in_flight_is_yellow_at_80_and_red_at_100_percent_of_max(
    boards: dict[str, dict[str, Any]],
) -> None:
    panel = _panel(boards["pyrallel-system-overview"], "Total In-Flight")
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["thresholds"] == {
        "mode": "percentage",
        "steps": [
            {"color": "green", "value": None},
            {"color": "yellow", "value": 80.0},
            {"color": "red", "value": 100.0},
        ],
    }
    assert defaults["min"] == 0
    assert defaults["color"] == {"mode": "thresholds"}
    # Percent of what: max comes from query B, the summed configured max_in_flight.
    max_query = panel["targets"][1]
    assert max_query["refId"] == "B" and max_query["expr"] == "sum(pyrallel_system_max_in_flight)"
    (transformation,) = panel["transformations"]
    assert transformation["id"] == "configFromData"
    assert transformation["options"]["configRefId"] == "B"
    (mapping,) = transformation["options"]["mappings"]
    assert mapping["handlerKey"] == "max"
    assert mapping["fieldName"] == max_query["legendFormat"]


def test_consumer_status_maps_running_green_and_paused_red(
    boards: dict[str, dict[str, Any]],
) -> None:
    panel = _panel(boards["pyrallel-system-overview"], "Consumer Status")
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert mapping["type"] == "value"
    assert mapping["options"]["0"]["text"] == "Running"
    assert mapping["options"]["0"]["color"] == "green"
    assert mapping["options"]["1"]["text"] == "Paused"
    assert mapping["options"]["1"]["color"] == "red"


def test_true_lag_is_stacked_and_blocking_duration_draws_the_alert_lines(
    boards: dict[str, dict[str, Any]],
) -> None:
    lag = _panel(boards["pyrallel-performance"], "True Lag by Partition")
    assert lag["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    blocking = _panel(boards["pyrallel-performance"], "Blocking Duration")
    steps = blocking["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [
        None,
        DEFAULT_THRESHOLDS.blocking_warning_s,
        DEFAULT_THRESHOLDS.blocking_critical_s,
    ]
    assert blocking["fieldConfig"]["defaults"]["unit"] == "s"


def test_operator_panels_beside_the_seed(boards: dict[str, dict[str, Any]]) -> None:
    exprs = {
        p["title"]: [t["expr"] for t in p["targets"]]
        for data in boards.values()
        for _, p in _panels_with_rows(data)
    }
    joined = "\n".join(e for es in exprs.values() for e in es)
    assert "rate(messaging_client_consumed_messages_total{" in joined  # throughput
    latency = exprs["Processing latency p50 / p99"]
    assert [e.split(",")[0] for e in latency] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.99",
    ]
    assert all("messaging_process_duration_seconds_bucket{" in e for e in latency)
    for needle in (
        "pyrallel_partition_broker_lag{",
        "pyrallel_commits_total{",
        "pyrallel_rebalances_total{",
        "pyrallel_retries_total{",
        "pyrallel_dlq_messages_total{",
        "pyrallel_system_poll_age_sec{",
        "pyrallel_worker_restarts_total{",
    ):
        assert needle in joined, needle


def test_added_panels_filter_on_the_group_variable(boards: dict[str, dict[str, Any]]) -> None:
    for data in boards.values():
        for _, panel in _panels_with_rows(data):
            if panel["title"] in SEED_TITLES:
                continue
            for target in panel["targets"]:
                assert '=~"$group"' in target["expr"], (panel["title"], target["expr"])


def test_variables_and_datasource(boards: dict[str, dict[str, Any]]) -> None:
    assert dashboards.PROMETHEUS_DATASOURCE_UID == "pyrallel-prometheus"
    for data in boards.values():
        variables = {v["name"]: v for v in data["templating"]["list"]}
        assert list(variables) == ["datasource", "group", "topic"]
        ds = variables["datasource"]
        assert ds["type"] == "datasource" and ds["query"] == "prometheus"
        assert ds["current"]["value"] == dashboards.PROMETHEUS_DATASOURCE_UID
        for name in ("group", "topic"):
            assert variables[name]["type"] == "query"
            assert variables[name]["includeAll"] and variables[name]["multi"]
            assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for _, panel in _panels_with_rows(data):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]


def test_each_dashboard_links_to_the_other_two(boards: dict[str, dict[str, Any]]) -> None:
    for uid, data in boards.items():
        urls = sorted(link["url"] for link in data["links"])
        assert urls == sorted(f"/d/{other}" for other in UIDS if other != uid)
        assert all(link["includeVars"] and link["keepTime"] for link in data["links"])


def test_every_alert_has_a_panel_linking_to_its_runbook() -> None:
    index = dashboards.panel_index()
    for name in alerts.alert_names():
        assert any(name in p.alerts for p in index), f"no panel links to {name}"
    data = _built()["pyrallel-performance"]
    links = _panel(data, "Blocking Duration")["links"]
    assert {link["url"] for link in links} == {
        alerts.runbook_url(alerts.DEFAULT_RUNBOOK_BASE_URL, alerts.COMMIT_BLOCKED),
        alerts.runbook_url(alerts.DEFAULT_RUNBOOK_BASE_URL, alerts.POISON_PILL),
    }


def test_runbook_base_url_reaches_panel_links() -> None:
    base = "https://runbooks.example.test/pyrallel"
    built = dashboards.build_dashboards(runbook_base_url=base)
    data = dashboards.dashboard_json(built["pyrallel-system-overview"])
    urls = {link["url"] for _, p in _panels_with_rows(data) for link in p["links"]}
    assert f"{base}/PyrallelConsumerPaused.md" in urls


def test_panel_ids_are_unique_and_panels_do_not_overlap(
    boards: dict[str, dict[str, Any]],
) -> None:
    for data in boards.values():
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for panel in data["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert not cells & mine, f"{panel['title']} overlaps"
            cells |= mine


def test_target_expression_list_covers_every_panel() -> None:
    exprs = dashboards.all_target_expressions()
    for _, _, _, _, expr in SEED_PANELS:
        assert expr in exprs
    assert len(exprs) == sum(
        len(p["targets"]) for data in _built().values() for _, p in _panels_with_rows(data)
    )


def test_rendering_is_deterministic_json_with_sorted_keys() -> None:
    for dashboard in dashboards.build_dashboards().values():
        text = dashboards.render_dashboard(dashboard)
        assert text == dashboards.render_dashboard(dashboard)
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
