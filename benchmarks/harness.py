"""`pyrallel bench`: start the broker, prepare topics once, run every scenario's contenders
alternately (A B C A B C ...), write ``latest.json`` and ``latest.md``.

Every run is its own process (see :mod:`benchmarks.protocol`) with a fresh consumer
group reading the prepared topic from the start, so runs share nothing but the broker
and the machine. Medians and spreads are in :mod:`benchmarks.report`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import externals, machine, plan, report
from benchmarks.protocol import READY, cpu_work, to_args
from benchmarks.runner import Outcome, log_tail, run_worker
from benchmarks.topics import TopicSpec, create_topics, fill, produce_at_rate

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


@dataclass
class Options:
    smoke: bool = False
    scenarios: frozenset[int] | None = None
    repeats: int | None = None
    out: Path | None = None
    bootstrap: str | None = None
    peer: bool | None = None
    """Run the Python peer; ``None`` means yes for a full run, no for ``--smoke``."""
    java: bool | None = None


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def calibrate(target_ms: float = 1.0) -> dict[str, Any]:
    """Iterations of :func:`cpu_work` that take ``target_ms`` on this core (best of 30)."""
    probe = 10_000
    best = float("inf")
    for _ in range(30):
        began = time.perf_counter()
        cpu_work(probe)
        best = min(best, time.perf_counter() - began)
    iterations = max(1, round(probe * target_ms / (best * 1000)))
    return {"iterations": iterations, "ms_per_call": target_ms, "probe_ms": round(best * 1e3, 4)}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


@contextlib.contextmanager
def _broker(opts: Options) -> Iterator[tuple[str, str]]:
    if opts.bootstrap:
        yield opts.bootstrap, "external broker (" + opts.bootstrap + ")"
        return
    from devtools.kafka_broker import KafkaBroker

    say("starting the Kafka broker (devtools/kafka_broker.py)")
    with KafkaBroker(heap="1g") as broker:
        say(f"broker {broker.bootstrap} ready in {broker.last_start_seconds:.1f} s")
        yield broker.bootstrap, f"Apache Kafka {broker.version} (KRaft, one node, 127.0.0.1)"


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.sizes = plan.SMOKE if opts.smoke else plan.FULL
        self.mode = "smoke" if opts.smoke else "full"
        self.run_id = f"bench-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.logs = ROOT / ".cache" / "bench" / "logs" / self.mode
        self.bootstrap = ""
        self.topics: dict[str, str] = {}
        self.live: list[str] = []
        self.failures = 0
        self.exts: dict[str, externals.External] = {}

    # -- preparation ------------------------------------------------------------------------

    def _prepare_externals(self) -> None:
        notes: list[str] = []
        want_peer = self.opts.peer if self.opts.peer is not None else not self.opts.smoke
        want_java = self.opts.java if self.opts.java is not None else not self.opts.smoke
        skipped = (
            "skipped (--smoke runs local contenders only; --peer/--java to add)"
            if self.opts.smoke
            else "skipped (--no-peer/--no-java)"
        )
        if want_peer:
            say("preparing the Python peer (venv under .cache/bench-peer-venv)")
            self.exts["peer"] = externals.prepare_peer(ROOT, notes)
        else:
            self.exts["peer"] = externals.External(
                f"pyrallel-consumer {plan.PEER_VERSION}", reason=skipped
            )
        if want_java:
            say("preparing the Java reference (mvn package benchmarks/java)")
            self.exts["java"] = externals.prepare_java(ROOT, notes)
        else:
            self.exts["java"] = externals.External(
                f"parallel-consumer {plan.JAVA_PC_VERSION}", reason=skipped
            )
        for note in notes:
            say(note)
        for ext in self.exts.values():
            say(f"{ext.name}: " + ("ready" if ext.available else f"not run: {ext.reason}"))

    def unavailable(self, contender: plan.Contender) -> str | None:
        if contender.family in ("peer", "java"):
            ext = self.exts[contender.family]
            return None if ext.available else ext.reason
        if contender.needs:
            try:
                importlib.import_module(contender.needs)
            except Exception as exc:
                return f"{contender.needs} is not importable ({type(exc).__name__}: {exc})"
        return None

    def _prepare_topics(self, scenarios: list[plan.Scenario]) -> None:
        wanted = {s.topic for s in scenarios}
        specs: list[TopicSpec] = []
        if "tp" in wanted:
            size = self.sizes.throughput_messages
            specs.append(TopicSpec(f"{self.run_id}-tp", plan.PARTITIONS, size, plan.KEYS))
            self.topics["tp"] = specs[-1].name
        if "stuck" in wanted:
            size = self.sizes.stuck_messages
            specs.append(TopicSpec(f"{self.run_id}-stuck", 1, size, plan.KEYS, stuck_head=True))
            self.topics["stuck"] = specs[-1].name
        for s in scenarios:
            if s.topic == "live":
                for c in s.contenders:
                    if self.unavailable(c) is None:
                        runs = self._repeats(s, c)
                        self.live += [
                            f"{self.run_id}-live-{len(self.live) + i}" for i in range(runs)
                        ]
        create_topics(
            self.bootstrap,
            [(t.name, t.partitions) for t in specs] + [(n, plan.PARTITIONS) for n in self.live],
        )
        for t in specs:
            say(
                f"filling {t.name}: {t.messages:,} records, {t.keys:,} keys, "
                f"{t.partitions} partition(s)"
            )
            seconds = fill(self.bootstrap, t)
            say(f"  done in {seconds:.1f} s")

    def _repeats(self, scenario: plan.Scenario, contender: plan.Contender) -> int:
        if self.opts.repeats is not None:
            return (
                self.opts.repeats
                if contender.repeats is None
                else min(self.opts.repeats, contender.repeats)
            )
        return contender.repeats or scenario.repeats

    # -- running ----------------------------------------------------------------------------

    def _command(self, contender: plan.Contender) -> list[str]:
        if contender.family == "peer":
            return self.exts["peer"].command
        if contender.family == "java":
            return self.exts["java"].command
        return externals.python_worker()

    def _spec(self, scenario: plan.Scenario, contender: plan.Contender, rep: int) -> dict[str, Any]:
        if contender.family == "tracker":
            return {"contender": "tracker", "seed": rep + 1, **contender.spec}
        topic = self.live.pop(0) if scenario.topic == "live" else self.topics[scenario.topic or ""]
        spec: dict[str, Any] = {
            "contender": contender.family,
            "bootstrap": self.bootstrap,
            "topic": topic,
            "group": f"{self.run_id}-{scenario.id}-{_slug(contender.id)}-{rep}",
            "partitions": 1 if scenario.topic == "stuck" else plan.PARTITIONS,
            "messages": scenario.messages,
            "max_seconds": scenario.max_seconds,
            "start_timeout": START_TIMEOUT,
            "max_in_flight": plan.MAX_IN_FLIGHT,
        }
        spec.update(scenario.work)
        spec.update(contender.spec)
        return spec

    def run_one(
        self, scenario: plan.Scenario, contender: plan.Contender, rep: int, position: int
    ) -> dict[str, Any]:
        spec = self._spec(scenario, contender, rep)
        produced: dict[str, Any] = {}
        on_ready = None
        if scenario.topic == "live":
            topic, rate = spec["topic"], self.sizes.latency_rate
            warmup = round(rate * self.sizes.latency_warmup_s)

            def on_ready() -> None:
                count = scenario.messages - warmup
                produced.update(produce_at_rate(self.bootstrap, topic, rate, count, warmup))

        log = self.logs / scenario.id / f"{_slug(contender.id)}-{rep + 1}.log"
        timeout = scenario.max_seconds + START_TIMEOUT + 120
        if contender.family == "tracker":
            timeout = 900
        outcome = run_worker(
            [*self._command(contender), *to_args(spec)],
            cwd=ROOT,
            log_path=log,
            timeout=timeout,
            on_ready=on_ready,
            sample_rss=scenario.sample_rss,
        )
        record: dict[str, Any] = {
            "rep": rep + 1,
            "position": position,
            "ok": outcome.ok,
            "wall_s": round(outcome.wall_s, 2),
            "cpu_s": round(outcome.cpu_s, 2),
            **outcome.result,
        }
        if produced:
            record["produced"] = produced
        if scenario.sample_rss:
            record.update(_rss(outcome))
        ready = outcome.mark(READY)
        if ready is not None:
            record["ready_after_s"] = round(ready - (time.time() - outcome.wall_s), 2)
        if not outcome.ok:
            self.failures += 1
            record["log"] = outcome.log
            record["log_tail"] = log_tail(outcome.log)
        value = report.field(record, scenario.metric)
        shown = "-" if value is None else f"{value:,.3f}".rstrip("0").rstrip(".")
        say(
            f"s{scenario.number} rep {rep + 1} {contender.id}: {shown} {scenario.unit}"
            + ("" if outcome.ok else f" FAILED ({record.get('error')}; log {outcome.log})")
        )
        return record

    def run_scenario(self, scenario: plan.Scenario) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for c in scenario.contenders:
            reason = self.unavailable(c)
            entries.append(
                {
                    "id": c.id,
                    "family": c.family,
                    "spec": c.spec,
                    "status": "not run" if reason else "ok",
                    "reason": reason or "",
                    "runs": [],
                }
            )
        active = [
            (c, e) for c, e in zip(scenario.contenders, entries, strict=True) if not e["reason"]
        ]
        rounds = max((self._repeats(scenario, c) for c, _ in active), default=0)
        say(f"scenario {scenario.number}: {scenario.title} ({len(active)} contenders x {rounds})")
        for rep in range(rounds):
            for position, (c, entry) in enumerate(active):
                if rep < self._repeats(scenario, c):
                    entry["runs"].append(self.run_one(scenario, c, rep, position))
        doc = {
            **{k: v for k, v in asdict(scenario).items() if k != "contenders"},
            "contenders": entries,
        }
        report.finish(doc)
        return doc

    def run(self) -> int:
        started = datetime.now(UTC)
        began = time.perf_counter()
        description = machine.describe(ROOT)
        calibration = calibrate()
        scenarios = [
            s
            for s in plan.build(self.sizes, calibration["iterations"])
            if self.opts.scenarios is None or s.number in self.opts.scenarios
        ]
        self._prepare_externals()
        results: list[dict[str, Any]] = []
        with _broker(self.opts) as (bootstrap, kafka):
            self.bootstrap = bootstrap
            description["kafka"] = kafka
            self._prepare_topics(scenarios)
            for scenario in scenarios:
                results.append(self.run_scenario(scenario))
        description["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        doc: dict[str, Any] = {
            "schema": 1,
            "mode": self.mode,
            "started": started.strftime("%Y-%m-%d %H:%M:%S"),
            "duration_s": round(time.perf_counter() - began, 1),
            "machine": description,
            "calibration": calibration,
            "externals": {
                ext.name: {
                    "available": ext.available,
                    "reason": ext.reason,
                    "versions": ext.versions,
                }
                for ext in self.exts.values()
            },
            "sizes": asdict(self.sizes),
            "scenarios": results,
        }
        doc["targets"] = report.targets(doc)
        out = self.opts.out or (
            ROOT / ".cache" / "bench" / "smoke"
            if self.opts.smoke
            else ROOT / "benchmarks" / "results"
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        text = report.markdown(doc)
        (out / "latest.md").write_text(text)
        print(text)
        say(f"wrote {out / 'latest.json'} and {out / 'latest.md'} in {doc['duration_s']:.0f} s")
        if self.failures:
            say(f"{self.failures} run(s) failed; their logs are under {self.logs}")
        return 1 if self.failures else 0


def _rss(outcome: Outcome) -> dict[str, Any]:
    """Scenario 5's RSS figures (MB = 10^6 bytes) from the samples and the worker's marks."""
    samples = outcome.rss_kib
    ready, warm, done = outcome.mark(READY), outcome.mark("warm"), outcome.mark("others_done")
    if not samples or ready is None or done is None:
        return {"rss_error": "no RSS samples or marks"}

    def mb(kib: int) -> float:
        return round(kib * 1024 / 1e6, 1)

    during = [kib for t, kib in samples if ready <= t <= done] or [samples[-1][1]]
    start = next((kib for t, kib in samples if t >= ready), samples[0][1])
    warm_kib = next((kib for t, kib in samples if warm is not None and t >= warm), start)
    end = next((kib for t, kib in reversed(samples) if t <= done), samples[-1][1])
    peak = max(during)
    return {
        "rss_start_mb": mb(start),
        "rss_warm_mb": mb(warm_kib),
        "rss_peak_mb": mb(peak),
        "rss_end_mb": mb(end),
        "rss_growth_mb": mb(peak - start),
        "rss_growth_after_warm_mb": mb(end - warm_kib),
        "rss_peak_whole_run_mb": mb(max(kib for _, kib in samples)),
        "rss_samples": len(samples),
    }


def run(opts: Options) -> int:
    return Bench(opts).run()
