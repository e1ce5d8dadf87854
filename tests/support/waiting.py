"""Deadline-based waiting, so tests never guess with bare ``time.sleep``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The predicate did not become truthy before the deadline."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value and return that value.

    Exceptions of the ``ignore`` types count as "not yet" (e.g. a coordinator still
    loading). On timeout raises :class:`WaitTimeout` (an ``AssertionError``, so pytest
    shows it as a test failure) naming ``message``, the last value and the last ignored
    exception; ``message`` may be a callable to describe the state at the deadline.
    """
    deadline = time.monotonic() + timeout
    last_value: T | None = None
    last_error: BaseException | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            value = predicate()
        except ignore as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value = value
        now = time.monotonic()
        if now >= deadline:
            text = message() if callable(message) else message
            detail = f"last value {last_value!r}"
            if last_error is not None:
                detail += f", last error {last_error!r}"
            raise WaitTimeout(
                f"timed out after {timeout:.1f} s waiting for {text} ({attempts} tries, {detail})"
            ) from last_error
        time.sleep(min(interval, deadline - now))
