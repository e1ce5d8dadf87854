"""The single source of alerting thresholds.

Alert rules (:mod:`pyrallel.monitoring.alerts`), dashboard colours and lines
(:mod:`pyrallel.monitoring.dashboards`) and the numbers quoted in the runbooks
(:mod:`pyrallel.monitoring.runbooks`) all read a :class:`Thresholds`; none of them spells a
number of its own. Every field carries, in its ``why`` metadata, the reason its default is
what it is; the runbooks print that reason next to the value.

Times are in seconds and named ``*_s``; the int-typed ones (:data:`DURATION_FIELDS`:
``for:`` durations and counting windows) are whole seconds. Ratios are fractions of
``max_in_flight_messages`` (``pyrallel_system_max_in_flight``), so one rule file fits every
consumer whatever its configured cap. Change a value with :func:`dataclasses.replace`, or
take :meth:`Thresholds.for_testing` for a live Prometheus that should fire within seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from pyrallel.errors import ConfigError


def _why(reason: str) -> dict[str, str]:
    return {"why": " ".join(reason.split())}


@dataclass(frozen=True)
class Thresholds:
    """Every number the alert rules, dashboards and runbooks use, each with its reason."""

    in_flight_warning_ratio: float = field(
        default=0.8,
        metadata=_why(
            """The seed's dashboard turns yellow at 80 % of max_in_flight_messages. From there
            one more poll batch can reach the cap and pause fetching, so it is the last point
            at which capacity can be added calmly."""
        ),
    )
    in_flight_warning_for_s: int = field(
        default=15 * 60,
        metadata=_why(
            """In-flight swings with every poll batch; a quarter of an hour separates a consumer
            that lives near its cap from one passing through a burst."""
        ),
    )
    in_flight_critical_ratio: float = field(
        default=1.0,
        metadata=_why(
            """The seed's red line: at max_in_flight_messages backpressure pauses fetching of
            every assigned partition."""
        ),
    )
    in_flight_critical_for_s: int = field(
        default=10 * 60,
        metadata=_why(
            """A short stay at the cap is backpressure doing its job. Ten minutes there means
            completions are not freeing slots (workers stuck or far too slow) while the broker
            lag grows the whole time."""
        ),
    )
    paused_for_s: int = field(
        default=5 * 60,
        metadata=_why(
            """A backpressure pause normally lasts as long as one batch takes to drain, seconds.
            Five minutes paused means the drain is not happening and nothing new is fetched."""
        ),
    )
    blocking_warning_s: float = field(
        default=120.0,
        metadata=_why(
            """Handlers normally finish well under a minute (the duration histogram's top
            bucket is 60 s). An offset holding the commit point for two minutes means nothing
            behind it in that partition is committed, and a rebalance now redoes all of it."""
        ),
    )
    blocking_critical_s: float = field(
        default=600.0,
        metadata=_why(
            """Ten minutes is far past any retry backoff (retry_backoff_max_ms defaults to
            10 s) and any sensible handler timeout: the handler of that offset is looping or
            deadlocked, the seed's poison pill."""
        ),
    )
    blocking_for_s: int = field(
        default=60,
        metadata=_why(
            """The gauge already measures time, so the alert only waits one more minute to
            ride out a scrape that catches an offset just as it completes."""
        ),
    )
    true_lag_floor: float = field(
        default=500.0,
        metadata=_why(
            """A lag below one poll batch (poll_batch_size defaults to 500) is what a healthy
            consumer holds between fetches; a rise below it is noise."""
        ),
    )
    true_lag_window_s: int = field(
        default=10 * 60,
        metadata=_why(
            """The slope is fitted over ten minutes of samples, so one batch arriving is not a
            rise."""
        ),
    )
    true_lag_for_s: int = field(
        default=15 * 60,
        metadata=_why(
            """The seed's signal is a lag that rises steadily; a positive slope for another
            quarter of an hour is a trend, not a burst."""
        ),
    )
    gap_count_high: float = field(
        default=100.0,
        metadata=_why(
            """A consumer with a few slow keys holds a few gaps per partition. A hundred
            finished ranges waiting behind unfinished offsets is heavy out-of-order
            completion: memory, re-processing after a rebalance and the commit metadata
            (at most 4,096 bytes) all grow with it."""
        ),
    )
    gap_count_for_s: int = field(
        default=15 * 60,
        metadata=_why(
            """Gaps open and close as completions land; a quarter of an hour above the line is a
            standing state."""
        ),
    )
    gap_rest_s: int = field(
        default=15 * 60,
        metadata=_why(
            """The seed calls gaps right after a rebalance normal: re-fetched work completes out
            of order. "At rest" means the consumer saw no rebalance in this window."""
        ),
    )
    rebalances_max: float = field(
        default=10.0,
        metadata=_why(
            """A rolling restart of n members costs each remaining member about 2n rebalances
            (one as a member leaves, one as it returns), so ten an hour lets a five-member
            group deploy. More than that means members are evicted and rejoin: session
            timeouts, or a poll loop that misses max_poll_interval_ms."""
        ),
    )
    rebalance_window_s: int = field(
        default=60 * 60,
        metadata=_why("""Rebalances are counted per hour, the unit operators reason in."""),
    )
    rebalances_for_s: int = field(
        default=60,
        metadata=_why(
            """The hourly count already smooths bursts, so the alert waits only one more
            minute."""
        ),
    )
    commit_failure_window_s: int = field(
        default=5 * 60,
        metadata=_why(
            """The commit point is cumulative: the next successful commit (every
            commit_interval_ms, 1 s by default) covers a failed one, and a commit racing a
            revoke fails by design. Failures are therefore judged per five-minute window."""
        ),
    )
    commit_failure_for_s: int = field(
        default=15 * 60,
        metadata=_why(
            """Failures in every window for a quarter of an hour are persistent (authorisation,
            coordinator unavailable, fenced member); a restart would redo everything since
            the last commit that worked."""
        ),
    )
    dlq_writes_max: float = field(
        default=0.0,
        metadata=_why(
            """Every dead-lettered record is a message the application did not process. A
            healthy pipeline writes none, and each one needs a decision: fix and replay, or
            drop."""
        ),
    )
    dlq_window_s: int = field(
        default=15 * 60,
        metadata=_why(
            """Dead-letter writes are counted over a quarter of an hour, so a burst becomes one
            alert rather than one per write."""
        ),
    )
    dlq_for_s: int = field(
        default=60,
        metadata=_why(
            """Events need no persistence test; the one-minute wait only keeps a single
            evaluation from notifying."""
        ),
    )
    dlq_failure_window_s: int = field(
        default=5 * 60,
        metadata=_why(
            """While a dead-letter write fails its source offset stays uncommitted, so the
            partition's commit point cannot pass it. Failed writes are counted per five
            minutes."""
        ),
    )
    dlq_failure_for_s: int = field(
        default=5 * 60,
        metadata=_why(
            """A broker blip is retried within seconds; five minutes of failing writes is an
            outage of the dead-letter path that stalls the partition."""
        ),
    )
    worker_restarts_max: float = field(
        default=0.0,
        metadata=_why(
            """A handler exception never kills a worker, so any restart means a worker died
            (killed, out of memory, crashed in native code) or a call ran past
            handler_timeout_ms. Its messages are retried, but each restart costs those
            retries and can be the start of a crash loop."""
        ),
    )
    worker_restart_window_s: int = field(
        default=15 * 60,
        metadata=_why(
            """Restarts are counted over a quarter of an hour, so a crash loop is one alert."""
        ),
    )
    worker_restart_for_s: int = field(
        default=60,
        metadata=_why(
            """Events need no persistence test; the one-minute wait only keeps a single
            evaluation from notifying."""
        ),
    )
    poll_age_max_s: float = field(
        default=60.0,
        metadata=_why(
            """The poll loop calls Kafka continuously, paused or not, so its age stays near
            zero. A minute without a poll means the loop itself is stuck; at
            max_poll_interval_ms (300 s by default) the broker evicts the member and the
            group rebalances."""
        ),
    )
    poll_age_for_s: int = field(
        default=60,
        metadata=_why(
            """One more minute confirms the loop is stuck and still leaves about three minutes
            before max_poll_interval_ms evicts the member."""
        ),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f.name, value, "a number")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f.name, value, "a finite number >= 0")
            # Fields typed int are `for:` durations and windows: whole seconds, never zero.
            if f.type in (int, "int") and (not isinstance(value, int) or value < 1):
                raise ConfigError(f.name, value, "a whole number of seconds >= 1")
        if not 0 < self.in_flight_warning_ratio < self.in_flight_critical_ratio:
            raise ConfigError(
                "in_flight_warning_ratio",
                self.in_flight_warning_ratio,
                f"above 0 and below in_flight_critical_ratio={self.in_flight_critical_ratio}",
            )
        if self.blocking_warning_s >= self.blocking_critical_s:
            raise ConfigError(
                "blocking_warning_s",
                self.blocking_warning_s,
                f"below blocking_critical_s={self.blocking_critical_s}",
            )

    @classmethod
    def for_testing(cls) -> Thresholds:
        """Thresholds that fire within seconds, for a live Prometheus scraping every second.

        Values keep the defaults' relations (warning below critical, windows longer than a
        few scrapes) so an end-to-end test exercises the same expressions.
        """
        return cls(
            in_flight_warning_for_s=5,
            in_flight_critical_for_s=5,
            paused_for_s=5,
            blocking_warning_s=3.0,
            blocking_critical_s=8.0,
            blocking_for_s=2,
            true_lag_floor=10.0,
            true_lag_window_s=10,
            true_lag_for_s=5,
            gap_count_high=3.0,
            gap_count_for_s=5,
            gap_rest_s=10,
            rebalances_max=2.0,
            rebalance_window_s=60,
            rebalances_for_s=2,
            commit_failure_window_s=10,
            commit_failure_for_s=5,
            dlq_window_s=30,
            dlq_for_s=2,
            dlq_failure_window_s=10,
            dlq_failure_for_s=5,
            worker_restart_window_s=30,
            worker_restart_for_s=2,
            poll_age_max_s=5.0,
            poll_age_for_s=2,
        )

    def why(self, name: str) -> str:
        """The documented reason for the default of field ``name``."""
        for f in fields(self):
            if f.name == name:
                reason: str = f.metadata["why"]
                return reason
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """Field name to value, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_THRESHOLDS = Thresholds()

DURATION_FIELDS: frozenset[str] = frozenset(
    f.name for f in fields(Thresholds) if f.type in (int, "int")
)
"""Fields that are ``for:`` durations or counting windows (whole seconds)."""


def prom_duration(seconds: int) -> str:
    """A Prometheus duration for whole ``seconds``: ``3600`` -> ``1h``, ``90`` -> ``90s``."""
    if seconds < 0:
        raise ValueError(f"negative duration: {seconds}")
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def human_duration(seconds: float) -> str:
    """The same duration for prose: ``900`` -> ``15 minutes``, ``1`` -> ``1 second``."""
    if seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("hour", 3600), ("minute", 60)):
            if whole and whole % size == 0:
                n = whole // size
                return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def human_span(seconds: int) -> str:
    """A window for "in the last ...": ``3600`` -> ``hour``, ``300`` -> ``5 minutes``."""
    text = human_duration(seconds)
    return text[2:] if text.startswith("1 ") else text


def number(value: float) -> str:
    """A threshold as PromQL and prose print it: ``100.0`` -> ``100``, ``0.8`` -> ``0.8``."""
    return f"{value:g}"


def percent(ratio: float) -> str:
    """A ratio as a percentage for prose: ``0.8`` -> ``80 %``."""
    return f"{ratio * 100:g} %"
