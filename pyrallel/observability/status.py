"""``pyrallel status``: diagnose a running consumer from its ``/status`` endpoint.

Follows the seed's incident guide ("the consumer looks stuck"): is it paused by
backpressure (in-flight against the cap), which offset holds each partition's commit
point and for how long (worst first; very long means a looping or deadlocked handler),
which partitions carry real outstanding work (true lag), where finished work waits
behind a gap, and what was committed. Thresholds come from
:class:`pyrallel.monitoring.thresholds.Thresholds`, the same numbers the alerts use.

Exit status: 0 when the consumer is healthy, 3 when ``/status`` reports it unhealthy
(poll loop stopped or stuck), 1 when the endpoint cannot be reached or answers
something that is not a Pyrallel status, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from pyrallel.monitoring.thresholds import Thresholds

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_UNHEALTHY = 3
_MAX_ROWS = 20


def _status_url(url: str) -> str:
    base = url if "://" in url else f"http://{url}"
    base = base.rstrip("/")
    return base if base.endswith("/status") else base + "/status"


def fetch(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``/status`` under ``url``; raises :class:`OSError` or :class:`ValueError`."""
    target = _status_url(url)
    if not target.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    with urllib.request.urlopen(target, timeout=timeout) as response:
        payload = json.loads(response.read().decode())
    if not isinstance(payload, dict) or "partitions" not in payload:
        raise ValueError("the answer is not a Pyrallel /status document")
    return payload


def _tp(p: dict[str, Any]) -> str:
    return f"{p['topic']}[{p['partition']}]"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def diagnose(status: dict[str, Any], thresholds: Thresholds | None = None) -> dict[str, Any]:
    """The operator's reading of one ``/status`` document, as data (``--json`` prints it)."""
    t = thresholds or Thresholds()
    parts: list[dict[str, Any]] = list(status.get("partitions", []))
    health = status.get("health", {"ok": bool(status.get("running")), "reason": "unknown"})
    in_flight, cap = int(status["total_in_flight"]), int(status["max_in_flight"])
    findings: list[str] = []

    if not health.get("ok", False):
        findings.append(f"poll loop unhealthy: {health.get('reason')}")
    paused = bool(status["is_paused"])
    if paused:
        findings.append(
            f"paused by backpressure: {in_flight}/{cap} messages in flight. Fetching resumes "
            "as they finish; if in-flight does not fall, workers are blocked (see blocking)."
        )

    blocking = []
    for p in sorted(parts, key=lambda p: -float(p["blocking_duration_sec"])):
        if p["blocking_offset"] is None:
            continue
        held = float(p["blocking_duration_sec"])
        level = (
            "critical"
            if held >= t.blocking_critical_s
            else "warning"
            if held >= t.blocking_warning_s
            else "ok"
        )
        blocking.append(
            {
                "partition": _tp(p),
                "topic": p["topic"],
                "partition_id": p["partition"],
                "offset": p["blocking_offset"],
                "blocking_duration_sec": held,
                "level": level,
            }
        )
        if level == "critical":
            findings.append(
                f"{_tp(p)} offset {p['blocking_offset']} has blocked commits for "
                f"{_duration(held)}: its handler is looping or deadlocked (poison message?)"
            )
        elif level == "warning":
            findings.append(
                f"{_tp(p)} offset {p['blocking_offset']} has blocked commits for {_duration(held)}"
            )

    lagging = [
        {"partition": _tp(p), "true_lag": p["true_lag"]}
        for p in sorted(parts, key=lambda p: -int(p["true_lag"]))
        if p["true_lag"] >= t.true_lag_floor
    ]
    if lagging:
        findings.append(
            f"{len(lagging)} partition(s) with true lag >= {t.true_lag_floor:g}: work is "
            "outstanding inside the consumer; if it keeps rising, capacity is short "
            "(raise max_in_flight_messages, add partitions or processes)"
        )
    gaps = [
        {"partition": _tp(p), "gap_count": p["gap_count"], "blocking_offset": p["blocking_offset"]}
        for p in sorted(parts, key=lambda p: -int(p["gap_count"]))
        if p["gap_count"] > 0
    ]
    if any(g["gap_count"] >= t.gap_count_high for g in gaps):
        findings.append(
            f"gap count >= {t.gap_count_high:g} on some partition: heavy out-of-order completion "
            "behind a blocking offset"
        )
    counters = dict(status.get("counters", {}))
    if counters.get("commit_failures"):
        findings.append(f"{counters['commit_failures']} commit(s) failed since start")
    if counters.get("lost"):
        findings.append(
            f"{counters['lost']} partition(s) lost (evicted from the group): if rebalances are "
            "frequent, raise max_poll_interval_ms; max_revoke_grace_ms gives revokes time to commit"
        )
    if not findings:
        findings.append("no problem found: not paused, nothing blocked for long, lag low")

    return {
        "group_id": status.get("group_id"),
        "client_id": status.get("client_id"),
        "healthy": bool(health.get("ok", False)),
        "health": health.get("reason"),
        "running": bool(status.get("running")),
        "poll_age_sec": status.get("poll_age_sec"),
        "paused": paused,
        "in_flight": in_flight,
        "max_in_flight": cap,
        "blocking": blocking,
        "lagging": lagging,
        "gaps": gaps,
        "commits": [
            {
                "partition": _tp(p),
                "committed_offset": p.get("committed_offset"),
                "commit_offset": p.get("commit_offset"),
                "broker_lag": p.get("broker_lag"),
            }
            for p in sorted(parts, key=lambda p: (p["topic"], p["partition"]))
        ],
        "counters": counters,
        "findings": findings,
    }


def render(d: dict[str, Any]) -> str:
    """The diagnosis as text for a terminal, most urgent first."""
    lines = [
        f"consumer group={d['group_id']} client={d['client_id']}",
        f"  health: {'OK' if d['healthy'] else 'UNHEALTHY'} ({d['health']})",
    ]
    share = 100 * d["in_flight"] / d["max_in_flight"] if d["max_in_flight"] else 0.0
    state = "PAUSED by backpressure" if d["paused"] else "not paused"
    lines.append(
        f"  backpressure: {state}, in-flight {d['in_flight']}/{d['max_in_flight']} ({share:.0f} %)"
    )
    lines.append("")
    lines.append("findings:")
    lines += [f"  - {f}" for f in d["findings"]]

    def blocked(b: dict[str, Any]) -> str:
        mark = {"critical": "  CRITICAL", "warning": "  WARNING"}.get(b["level"], "")
        return (
            f"{b['partition']} offset {b['offset']} blocked for "
            f"{_duration(b['blocking_duration_sec'])}{mark}"
        )

    _section(
        lines,
        "blocking offsets (worst first)",
        d["blocking"],
        "none: no fetched offset is pending",
        blocked,
    )
    _section(
        lines,
        "true lag (largest first)",
        d["lagging"],
        "every partition below the floor",
        lambda r: f"{r['partition']} {r['true_lag']}",
    )
    _section(
        lines,
        "gaps (finished ranges waiting behind the blocking offset)",
        d["gaps"],
        "none",
        lambda g: (
            f"{g['partition']} {g['gap_count']} range(s) behind offset {g['blocking_offset']}"
        ),
    )
    _section(
        lines,
        "commits (partition: committed / next commit / broker lag)",
        d["commits"],
        "no partitions assigned",
        lambda c: (
            f"{c['partition']}: {_opt(c['committed_offset'])} / "
            f"{_opt(c['commit_offset'])} / {_opt(c['broker_lag'])}"
        ),
    )
    counters = d["counters"]
    if counters:
        lines.append("")
        lines.append("counters: " + " ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    return "\n".join(lines)


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _section(
    lines: list[str],
    title: str,
    rows: list[dict[str, Any]],
    empty: str,
    row: Callable[[dict[str, Any]], str],
) -> None:
    """A blank line, ``title:``, then the first rows (or ``empty``) and a "more" line."""
    lines += ["", f"{title}:"]
    if not rows:
        lines.append(f"  {empty}")
    lines += [f"  {row(r)}" for r in rows[:_MAX_ROWS]]
    if len(rows) > _MAX_ROWS:
        lines.append(f"  ... {len(rows) - _MAX_ROWS} more")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyrallel status", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--url",
        default="http://127.0.0.1:9464",
        help="the consumer's endpoint (pyrallel.observability.http.serve); default %(default)s",
    )
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    url = _status_url(args.url)
    try:
        status = fetch(args.url, args.timeout)
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"pyrallel status: cannot read {url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        diagnosis = diagnose(status)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"pyrallel status: {url} is not a Pyrallel status: missing {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(diagnosis, sort_keys=True))
    else:
        print(render(diagnosis))
    return EXIT_OK if diagnosis["healthy"] else EXIT_UNHEALTHY
