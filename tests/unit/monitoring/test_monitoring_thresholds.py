"""Thresholds: one reason per field, validated values, short variants for live tests."""

from __future__ import annotations

import dataclasses

import pytest

from pyrallel.errors import ConfigError
from pyrallel.monitoring.thresholds import (
    DEFAULT_THRESHOLDS,
    DURATION_FIELDS,
    Thresholds,
    human_duration,
    number,
    percent,
    prom_duration,
)


def test_every_threshold_documents_why_its_default_is_what_it_is() -> None:
    for f in dataclasses.fields(Thresholds):
        reason = DEFAULT_THRESHOLDS.why(f.name)
        assert len(reason.split()) >= 8, f"{f.name}: reason too thin: {reason!r}"
        assert "  " not in reason and "\n" not in reason


def test_why_of_an_unknown_field_is_an_error() -> None:
    with pytest.raises(KeyError):
        DEFAULT_THRESHOLDS.why("no_such_threshold")


def test_defaults_match_the_seed() -> None:
    # The seed's dashboard: yellow at 80 %, red at 100 % of max_in_flight.
    assert DEFAULT_THRESHOLDS.in_flight_warning_ratio == 0.8
    assert DEFAULT_THRESHOLDS.in_flight_critical_ratio == 1.0
    assert DEFAULT_THRESHOLDS.blocking_warning_s < DEFAULT_THRESHOLDS.blocking_critical_s


def test_for_testing_is_valid_and_never_slower_than_the_defaults() -> None:
    short = Thresholds.for_testing()
    for name, value in short.as_dict().items():
        if name in DURATION_FIELDS:
            limit = 10 if name.endswith("_for_s") else 60  # `for:` vs counting windows
            assert value <= limit, f"{name}={value}s is too slow for a live test"
            assert value <= getattr(DEFAULT_THRESHOLDS, name)


def test_replace_builds_a_validated_copy() -> None:
    changed = dataclasses.replace(DEFAULT_THRESHOLDS, gap_count_high=7.0)
    assert changed.gap_count_high == 7.0
    assert DEFAULT_THRESHOLDS.gap_count_high != 7.0


def test_duration_fields_are_the_int_typed_ones() -> None:
    assert "paused_for_s" in DURATION_FIELDS and "rebalance_window_s" in DURATION_FIELDS
    assert "blocking_warning_s" not in DURATION_FIELDS  # a threshold value in seconds
    assert "rebalances_max" not in DURATION_FIELDS
    # An int given for a count stays a count, not a duration.
    assert dataclasses.replace(DEFAULT_THRESHOLDS, rebalances_max=12).rebalances_max == 12


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"in_flight_warning_ratio": 1.0}, "in_flight_warning_ratio"),
        ({"in_flight_warning_ratio": 0.0}, "in_flight_warning_ratio"),
        ({"blocking_warning_s": 900.0}, "blocking_warning_s"),
        ({"paused_for_s": 0}, "paused_for_s"),
        ({"paused_for_s": 1.5}, "paused_for_s"),
        ({"gap_count_high": -1.0}, "gap_count_high"),
        ({"gap_count_high": float("nan")}, "gap_count_high"),
        ({"rebalances_max": True}, "rebalances_max"),
    ],
)
def test_bad_values_are_refused_naming_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(DEFAULT_THRESHOLDS, **changes)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("seconds", "prom", "prose"),
    [
        (1, "1s", "1 second"),
        (90, "90s", "90 seconds"),
        (60, "1m", "1 minute"),
        (900, "15m", "15 minutes"),
        (3600, "1h", "1 hour"),
        (7200, "2h", "2 hours"),
    ],
)
def test_durations_render_for_promql_and_prose(seconds: int, prom: str, prose: str) -> None:
    assert prom_duration(seconds) == prom
    assert human_duration(seconds) == prose


def test_numbers_render_without_noise() -> None:
    assert number(100.0) == "100"
    assert number(0.8) == "0.8"
    assert percent(0.8) == "80 %"
    assert human_duration(2.5) == "2.5 seconds"
    with pytest.raises(ValueError):
        prom_duration(-1)
