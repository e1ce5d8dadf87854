"""``pyrallel demo``: produce keyed messages, consume them in parallel, verify, report.

With no ``--bootstrap-servers`` it starts librdkafka's mock cluster in-process (the
embedded default). Progress goes to stderr; ``--json`` prints the verdict as one JSON
object on stdout. Exit status 0 only when nothing was lost, key order held and the
final commits equal the end offsets.

``--continuous`` runs instead until SIGINT/SIGTERM: it produces ``--rate`` messages a
second and consumes them, printing progress, with no verdict; ``--poison-key KEY`` makes
the handler hang on that key's messages, so the partition's blocking duration rises and
the blocking-duration alerts fire (the local stack in ``compose/`` runs it this way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import sys
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from pyrallel._mock import MOCK_PARTITIONS, MockCluster
from pyrallel.audit import Audit
from pyrallel.config import ENGINES, ORDERINGS, ConsumerConfig
from pyrallel.consumer import ParallelConsumer
from pyrallel.message import Message


def _latency(spec: str) -> tuple[float, float]:
    try:
        if "-" in spec:
            lo, hi = (float(x) for x in spec.split("-", 1))
        else:
            lo = hi = float(spec)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--latency-ms {spec!r}: a number of ms or a range like 0-5"
        ) from None
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"--latency-ms {spec!r}: need 0 <= low <= high")
    return lo / 1000, hi / 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyrallel demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--messages", type=int, default=20_000, help="messages to produce (default 20000)"
    )
    p.add_argument("--keys", type=int, default=200, help="distinct keys (default 200)")
    p.add_argument(
        "--partitions",
        type=int,
        default=4,
        help=f"partitions (real broker; the mock has {MOCK_PARTITIONS})",
    )
    p.add_argument(
        "--latency-ms",
        type=_latency,
        default=(0.0, 0.0),
        metavar="L|LO-HI",
        help="simulated handler latency in ms, fixed or a uniform range (default 0)",
    )
    p.add_argument("--ordering", choices=ORDERINGS, default="key")
    p.add_argument("--engine", choices=[e for e in ENGINES if e != "process"], default="async")
    p.add_argument(
        "--max-in-flight", type=int, default=1000, help="max_in_flight_messages (default 1000)"
    )
    p.add_argument(
        "--bootstrap-servers", default=None, help="a real cluster; default: embedded mock cluster"
    )
    p.add_argument("--topic", default=None, help="topic name (default: a fresh random one)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics /status /healthz on port N of --metrics-host",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics endpoint binds (default 127.0.0.1)",
    )
    p.add_argument(
        "--continuous",
        action="store_true",
        help="produce at --rate msg/s and consume until SIGINT/SIGTERM (no verdict)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="--continuous: messages produced per second (default 100)",
    )
    p.add_argument(
        "--poison-key",
        default=None,
        metavar="KEY",
        help=(
            "--continuous: also produce one message with key KEY; the handler hangs on every"
            " message with this key (an empty KEY means none)"
        ),
    )
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    p.add_argument("--quiet", action="store_true", help="no live progress")
    return p


def _create_topic(bootstrap: str, topic: str, partitions: int, *, exist_ok: bool = False) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
    )
    try:
        futures[topic].result(30)
    except KafkaException as exc:
        if not (exist_ok and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
        # A restarted continuous demo keeps its topic (and the partitions it has).
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=5).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {topic} did not get {partitions} partitions in time")


def _produce(
    bootstrap: str, topic: str, messages: int, keys: int
) -> dict[tuple[str, int], list[int]]:
    produced: dict[tuple[str, int], list[int]] = defaultdict(list)
    errors: list[str] = []

    def on_delivery(err: Any, record: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            produced[(record.topic(), record.partition())].append(record.offset())

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 4})
    for i in range(messages):
        while True:
            try:
                producer.produce(
                    topic,
                    key=f"key-{i % keys}".encode(),
                    value=str(i).encode(),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("producer could not deliver every demo message in 60 s")
    if errors:
        raise RuntimeError(f"{len(errors)} demo messages were not delivered, e.g. {errors[0]}")
    return {k: sorted(v) for k, v in produced.items()}


def _committed(
    bootstrap: str, group: str, produced: dict[tuple[str, int], list[int]]
) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 4})
    try:
        tps = [TopicPartition(t, p) for (t, p) in produced]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=15)}
    finally:
        c.close()


def _lane(ordering: str) -> Any:
    """What the audit checks order on: the key, the whole partition, or nothing."""
    if ordering == "key":
        return lambda msg: msg.key
    if ordering == "partition":
        return lambda msg: b"partition"
    return lambda msg: None


def _make_handler(engine: str, ordering: str, audit: Audit, latency: tuple[float, float]) -> Any:
    lo, hi = latency
    lane = _lane(ordering)

    if engine == "async":

        async def handle(msg: Message) -> None:
            audit.begin(msg.topic, msg.partition, msg.offset, lane(msg))
            if hi > 0:
                await asyncio.sleep(random.uniform(lo, hi))
            audit.end(msg.topic, msg.partition, msg.offset, lane(msg))

        return handle

    def handle_sync(msg: Message) -> None:
        audit.begin(msg.topic, msg.partition, msg.offset, lane(msg))
        if hi > 0:
            time.sleep(random.uniform(lo, hi))
        audit.end(msg.topic, msg.partition, msg.offset, lane(msg))

    return handle_sync


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    mock = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        mock = MockCluster()
        bootstrap = mock.bootstrap
    try:
        return _run(args, bootstrap, embedded=mock is not None)
    finally:
        if mock is not None:
            mock.close()


def _run(args: argparse.Namespace, bootstrap: str, embedded: bool) -> dict[str, Any]:
    topic = args.topic or f"pyrallel-demo-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-group"
    if not embedded:
        _create_topic(bootstrap, topic, args.partitions)
    _say(
        args,
        f"producing {args.messages} messages over {args.keys} keys to {topic} "
        f"({'embedded mock cluster' if embedded else bootstrap})",
    )
    produced = _produce(bootstrap, topic, args.messages, args.keys)
    end_offsets = {tp: offsets[-1] + 1 for tp, offsets in produced.items()}

    audit = Audit()
    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=group,
        topics=[topic],
        ordering=args.ordering,
        engine=args.engine,
        max_in_flight_messages=args.max_in_flight,
        commit_interval_ms=200,
        kafka={"log_level": 4, "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    consumer = ParallelConsumer(
        config, _make_handler(args.engine, args.ordering, audit, args.latency_ms)
    )
    server = None
    if args.metrics_port is not None:
        from pyrallel.observability.http import serve

        server = serve(consumer, port=args.metrics_port, host=args.metrics_host)
    started = time.monotonic()
    consumer.start()
    finished_at = None
    last_print = 0.0
    try:
        deadline = started + args.timeout
        while time.monotonic() < deadline and consumer.error is None:
            now = time.monotonic()
            done = audit.processed
            if done >= args.messages:
                finished_at = finished_at or now
                snap = consumer.get_metrics()
                if (
                    all(
                        (p := snap.partitions.get(tp)) is not None and p.committed_offset == end
                        for tp, end in end_offsets.items()
                    )
                    or now - finished_at > 10
                ):
                    break
            if not args.quiet and now - last_print >= 0.5:
                last_print = now
                # Rate over the processing window (from the first handler call), the same
                # window as the final msgs_per_s; the group join before it is not work.
                _progress(args, consumer, done, now - (audit.first_begin or now))
            time.sleep(0.02)
    finally:
        consumer.stop(timeout=30)
        if server is not None:
            server.close()
    duration = (finished_at or time.monotonic()) - started
    # Throughput counts from the first handler call: group join time is not processing.
    window = (audit.last_end or 0.0) - (audit.first_begin or 0.0)
    report = audit.report(produced)
    committed = _committed(bootstrap, group, produced)
    summary = {
        "processed": report.processed,
        "expected": report.expected,
        "duration_s": round(duration, 3),
        "msgs_per_s": round(report.processed / window, 1) if window > 0 else 0.0,
        "ordering_violations": report.ordering_violations + report.overlaps,
        "lost": report.lost,
        "duplicates": report.duplicates,
        "committed_equals_end": committed == end_offsets,
        "ordering": args.ordering,
        "engine": args.engine,
        "partitions": len(produced),
        "keys": args.keys,
        "cluster": "embedded-mock" if embedded else "external",
    }
    return summary


# -- continuous mode ---------------------------------------------------------------------


class _Tally:
    """Counts shared by the producer thread, the handlers and the progress line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.produced = 0
        self.undelivered = 0
        self.processed = 0

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


def _produce_forever(
    bootstrap: str,
    topic: str,
    args: argparse.Namespace,
    tally: _Tally,
    stop: threading.Event,
) -> None:
    """Produce ``args.rate`` messages a second over ``args.keys`` keys until ``stop``."""

    def on_delivery(err: Any, _record: Any) -> None:
        tally.add("undelivered" if err is not None else "produced")

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 4})
    if args.poison_key:
        producer.produce(
            topic, key=args.poison_key.encode(), value=b"poison", on_delivery=on_delivery
        )
    started = time.monotonic()
    sent = 0
    while not stop.is_set():
        # Catch up to the schedule, but never burst more than a second's worth after a
        # stall (a paused broker), so the rate stays what was asked for.
        burst = max(1, int(args.rate))
        due = int((time.monotonic() - started) * args.rate) - sent
        if due > burst:
            started += (due - burst) / args.rate
            due = burst
        for _ in range(max(due, 0)):
            try:
                producer.produce(
                    topic,
                    key=f"key-{sent % args.keys}".encode(),
                    value=str(sent).encode(),
                    on_delivery=on_delivery,
                )
            except BufferError:
                break  # the local queue is full: retry on the next tick
            sent += 1
        producer.poll(0)
        stop.wait(0.02)
    producer.flush(10)


def _continuous_handler(
    engine: str,
    latency: tuple[float, float],
    poison: bytes | None,
    tally: _Tally,
    release: threading.Event,
) -> Any:
    """The demo handler; messages keyed ``poison`` hang until ``release`` (demo exit)."""
    lo, hi = latency

    if engine == "async":

        async def handle(msg: Message) -> None:
            if poison is not None and msg.key == poison:
                # Hangs for good: the stop drain cancels it, so it is never committed.
                while not release.is_set():
                    await asyncio.sleep(0.1)
                return
            if hi > 0:
                await asyncio.sleep(random.uniform(lo, hi))
            tally.add("processed")

        return handle

    def handle_sync(msg: Message) -> None:
        if poison is not None and msg.key == poison:
            # Released only after the consumer stopped (its result then goes nowhere),
            # so the worker thread does not keep the process from exiting.
            release.wait()
            return
        if hi > 0:
            time.sleep(random.uniform(lo, hi))
        tally.add("processed")

    return handle_sync


def run_continuous(args: argparse.Namespace) -> int:
    """``--continuous``: produce and consume until SIGINT/SIGTERM; 0 on a clean stop."""
    mock = None
    bootstrap = args.bootstrap_servers
    if bootstrap is None:
        mock = MockCluster()
        bootstrap = mock.bootstrap
    stop = threading.Event()
    restore: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        return _run_continuous(args, bootstrap, stop, embedded=mock is not None)
    finally:
        for sig, previous in restore.items():
            signal.signal(sig, previous)
        if mock is not None:
            mock.close()


def _run_continuous(
    args: argparse.Namespace, bootstrap: str, stop: threading.Event, embedded: bool
) -> int:
    topic = args.topic or f"pyrallel-demo-{uuid.uuid4().hex[:8]}"
    if not embedded:
        _create_topic(bootstrap, topic, args.partitions, exist_ok=True)
    poison = args.poison_key.encode() if args.poison_key else None
    tally = _Tally()
    release = threading.Event()
    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        topics=[topic],
        ordering=args.ordering,
        engine=args.engine,
        max_in_flight_messages=args.max_in_flight,
        commit_interval_ms=500,
        kafka={"log_level": 4, "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    handler = _continuous_handler(args.engine, args.latency_ms, poison, tally, release)
    consumer = ParallelConsumer(config, handler)
    server = None
    if args.metrics_port is not None:
        from pyrallel.observability.http import serve

        server = serve(consumer, port=args.metrics_port, host=args.metrics_host)
    where = "embedded mock cluster" if embedded else bootstrap
    _say(args, f"continuous demo: {args.rate:g} msg/s over {args.keys} keys to {topic} ({where})")
    if poison is not None:
        _say(args, f"poison key {args.poison_key!r}: its messages hang the handler")
    if server is not None:
        _say(args, f"metrics: {server.url}/metrics  status: {server.url}/status")
    _say(args, "Ctrl-C (SIGINT) or SIGTERM stops")
    producer = threading.Thread(
        target=_produce_forever,
        args=(bootstrap, topic, args, tally, stop),
        name="pyrallel-demo-producer",
        daemon=True,
    )
    consumer.start()
    producer.start()
    status = 0
    try:
        last, last_processed = time.monotonic(), 0
        while not stop.wait(2.0):
            if consumer.error is not None:
                break
            now = time.monotonic()
            if not args.quiet:
                rate = (tally.processed - last_processed) / (now - last)
                _continuous_progress(consumer, tally, rate)
            last, last_processed = now, tally.processed
    finally:
        stop.set()
        producer.join(15)
        try:
            # A hung poison handler never finishes, so the drain can only end at its
            # deadline; a short one still lets the healthy work commit.
            consumer.stop(timeout=5.0 if poison is not None else 30.0)
        except Exception as exc:  # the consumer's own fatal error, already logged
            print(
                f"pyrallel demo: consumer stopped with {type(exc).__name__}: {exc}", file=sys.stderr
            )
            status = 1
        finally:
            release.set()
            if server is not None:
                server.close()
    _say(
        args,
        f"stopped: produced={tally.produced} processed={tally.processed}"
        f" undelivered={tally.undelivered}",
    )
    return status


def _continuous_progress(consumer: ParallelConsumer, tally: _Tally, rate: float) -> None:
    snap = consumer.get_metrics()
    parts = snap.partitions.values()
    print(
        f"produced={tally.produced} processed={tally.processed} msg/s={rate:,.0f}"
        f" in_flight={snap.total_in_flight}/{snap.max_in_flight}"
        f" true_lag={sum(p.true_lag for p in parts)} gaps={sum(p.gap_count for p in parts)}"
        f" max_blocking={max((p.blocking_duration_sec for p in parts), default=0.0):.0f}s"
        f" paused={snap.is_paused}",
        file=sys.stderr,
        flush=True,
    )


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def _progress(
    args: argparse.Namespace, consumer: ParallelConsumer, done: int, elapsed: float
) -> None:
    snap = consumer.get_metrics()
    lag = sum(p.true_lag for p in snap.partitions.values())
    gaps = sum(p.gap_count for p in snap.partitions.values())
    rate = done / elapsed if elapsed > 0 else 0.0
    state = "joining the group" if done == 0 else f"msg/s={rate:,.0f}"
    print(
        f"processed={done}/{args.messages} {state} in_flight={snap.total_in_flight}/"
        f"{snap.max_in_flight} true_lag={lag} gaps={gaps} paused={snap.is_paused}",
        file=sys.stderr,
    )


def _unreachable(bootstrap: str, timeout: float) -> str | None:
    """A one-line reason when no broker at ``bootstrap`` answers within ``timeout`` s."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 2: the connection-refused chatter is summarised in the one line below.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"cannot reach Kafka at {bootstrap} within {timeout:g} s: {exc.args[0].str()}"
    return None


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for name in ("messages", "keys", "partitions", "max_in_flight"):
        if getattr(args, name) < 1:
            print(f"pyrallel demo: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.continuous and not args.rate > 0:
        print("pyrallel demo: --rate must be > 0", file=sys.stderr)
        return 2
    if args.poison_key and not args.continuous:
        # A hanging key can never pass the verification the finite demo ends with.
        print("pyrallel demo: --poison-key needs --continuous", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.bootstrap_servers is not None:
        problem = _unreachable(args.bootstrap_servers, min(args.timeout, 15.0))
        if problem:
            print(f"pyrallel demo: {problem}", file=sys.stderr)
            return 2
    if args.continuous:
        return run_continuous(args)
    summary = run_demo(args)
    ok = (
        summary["lost"] == 0
        and summary["ordering_violations"] == 0
        and summary["committed_equals_end"]
    )
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for key in (
            "processed",
            "duration_s",
            "msgs_per_s",
            "lost",
            "duplicates",
            "ordering_violations",
            "committed_equals_end",
        ):
            print(f"{key:>22}: {summary[key]}")
        print(
            "OK: every offset processed, key order held, commits at end offsets" if ok else "FAILED"
        )
    return 0 if ok else 1
