"""Medians, spreads, ratios, the targets, and the Markdown table of a benchmark run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.plan import IO_LATENCY_MS, KEYS, MAX_IN_FLIGHT

LITTLE_BOUND = min(KEYS, MAX_IN_FLIGHT) / (IO_LATENCY_MS / 1000)
DASH = "\u2013"  # an en dash: empty cells and ranges in the Markdown


def field(record: dict[str, Any], path: str) -> float | None:
    """``record["a"]["b"]`` for ``"a.b"``, as a float, or None when absent."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    out: dict[str, float | int] = {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "min": ordered[0],
        "max": ordered[-1],
    }
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        out["q1"], out["q3"] = q1, q3
    return out


def finish(scenario: dict[str, Any]) -> None:
    """Fill each contender's ``summary`` and ``ratio``, and the scenario's ``derived``."""
    fields = [scenario["metric"], *scenario["summaries"]]
    medians: dict[str, float] = {}
    for contender in scenario["contenders"]:
        ok = [run for run in contender["runs"] if run.get("ok")]
        summary = {}
        for path in fields:
            values = [v for run in ok if (v := field(run, path)) is not None]
            if values:
                summary[path] = summarize(values)
        contender["summary"] = summary
        if scenario["metric"] in summary:
            medians[contender["id"]] = float(summary[scenario["metric"]]["median"])
        if contender["status"] == "ok" and not ok:
            contender["status"] = "failed"
    reference = medians.get(scenario["reference"])
    for contender in scenario["contenders"]:
        median = medians.get(contender["id"])
        contender["ratio"] = (
            round(median / reference, 4) if median is not None and reference else None
        )
    derived: dict[str, Any] = {}
    if scenario["id"] == "io":
        derived["little_bound_msg_s"] = LITTLE_BOUND
        derived["of_little_bound"] = {cid: round(m / LITTLE_BOUND, 4) for cid, m in medians.items()}
    if scenario["id"] == "cpu":
        one, two = medians.get("pyrallel key/process x1"), medians.get("pyrallel key/process x2")
        derived["process_speedup"] = round(two / one, 3) if one and two else None
    if scenario["id"] == "telemetry" and reference:
        derived["cost"] = {cid: round(1 - m / reference, 4) for cid, m in medians.items()}
    scenario["derived"] = derived


def _scenario(doc: dict[str, Any], sid: str) -> dict[str, Any] | None:
    return next((s for s in doc["scenarios"] if s["id"] == sid), None)


def _median(doc: dict[str, Any], sid: str, cid: str, path: str | None = None) -> float | None:
    scenario = _scenario(doc, sid)
    if scenario is None:
        return None
    for contender in scenario["contenders"]:
        if contender["id"] == cid:
            stats = contender.get("summary", {}).get(path or scenario["metric"])
            return float(stats["median"]) if stats else None
    return None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, reported (never asserted): value, threshold, met or not run."""
    out: list[dict[str, Any]] = []

    def add(text: str, value: float | None, threshold: float, higher: bool, how: str) -> None:
        met = None if value is None else (value >= threshold if higher else value < threshold)
        out.append(
            {
                "target": text,
                "value": None if value is None else round(value, 3),
                "threshold": threshold,
                "met": met,
                "how": how,
            }
        )

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    key = _median(doc, "noop", "pyrallel key/async")
    add(
        "no-op key-ordered >= 0.25 of raw",
        ratio(key, _median(doc, "noop", "raw confluent-kafka")),
        0.25,
        True,
        "s1 median pyrallel key/async / median raw",
    )
    peer_id = next(
        (
            c["id"]
            for s in doc["scenarios"]
            if s["id"] == "noop"
            for c in s["contenders"]
            if c["family"] == "peer"
        ),
        "",
    )
    add(
        "no-op key-ordered >= 10x the peer",
        ratio(key, _median(doc, "noop", peer_id)),
        10.0,
        True,
        "s1 median pyrallel key/async / median pyrallel-consumer",
    )
    add(
        "I/O-bound >= 0.8 of the Little's-law bound",
        ratio(_median(doc, "io", "pyrallel key/async"), LITTLE_BOUND),
        0.8,
        True,
        f"s2 median pyrallel key/async / {LITTLE_BOUND:,.0f} msg/s",
    )
    cpu = _scenario(doc, "cpu")
    add(
        "process speed-up >= 1.7 on 2 cores",
        None if cpu is None else cpu["derived"].get("process_speedup"),
        1.7,
        True,
        "s3 median process_count=2 / median process_count=1",
    )
    null = _median(doc, "telemetry", "pyrallel key/async NullTelemetry")
    for label in ("SDK MeterProvider + Prometheus reader", "default private provider"):
        cid = f"pyrallel key/async metrics ({label})"
        value = ratio(_median(doc, "telemetry", cid), null)
        add(
            f"metrics-on cost < 10 % ({label})",
            None if value is None else 1 - value,
            0.10,
            False,
            "s6 1 - median metrics / median NullTelemetry",
        )
    add(
        "RSS flat within 50 MB across scenario 5",
        _median(doc, "stuck", "pyrallel key/async"),
        50.0,
        False,
        "s5 peak RSS - RSS at assignment (includes librdkafka's prefetch filling), MB",
    )
    add(
        "RSS flat within 50 MB across scenario 5, after warm-up",
        _median(doc, "stuck", "pyrallel key/async", "rss_growth_after_warm_mb"),
        50.0,
        False,
        "s5 RSS when every later record is done - RSS at 10 % processed, MB",
    )
    return out


# -- Markdown -------------------------------------------------------------------------------


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return DASH
    if unit == "msg/s":
        return f"{value:,.0f}"
    if unit in ("MB", "KiB"):
        return f"{value:,.1f}"
    if unit == "ns":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _stat(contender: dict[str, Any], path: str, key: str = "median") -> float | None:
    stats = contender.get("summary", {}).get(path)
    return None if not stats or key not in stats else float(stats[key])


def _spread(contender: dict[str, Any], path: str, unit: str) -> tuple[str, str]:
    stats = contender.get("summary", {}).get(path)
    if not stats:
        return DASH, DASH
    span = f"{_num(stats['min'], unit)} {DASH} {_num(stats['max'], unit)}"
    iqr = f"{_num(stats['q1'], unit)} {DASH} {_num(stats['q3'], unit)}" if "q1" in stats else DASH
    return span, iqr


def _status_cell(contender: dict[str, Any]) -> str:
    if contender["status"] == "not run":
        return f"not run: {contender['reason']}"
    if contender["status"] == "failed":
        return f"failed: {contender.get('reason') or 'see runs'}"
    return ""


def _table(scenario: dict[str, Any]) -> list[str]:
    sid, unit, metric = scenario["id"], scenario["unit"], scenario["metric"]
    ref = scenario["reference"]
    extra_cols: list[tuple[str, str, str]] = []  # header, field path, unit
    if sid == "latency":
        extra_cols = [("p50 ms", "latency_ms.p50", "ms"), ("max ms", "latency_ms.max", "ms")]
    elif sid == "tracker":
        extra_cols = [
            ("µs/completion", "us_per_completion", "µs"),
            ("peak KiB", "peak_kib", "KiB"),
            ("gap_count read ns", "reads_at_half.gap_count_ns", "ns"),
            ("blocking_offset read ns", "reads_at_half.blocking_offset_ns", "ns"),
            ("completed_ranges() ms", "reads_at_half.completed_ranges_ms", "ms"),
        ]
    elif sid == "io":
        extra_cols = [
            ("running (mean)", "watch.mean_running", "n"),
            ("queued (mean)", "watch.mean_queued", "n"),
            ("partitions with work", "watch.mean_partitions_with_work", "n"),
        ]
    elif sid == "stuck":
        extra_cols = [
            ("RSS start MB", "rss_start_mb", "MB"),
            ("warm MB", "rss_warm_mb", "MB"),
            ("peak MB", "rss_peak_mb", "MB"),
            ("end MB", "rss_end_mb", "MB"),
            ("end - warm MB", "rss_growth_after_warm_mb", "MB"),
            ("msg/s", "rate", "msg/s"),
            ("max true_lag", "watch.max_true_lag", "n"),
        ]
    metric_name = {"latency": "p99 ms", "tracker": "time s", "stuck": "RSS growth MB"}.get(
        sid, f"median {unit}"
    )
    head = ["contender", metric_name, f"min {DASH} max", "IQR"]
    head += [h for h, _, _ in extra_cols]
    if sid == "io":
        head.append(f"of bound ({LITTLE_BOUND:,.0f})")
    if sid == "telemetry":
        head.append("cost")
    head += [f"ratio to {ref}", "runs"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    derived = scenario.get("derived", {})
    for c in scenario["contenders"]:
        status = _status_cell(c)
        if status and not c.get("summary"):
            lines.append(f"| {c['id']} | {status} |" + " |" * (len(head) - 2))
            continue
        span, iqr = _spread(c, metric, unit)
        row = [c["id"], _num(_stat(c, metric), unit), span, iqr]
        row += [_num(_stat(c, path), u) for _, path, u in extra_cols]
        if sid == "io":
            share = derived.get("of_little_bound", {}).get(c["id"])
            row.append(DASH if share is None else f"{share:.1%}")
        if sid == "telemetry":
            cost = derived.get("cost", {}).get(c["id"])
            row.append(DASH if cost is None else f"{cost:+.1%}")
        row.append(DASH if c.get("ratio") is None else f"{c['ratio']:.2f}")
        ok = sum(1 for r in c["runs"] if r.get("ok"))
        row.append(f"{ok}/{len(c['runs'])}" + (f" ({status})" if status else ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# pyrallel bench — {doc['mode']} run",
        "",
        f"{doc['started']} UTC, {doc['duration_s']:.0f} s. Generated by `pyrallel bench"
        + (" --smoke" if doc["mode"] == "smoke" else "")
        + "` (see benchmarks/README.md); every number is the median of the runs, "
        f"with min {DASH} max and the interquartile range (IQR) beside it. Contenders of a "
        "scenario ran alternately (A B C A B C ...), each run in a fresh process and a "
        "fresh consumer group.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}: {m['cores']} cores ({m['cores_usable']} usable) |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS | {m['os']} |",
        f"| Python | {m['python']} |",
        f"| confluent-kafka / librdkafka | {m['confluent_kafka']} / {m['librdkafka']} |",
        f"| Kafka broker | {m.get('kafka', '?')} |",
        f"| load average (1/5/15 min) start → end | {m['loadavg_start']} → "
        f"{m.get('loadavg_end', '?')} (shared machine: other jobs ran too) |",
        f"| pyrallel commit | {m['pyrallel_commit']} |",
    ]
    for name, ext in doc["externals"].items():
        versions = ", ".join(f"{k} {v}" for k, v in ext.get("versions", {}).items())
        state = versions if ext["available"] else f"not run: {ext['reason']}"
        lines.append(f"| {name} | {state} |")
    cal = doc.get("calibration", {})
    if cal:
        lines.append(
            f"| CPU work calibration | cpu_work({cal['iterations']:,}) ≈ "
            f"{cal['ms_per_call']:.3f} ms on this machine at start |"
        )
    lines.append("")
    for s in doc["scenarios"]:
        better = "higher is better" if s["higher_is_better"] else "lower is better"
        lines += ["", f"## {s['number']}. {s['title']}", "", f"*{s['unit']}, {better}.*", ""]
        lines += _table(s)
        derived = s.get("derived", {})
        if derived.get("process_speedup") is not None:
            lines += ["", f"Process speed-up (x2 / x1): **{derived['process_speedup']:.2f}**"]
        if s["notes"]:
            lines.append("")
            lines += [f"- {note}" for note in s["notes"]]
    lines += ["", "## Targets (reported, not asserted)", ""]
    lines += ["| target | value | met | how |", "|---|---:|---|---|"]
    for t in doc["targets"]:
        met = "not run" if t["met"] is None else ("yes" if t["met"] else "**no**")
        value = DASH if t["value"] is None else f"{t['value']:,.3g}"
        lines.append(f"| {t['target']} | {value} | {met} | {t['how']} |")
    return "\n".join(lines) + "\n"
