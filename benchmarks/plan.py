"""What is measured: the scenarios, their contenders and sizes (full run and smoke)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KEYS = 1000
MAX_IN_FLIGHT = 1000
PARTITIONS = 8
IO_LATENCY_MS = 5.0

PEER_VERSION = "1.0.0"
JAVA_PC_VERSION = "0.5.3.3"


@dataclass(frozen=True)
class Sizes:
    """Message counts and time caps. A run stops at its target count or ``window_s`` after
    its first handler call, whichever comes first, so slow contenders cannot blow the
    time budget and fast ones are not measured on a too-short window."""

    throughput_messages: int
    window_s: float
    cpu_window_s: float
    stuck_messages: int
    tracker_completions: int
    tracker_full_completions: tuple[int, ...]
    latency_rate: float
    latency_seconds: float
    latency_warmup_s: float
    repeats: int
    repeats_long: int


FULL = Sizes(
    throughput_messages=500_000,
    window_s=5.0,
    cpu_window_s=6.0,
    stuck_messages=1_000_000,
    tracker_completions=1_000_000,
    tracker_full_completions=(100_000, 200_000),
    latency_rate=1000.0,
    latency_seconds=8.0,
    latency_warmup_s=1.0,
    repeats=3,
    repeats_long=1,
)
SMOKE = Sizes(
    throughput_messages=3_000,
    window_s=0.75,
    cpu_window_s=0.75,
    stuck_messages=20_000,
    tracker_completions=20_000,
    tracker_full_completions=(2_500, 5_000),
    latency_rate=400.0,
    latency_seconds=0.5,
    latency_warmup_s=0.25,
    repeats=1,
    repeats_long=1,
)


@dataclass(frozen=True)
class Contender:
    """One thing that consumes: ``family`` picks the worker (raw, pyrallel, peer, java,
    tracker); ``spec`` is passed to it as ``key=value`` arguments."""

    id: str
    family: str
    spec: dict[str, Any] = field(default_factory=dict)
    repeats: int | None = None
    """Overrides the scenario's repetitions (long single runs)."""
    needs: str | None = None
    """A pyrallel module this contender needs (being written elsewhere; may be missing)."""


@dataclass(frozen=True)
class Scenario:
    number: int
    id: str
    title: str
    metric: str
    """Result field (dotted path) whose median is compared; ``rss_growth_mb`` for s5."""
    unit: str
    higher_is_better: bool
    contenders: tuple[Contender, ...]
    reference: str
    """Contender id the ratios are taken against."""
    summaries: tuple[str, ...] = ()
    """More result fields to summarise (median and spread) beside ``metric``."""
    topic: str | None = None
    """``tp`` (the shared pre-produced topic), ``stuck``, ``live`` (one fresh topic per run)."""
    work: dict[str, Any] = field(default_factory=dict)
    messages: int = 0
    max_seconds: float = 0.0
    repeats: int = 1
    sample_rss: float | None = None
    notes: tuple[str, ...] = ()


RAW = Contender("raw confluent-kafka", "raw")


def py(
    ordering: str, engine: str, label: str = "", *, needs: str | None = None, **spec: Any
) -> Contender:
    name = f"pyrallel {ordering}/{engine}" + (f" {label}" if label else "")
    if needs is None and engine == "process":
        needs = "pyrallel.engines.process"
    return Contender(
        name, "pyrallel", {"ordering": ordering, "engine": engine, **spec}, needs=needs
    )


def peer(engine: str = "async", **spec: Any) -> Contender:
    label = "" if engine == "async" else f" {engine}"
    return Contender(
        f"pyrallel-consumer {PEER_VERSION} (peer){label}",
        "peer",
        {"ordering": "key", "engine": engine, **spec},
    )


JAVA = Contender(f"parallel-consumer {JAVA_PC_VERSION} (Java)", "java", {"ordering": "key"})

TWO_STEP = py("key", "async", "two-step consume (proposed fix, not shipped)", consume="two-step")
"""Pyrallel with a consumer (through ``consumer_factory``) whose batch ``consume`` returns
as soon as one record is there: the fix proposed for the poll loop's idle wait."""


def build(sizes: Sizes, cpu_iterations: int) -> list[Scenario]:
    s = sizes
    orderings = ("key", "partition", "unordered")
    lb = min(KEYS, MAX_IN_FLIGHT) / (IO_LATENCY_MS / 1000)
    return [
        Scenario(
            1,
            "noop",
            f"No-op handler, {KEYS:,} keys, {PARTITIONS} partitions",
            "rate",
            "msg/s",
            True,
            (
                RAW,
                *(py(o, "async") for o in orderings),
                *(py(o, "thread") for o in orderings),
                TWO_STEP,
                peer(),
                JAVA,
            ),
            reference=RAW.id,
            topic="tp",
            work={"work": "noop"},
            messages=s.throughput_messages,
            max_seconds=s.window_s,
            repeats=s.repeats,
            notes=(
                "raw = plain consume loop (block for one record, then take up to 499 already "
                "fetched), handler inline, async commit every 1 s: the ceiling.",
                "Pyrallel with its default telemetry (OpenTelemetry metrics, private "
                "provider, not scraped); thread engine with its default pool "
                "(min(64, max_in_flight) threads).",
            ),
        ),
        Scenario(
            2,
            "io",
            f"I/O-bound handler ({IO_LATENCY_MS:g} ms sleep), {KEYS:,} keys, "
            f"max_in_flight {MAX_IN_FLIGHT:,}",
            "rate",
            "msg/s",
            True,
            (
                RAW,
                *(py(o, "async") for o in orderings),
                *(py(o, "thread", thread_count=MAX_IN_FLIGHT) for o in orderings),
                peer(),
                JAVA,
            ),
            reference=RAW.id,
            summaries=(
                "watch.mean_running",
                "watch.mean_queued",
                "watch.mean_partitions_with_work",
            ),
            topic="tp",
            work={"work": "sleep", "sleep_ms": IO_LATENCY_MS},
            messages=s.throughput_messages,
            max_seconds=s.window_s,
            repeats=s.repeats,
            notes=(
                f"Little's-law bound = min(keys, max_in_flight) / latency = {lb:,.0f} msg/s.",
                "asyncio.sleep on the async engines (and the peer), blocking time.sleep on the "
                "thread engine (thread_count = max_in_flight), raw and Java "
                "(maxConcurrency = max_in_flight).",
                "raw handles one message at a time: the floor.",
                "running / queued / partitions with work: Pyrallel's own snapshot every "
                "0.25 s (running = held - queued behind a busy lane); running / latency is "
                "the bound the consumer actually gave itself.",
            ),
        ),
        Scenario(
            3,
            "cpu",
            "CPU-bound handler (~1 ms pure Python), process engine",
            "rate",
            "msg/s",
            True,
            (
                RAW,
                py("key", "process", "x1", process_count=1),
                py("key", "process", "x2", process_count=2),
                peer("process", process_count=2),
            ),
            reference="pyrallel key/process x1",
            topic="tp",
            work={"work": "cpu", "cpu_iterations": cpu_iterations},
            messages=s.throughput_messages,
            max_seconds=s.cpu_window_s,
            repeats=s.repeats,
            notes=(
                f"cpu_work({cpu_iterations:,}) per message, calibrated to ~1 ms on an idle "
                "core at the start of the run.",
                "Speed-up = process_count=2 / process_count=1 (the reference).",
            ),
        ),
        Scenario(
            4,
            "tracker",
            f"Offset tracker: {s.tracker_completions:,} completions in random order",
            "window_s",
            "s",
            False,
            (
                Contender(
                    f"window {MAX_IN_FLIGHT:,} (= max_in_flight)",
                    "tracker",
                    {"completions": s.tracker_completions, "window": MAX_IN_FLIGHT},
                ),
                Contender(
                    "window 10,000",
                    "tracker",
                    {"completions": s.tracker_completions, "window": 10_000},
                    repeats=s.repeats_long,
                ),
                *(
                    Contender(
                        f"full shuffle ({n:,} pending)",
                        "tracker",
                        {"completions": n, "window": 0},
                        repeats=s.repeats_long,
                    )
                    for n in s.tracker_full_completions
                ),
            ),
            reference=f"window {MAX_IN_FLIGHT:,} (= max_in_flight)",
            summaries=(
                "us_per_completion",
                "peak_kib",
                "reads_at_half.gap_count_ns",
                "reads_at_half.blocking_offset_ns",
                "reads_at_half.completed_ranges_ms",
            ),
            repeats=s.repeats,
            notes=(
                "window W: at most W offsets pending, each completion a random pending one, "
                "the next offset fetched as one completes (the consumer's pattern).",
                "full shuffle: every offset fetched first, then completed in a random "
                "permutation (worst case; the consumer never holds more than max_in_flight). "
                "Its cost grows with the square of the pending count (a list delete per "
                "completion), so it runs at two smaller sizes to show the slope.",
                "Reads are timed half-way, when the tracker holds about the most gaps.",
            ),
        ),
        Scenario(
            5,
            "stuck",
            f"Memory: head offset stuck while {s.stuck_messages:,} later messages arrive",
            "rss_growth_mb",
            "MB",
            False,
            (py("key", "async"), RAW),
            reference="pyrallel key/async",
            summaries=(
                "rss_start_mb",
                "rss_warm_mb",
                "rss_peak_mb",
                "rss_end_mb",
                "rss_growth_after_warm_mb",
                "rate",
                "watch.max_true_lag",
                "watch.max_gap_count",
            ),
            topic="stuck",
            work={"work": "stuck"},
            messages=s.stuck_messages,
            max_seconds=600.0,
            repeats=s.repeats_long,
            sample_rss=0.1,
            notes=(
                "One partition; offset 0 (its own key) blocks until every later record is "
                "done, so the commit point stays at 0 for the whole run.",
                "RSS of the consumer process from /proc every 0.1 s: start = at assignment, "
                "warm = 10 % processed, end = all later records done (head still stuck); "
                "growth = peak - start.",
                "raw (the same topic, nothing stuck, nothing held) is the control: its growth "
                "is librdkafka's prefetch queue filling (queued.max.messages.kbytes), which "
                "every contender pays.",
            ),
        ),
        Scenario(
            6,
            "telemetry",
            "Telemetry cost: no-op handler, key/async",
            "rate",
            "msg/s",
            True,
            (
                py("key", "async", "NullTelemetry", telemetry="null"),
                py(
                    "key",
                    "async",
                    "metrics (default private provider)",
                    needs="pyrallel.observability.metrics",
                    telemetry="metrics-default",
                    scrape_s=1,
                ),
                py(
                    "key",
                    "async",
                    "metrics (SDK MeterProvider + Prometheus reader)",
                    needs="pyrallel.observability.metrics",
                    telemetry="metrics",
                    scrape_s=1,
                ),
                py(
                    "key",
                    "async",
                    "metrics + spans (100 % sampled)",
                    needs="pyrallel.observability.tracing",
                    telemetry="spans",
                    scrape_s=1,
                ),
            ),
            reference="pyrallel key/async NullTelemetry",
            topic="tp",
            work={"work": "noop"},
            messages=s.throughput_messages,
            max_seconds=s.window_s,
            repeats=s.repeats,
            notes=(
                "Metrics variants are scraped (prometheus_client.generate_latest) every 1 s.",
                "Spans: SDK TracerProvider, ALWAYS_ON sampler, a span processor that drops "
                "every span (no export cost, all recording cost).",
            ),
        ),
        Scenario(
            7,
            "latency",
            f"End-to-end latency at {s.latency_rate:,.0f} msg/s (below capacity), no-op handler",
            "latency_ms.p99",
            "ms",
            False,
            (
                RAW,
                py("key", "async"),
                py("unordered", "async"),
                py("key", "thread"),
                TWO_STEP,
                peer(),
                JAVA,
            ),
            reference=RAW.id,
            summaries=("latency_ms.p50", "latency_ms.p90", "latency_ms.max"),
            topic="live",
            work={"work": "latency"},
            messages=int(s.latency_rate * (s.latency_warmup_s + s.latency_seconds)),
            max_seconds=s.latency_warmup_s + s.latency_seconds + 15,
            repeats=s.repeats,
            notes=(
                "Produce time (time.time_ns() in the value, linger.ms=0) to handler end; one "
                "fresh topic per run, producing starts once the consumer is assigned.",
                f"The first {s.latency_warmup_s:g} s of records are warm-up (connection set-up, "
                f"first fetches): consumed, not counted; then {s.latency_seconds:g} s are "
                "measured.",
            ),
        ),
    ]
