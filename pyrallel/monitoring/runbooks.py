"""Runbook pages, one per alert, generated to ``runbooks/<AlertName>.md``.

Every page has the four sections an on-call engineer reads in order: **Meaning**,
**Impact**, **Diagnosis** (the alert's exact PromQL, the dashboard panels that link to the
page, and what to read in ``pyrallel status``) and **Mitigation** (the seed's tuning and
incident advice). A closing table lists the thresholds with the reason for each.

Numbers are never typed here: they come from
:class:`~pyrallel.monitoring.thresholds.Thresholds`, the PromQL from the alert rules and
the panel names from the generated dashboards, so a page cannot disagree with its alert.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyrallel.monitoring import alerts
from pyrallel.monitoring import dashboards as dash
from pyrallel.monitoring.thresholds import (
    DEFAULT_THRESHOLDS,
    DURATION_FIELDS,
    Thresholds,
    human_duration,
    human_span,
    number,
    percent,
    prom_duration,
)
from pyrallel.observability import catalog as c

SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
STATUS_COMMAND = "pyrallel status"
"""The CLI that reads a running consumer's ``/status`` (``get_metrics()`` as JSON)."""


@dataclass(frozen=True)
class Runbook:
    """The prose of one page; the generator adds the PromQL, panels and thresholds."""

    meaning: str
    impact: str
    status: str
    """What to read in ``pyrallel status`` (``get_metrics()`` field names)."""
    queries: tuple[tuple[str, str], ...]
    """Further diagnosis queries: (what it shows, PromQL)."""
    mitigation: tuple[str, ...]


def _rate(metric: c.MetricDef, by: str, selector: str = "", window: str = "5m") -> str:
    return f"sum by ({by}) (rate({metric.prometheus}{selector}[{window}]))"


def _quantile(q: float) -> str:
    bucket = c.PROCESS_DURATION.prometheus + "_bucket"
    return f"histogram_quantile({q:g}, sum by (le) (rate({bucket}[5m])))"


def _p99() -> str:
    return _quantile(0.99)


def _more_than(limit: float) -> str:
    return "at least one" if limit == 0 else f"more than {number(limit)}"


def _pages(t: Thresholds) -> dict[str, Runbook]:
    engine_advice = (
        "CPU-bound handlers on the process engine: set `process_count` close to"
        " `os.cpu_count()`; more processes than cores only adds contention. I/O-bound"
        ' handlers: use the async engine (`engine="async"`, `AsyncExecutionEngine`), which'
        " keeps many calls in flight in one process, rather than raising `process_count`."
    )
    in_flight_advice = (
        "Size `max_in_flight_messages` at workers x 2 to workers x 10. Too low starves the"
        " workers; too high costs memory and re-processing on every rebalance. Raise it only"
        " when workers sit idle while messages wait behind busy keys (`queued_count`)."
    )
    poison_advice = (
        "Set `handler_timeout_ms` so a hung call fails instead of holding the partition, and"
        ' choose what happens after the last attempt: `on_failure="dlq"` writes the message'
        " to the dead-letter topic (`dlq_topic`, default `<topic>.dlq`) and the partition"
        ' moves on; `on_failure="skip"` commits it as done and counts it in'
        f" `{c.FAILURES_SKIPPED.prometheus}`."
    )
    blocking_offset = c.PARTITION_BLOCKING_OFFSET.prometheus
    queued = c.PARTITION_QUEUED_COUNT.prometheus
    consumed = _rate(c.CONSUMED_MESSAGES, "messaging_destination_name")
    restarts = c.WORKER_RESTARTS.prometheus
    return {
        alerts.IN_FLIGHT_HIGH: Runbook(
            meaning=(
                f"The consumer has held at least {percent(t.in_flight_warning_ratio)} of its"
                " `max_in_flight_messages` (messages processing plus messages waiting behind"
                f" busy keys) for {human_duration(t.in_flight_warning_for_s)}. At the cap"
                " backpressure pauses fetching."
            ),
            impact=(
                "Nothing is wrong yet, but the headroom is gone: the next burst pauses"
                " consumption, broker lag grows, and a rebalance now has more uncommitted work"
                " to redo."
            ),
            status=(
                "compare `total_in_flight` with `max_in_flight`, and look for partitions with a"
                " large `queued_count` (messages waiting behind one busy key)."
            ),
            queries=(
                ("Handler latency p99 (slower handlers fill the cap)", _p99()),
                ("Partitions with the most waiting messages", f"topk(10, {queued})"),
            ),
            mitigation=(
                "If handler latency rose, fix the slow dependency first: more concurrency does"
                " not help a saturated downstream.",
                engine_advice,
                in_flight_advice,
                "If one key or partition holds most of `queued_count`, the load is skewed: more"
                " partitions or a better-spread key help, more workers do not.",
            ),
        ),
        alerts.IN_FLIGHT_SATURATED: Runbook(
            meaning=(
                "In-flight has been at the cap"
                f" ({percent(t.in_flight_critical_ratio)} of `max_in_flight_messages`) for"
                f" {human_duration(t.in_flight_critical_for_s)}: fetching of every assigned"
                " partition is paused and completions are not freeing slots."
            ),
            impact=(
                "This consumer has stopped reading. Broker lag grows on all its partitions"
                " and end-to-end latency grows with it."
            ),
            status=(
                "`is_paused` is true and `total_in_flight` equals `max_in_flight`; check"
                " every partition's `blocking_offset` and `blocking_duration_sec`."
            ),
            queries=(
                ("Is anything still completing?", consumed),
                ("Longest blocking duration", f"max({c.PARTITION_BLOCKING_DURATION.prometheus})"),
                ("Worker replacements", f"increase({restarts}[15m])"),
            ),
            mitigation=(
                "If messages still complete, backpressure is working: wait for"
                " `total_in_flight` to drop, then add capacity as below.",
                "If nothing completes, the workers are blocked. Find the blocking offsets and"
                f" follow [{alerts.POISON_PILL}]({alerts.POISON_PILL}.md); restart only after"
                " capturing evidence, since everything uncommitted is delivered again.",
                engine_advice,
                in_flight_advice,
            ),
        ),
        alerts.CONSUMER_PAUSED: Runbook(
            meaning=(
                "Backpressure has paused fetching for more than"
                f" {human_duration(t.paused_for_s)}. Pausing at the cap is normal for seconds"
                " while a batch drains; this long means the drain is not happening."
            ),
            impact=(
                "No new messages are read while paused; broker lag and latency grow. The"
                " member stays in the group (the poll loop keeps polling while paused)."
            ),
            status=(
                "`is_paused` is true; watch whether `total_in_flight` is falling, and which"
                " partitions have a large `blocking_duration_sec`."
            ),
            queries=(
                ("Completions per second", consumed),
                ("Handler latency p99", _p99()),
            ),
            mitigation=(
                "If `total_in_flight` is falling, wait: the consumer resumes by itself once"
                " work drains.",
                "If it is not falling, check that workers are not blocked: a very high"
                " `blocking_duration_sec` means that offset's handler is looping or"
                f" deadlocked; see [{alerts.POISON_PILL}]({alerts.POISON_PILL}.md).",
                engine_advice,
                in_flight_advice,
            ),
        ),
        alerts.COMMIT_BLOCKED: Runbook(
            meaning=(
                "One unfinished offset (the blocking offset) has kept this partition's commit"
                f" point from advancing for more than {human_duration(t.blocking_warning_s)}."
                " The alert summary names the offset."
            ),
            impact=(
                "Work finished behind the offset cannot be committed, so gaps and true lag"
                " grow, and a rebalance or crash now delivers everything after the commit"
                " point again (offsets recorded in the commit metadata are skipped)."
            ),
            status=(
                "the partition's `blocking_offset` and `blocking_duration_sec`; a rising"
                " `gap_count` on the same partition confirms work is piling up behind it."
            ),
            queries=(
                ("Blocking offset per partition", f"{blocking_offset} >= 0"),
                ("Retries by topic", _rate(c.RETRIES, "topic")),
                ("Handler errors by type", _rate(c.HANDLER_ERRORS, "topic, error_type")),
            ),
            mitigation=(
                "Search the handler logs for `topic=... partition=... offset=...` of the"
                " blocking offset: a call that is retrying (`max_retries`, backoff up to"
                " `retry_backoff_max_ms`) finishes or fails on its own.",
                "If the call is waiting on a slow dependency, fix the dependency; the offset"
                " clears as soon as the call returns.",
                poison_advice,
            ),
        ),
        alerts.POISON_PILL: Runbook(
            meaning=(
                "The handler of the blocking offset has been running for more than"
                f" {human_duration(t.blocking_critical_s)}, far past any retry backoff: it is"
                " looping or deadlocked, the seed's poison pill."
            ),
            impact=(
                "The partition commits nothing until the call ends. Completed work piles up"
                " behind it (memory, gaps), the in-flight cap eventually pauses every"
                " partition, and a restart delivers the same message again."
            ),
            status=(
                "the partition's `blocking_offset` and a `blocking_duration_sec` that keeps"
                " rising; `total_in_flight` creeping towards `max_in_flight`."
            ),
            queries=(
                ("Blocking offset per partition", f"{blocking_offset} >= 0"),
                ("Worker replacements", f"increase({restarts}[15m])"),
            ),
            mitigation=(
                "Identify the message (topic, partition, offset from the summary) and capture"
                " the worker's stack before changing anything: it shows the loop or the lock.",
                poison_advice,
                "Restarting the consumer alone does not help: the message is delivered again"
                " and blocks again until the handler or the failure policy changes.",
            ),
        ),
        alerts.TRUE_LAG_RISING: Runbook(
            meaning=(
                "True lag (work fetched but not yet committable) is above"
                f" {number(t.true_lag_floor)} messages and has kept rising for"
                f" {human_duration(t.true_lag_for_s)}: the consumer completes less than it"
                " fetches."
            ),
            impact=(
                "The consumer falls further behind: end-to-end latency grows, and a rebalance"
                " redoes more work."
            ),
            status=(
                "`true_lag` per partition: one partition rising alone is key skew; all rising"
                " together is missing capacity. A large `blocking_duration_sec` on the"
                " partition means it is blocked, not slow."
            ),
            queries=(
                ("True lag by partition", f"topk(10, {c.PARTITION_TRUE_LAG.prometheus})"),
                ("Throughput by topic", consumed),
                ("Handler latency p99", _p99()),
            ),
            mitigation=(
                "Capacity is short (seed): raise `max_in_flight_messages` if workers are idle,"
                " or add partitions and processes.",
                engine_advice,
                "If a single partition lags, check its key distribution: one hot key is"
                ' processed in order under `ordering="key"` and cannot be parallelised.',
            ),
        ),
        alerts.GAP_COUNT_HIGH: Runbook(
            meaning=(
                f"More than {number(t.gap_count_high)} finished ranges have waited behind"
                f" unfinished offsets for {human_duration(t.gap_count_for_s)}, with no"
                f" rebalance in the last {human_span(t.gap_rest_s)}. Gaps right after a"
                " rebalance are normal; at rest they mean heavy out-of-order completion."
            ),
            impact=(
                "Memory and commit-metadata size grow with the gaps, and a rebalance redoes"
                " the work that could not be committed."
            ),
            status=(
                "`gap_count` and `blocking_offset` of the partition: the blocking offset is"
                " what holds the gaps open."
            ),
            queries=(
                ("Blocking offset per partition", f"{blocking_offset} >= 0"),
                (
                    "Latency spread: p99 over p50 (a large ratio means a few slow calls)",
                    f"{_p99()} / {_quantile(0.5)}",
                ),
            ),
            mitigation=(
                "Look at the blocking offset first (seed): a single slow or stuck call is the"
                f" usual cause; see [{alerts.COMMIT_BLOCKED}]({alerts.COMMIT_BLOCKED}.md).",
                "Reduce the spread of handler durations: set `handler_timeout_ms` for calls"
                " that hang.",
                "A lower `max_in_flight_messages` limits how far completions can run ahead of"
                " the slowest offset.",
            ),
        ),
        alerts.REBALANCES_FREQUENT: Runbook(
            meaning=(
                f"The consumer was assigned partitions more than {number(t.rebalances_max)}"
                f" times in the last {human_span(t.rebalance_window_s)}."
            ),
            impact=(
                "Each rebalance pauses work, revokes partitions and redoes what was not"
                " committed; frequent ones keep the group from making progress."
            ),
            status=(
                "the partitions assigned now and their `true_lag`; after each rebalance"
                " `gap_count` rises briefly."
            ),
            queries=(
                (
                    "Rebalance callbacks by kind (lost = evicted)",
                    f"sum by (kind) (increase({c.REBALANCES.prometheus}[1h]))",
                ),
                ("Poll loop age (a stalled loop gets evicted)", c.SYSTEM_POLL_AGE.prometheus),
            ),
            mitigation=(
                "Raise `max_poll_interval_ms` (seed) so that slow processing never makes the"
                " broker think the consumer died. Pyrallel keeps polling while paused, so"
                " this matters only when the poll loop itself stalls (see"
                f" [{alerts.POLL_LOOP_STALLED}]({alerts.POLL_LOOP_STALLED}.md)).",
                "Use `max_revoke_grace_ms` to give revoked partitions time to finish and"
                " commit, so each rebalance redoes less.",
                "Members dropping out between heartbeats: raise `session.timeout.ms` through"
                " `kafka={...}`. For rolling restarts, static membership"
                " (`group.instance.id` through `kafka={...}`) avoids a rebalance per restart.",
            ),
        ),
        alerts.COMMITS_FAILING: Runbook(
            meaning=(
                "Offset commits have kept failing (at least one failure every"
                f" {human_span(t.commit_failure_window_s)}) for"
                f" {human_duration(t.commit_failure_for_s)}."
            ),
            impact=(
                "Progress is not saved. Processing continues, but a restart or rebalance"
                " redoes everything since the last commit that worked."
            ),
            status=(
                "whether `true_lag` keeps growing on every partition (nothing committed) or"
                " only on some."
            ),
            queries=(
                ("Commits by outcome", _rate(c.COMMITS, "outcome")),
                (
                    "Rebalances in the same period",
                    f"increase({c.REBALANCES.prometheus}[15m])",
                ),
            ),
            mitigation=(
                "Read the commit error in the consumer log. Authorisation errors need a"
                " group ACL; coordinator errors point at the broker.",
                "Failures during rebalances are expected; if rebalances are frequent, follow"
                f" [{alerts.REBALANCES_FREQUENT}]({alerts.REBALANCES_FREQUENT}.md).",
                "Commits run every `commit_interval_ms`; a longer interval lowers commit load"
                " on a struggling coordinator at the cost of more redo after a crash.",
            ),
        ),
        alerts.DEAD_LETTER_WRITES: Runbook(
            meaning=(
                "Messages failed every attempt and were written to the dead-letter topic"
                f" ({_more_than(t.dlq_writes_max)} in the last {human_span(t.dlq_window_s)})."
            ),
            impact=(
                "Those messages were not processed by the application. The partition moved"
                " on, so nothing is blocked, but each message needs a decision."
            ),
            status="the failing topic's partitions and their recent `true_lag`.",
            queries=(
                ("Dead-letter writes by topic", _rate(c.DLQ_MESSAGES, "topic, outcome")),
                ("Handler errors by type", _rate(c.HANDLER_ERRORS, "topic, error_type")),
            ),
            mitigation=(
                "Find the cause from the handler errors' `error_type` and the log lines with"
                " the messages' offsets, and fix it.",
                "Then replay the records from the dead-letter topic (`dlq_topic`, default"
                " `<topic>.dlq`) or drop them deliberately.",
                "If the errors were transient (a dependency's blip), allow more attempts:"
                " `max_retries`, `retry_backoff_max_ms`.",
            ),
        ),
        alerts.DEAD_LETTER_WRITE_FAILURES: Runbook(
            meaning=(
                "Writes to the dead-letter topic have kept failing for"
                f" {human_duration(t.dlq_failure_for_s)}."
            ),
            impact=(
                "A message's source offset stays uncommitted until its dead-letter write is"
                " confirmed, so the affected partitions' commit points are stuck; in-flight"
                " fills up and the consumer will pause."
            ),
            status=(
                "the affected partitions show a growing `blocking_duration_sec` at the failed"
                " message's `blocking_offset`."
            ),
            queries=(
                (
                    "Failed dead-letter writes by topic",
                    _rate(c.DLQ_MESSAGES, "topic", '{outcome="failed"}'),
                ),
                ("Blocking offset per partition", f"{blocking_offset} >= 0"),
            ),
            mitigation=(
                "Check that the dead-letter topic exists (`dlq_topic`, default"
                " `<topic>.dlq`) and that the consumer may write to it.",
                "Check the brokers the dead-letter producer talks to; writes are retried and"
                " the partitions resume once a write is confirmed.",
                'Switching to `on_failure="skip"` unblocks the partitions but drops the'
                " failed messages: only do it deliberately.",
            ),
        ),
        alerts.WORKER_RESTARTS: Runbook(
            meaning=(
                f"Engine workers were replaced ({_more_than(t.worker_restarts_max)} in the"
                f" last {human_span(t.worker_restart_window_s)}): a worker died or a call ran"
                " past `handler_timeout_ms`."
            ),
            impact=(
                "The messages a worker held are retried, so nothing is lost, but the work is"
                " done twice and repeated restarts become a crash loop."
            ),
            status="`total_in_flight` and the partitions whose `blocking_offset` keeps changing.",
            queries=(
                ("Replacements by consumer", f"increase({restarts}[15m])"),
                ("Handler errors by type (timeouts)", _rate(c.HANDLER_ERRORS, "error_type")),
                ("Handler latency p99", _p99()),
            ),
            mitigation=(
                "Out-of-memory kills show in the host's kernel log: lower `process_count` or"
                " the handler's memory use.",
                "Timeouts: if the work is legitimately slow, raise `handler_timeout_ms`;"
                " otherwise fix the slow call.",
                "Crashes in native code show in the worker's stderr; pin or upgrade the"
                " offending extension.",
            ),
        ),
        alerts.POLL_LOOP_STALLED: Runbook(
            meaning=(
                "The poll loop has not called Kafka for more than"
                f" {human_duration(t.poll_age_max_s)}. It polls continuously, paused or not,"
                " so the loop itself is stuck."
            ),
            impact=(
                "At `max_poll_interval_ms` the broker evicts the member and the group"
                " rebalances; its partitions' uncommitted work is redone elsewhere."
            ),
            status=(
                "if `pyrallel status` does not answer at all, the whole process is wedged;"
                " otherwise compare `is_paused` with the poll age."
            ),
            queries=(
                ("Poll loop age", c.SYSTEM_POLL_AGE.prometheus),
                (
                    "Rebalance callbacks by kind",
                    f"sum by (kind) (increase({c.REBALANCES.prometheus}[15m]))",
                ),
            ),
            mitigation=(
                "Async handlers must not block the event loop: await I/O, and move CPU work to"
                " the process engine or an executor.",
                "Sync handlers on the thread engine that hold the GIL in a tight loop starve"
                " the poller too: move them to the process engine.",
                "Raise `max_poll_interval_ms` only as a stopgap; restart the consumer if the"
                " process is wedged (uncommitted work is delivered again).",
            ),
        ),
    }


def _fmt(t: Thresholds, name: str) -> str:
    value = getattr(t, name)
    if name in DURATION_FIELDS:
        return prom_duration(value)
    return f"{number(value)} s" if name.endswith("_s") else number(value)


def render_runbook(
    rule: alerts.AlertRule,
    page: Runbook,
    panels: list[dash.PanelInfo],
    t: Thresholds,
) -> str:
    """The markdown of one runbook page."""
    lines = [
        "<!-- Generated by `pyrallel generate` from pyrallel/monitoring/runbooks.py and"
        " thresholds.py. Do not edit: change the generator and run `pyrallel generate`. -->",
        "",
        f"# {rule.name}",
        "",
        f"Severity: **{rule.severity}**. Fires when the expression below holds for"
        f" {prom_duration(rule.for_s)}.",
        "",
        "## Meaning",
        "",
        page.meaning,
        "",
        "## Impact",
        "",
        page.impact,
        "",
        "## Diagnosis",
        "",
        "1. The alert's expression, to run in Prometheus:",
        "",
        "   ```promql",
        f"   {rule.expr}",
        "   ```",
        "",
    ]
    where = "; ".join(
        f"**{p.dashboard_title} > {p.title}** (`/d/{p.dashboard_uid}`)" for p in panels
    )
    lines += [f"2. Dashboard: {where}.", ""]
    status = page.status[0].upper() + page.status[1:]
    lines += [f"3. `{STATUS_COMMAND}` (the consumer's `/status`): {status}", ""]
    for i, (caption, query) in enumerate(page.queries, start=4):
        lines += [f"{i}. {caption}:", "", "   ```promql", f"   {query}", "   ```", ""]
    lines += ["## Mitigation", ""]
    lines += [f"- {item}" for item in page.mitigation]
    lines += ["", "## Thresholds", "", "| setting | value | why |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {_fmt(t, name)} | {t.why(name)} |" for name in rule.thresholds]
    lines += [
        "",
        "Thresholds live in `pyrallel/monitoring/thresholds.py`; after changing one, run"
        " `pyrallel generate`.",
    ]
    return "\n".join(lines) + "\n"


def render_runbooks(
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    runbook_base_url: str = alerts.DEFAULT_RUNBOOK_BASE_URL,
) -> dict[str, str]:
    """File name (``<AlertName>.md``) to markdown, one page per alert, in rule order."""
    pages = _pages(thresholds)
    panels = dash.panel_index(thresholds, runbook_base_url)
    out: dict[str, str] = {}
    for rule in alerts.alert_rules(thresholds):
        linked = [p for p in panels if rule.name in p.alerts]
        out[f"{rule.name}.md"] = render_runbook(rule, pages[rule.name], linked, thresholds)
    return out


def runbook_queries(thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[str]:
    """Every further diagnosis query the pages print (the alert expressions aside)."""
    return [query for page in _pages(thresholds).values() for _, query in page.queries]
