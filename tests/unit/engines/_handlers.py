"""Helpers for the engine tests: a fake ``deliver``, and module-level handlers for the
process engine (they must pickle by reference).

Each handler reads its instruction from the message value, so one handler can mix
fast, slow, failing and dying messages in one run.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from pyrallel.message import Message
from tests.support.waiting import wait_until


class Collector:
    """A thread-safe fake ``deliver`` that remembers every outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: list[tuple[Message, BaseException | None, float]] = []

    def __call__(self, msg: Message, error: BaseException | None, duration: float) -> None:
        with self._lock:
            self.outcomes.append((msg, error, duration))

    def snapshot(self) -> list[tuple[Message, BaseException | None, float]]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[Message, Any, float]]:
        wait_until(
            lambda: len(self.snapshot()) >= count,
            timeout,
            interval=0.01,
            message=lambda: f"{count} outcomes (have {len(self.snapshot())})",
        )
        return self.snapshot()

    def errors_by_value(self) -> dict[bytes | None, BaseException | None]:
        return {m.value: e for m, e, _ in self.snapshot()}


def messages(
    count: int, value: bytes = b"x", *, partition: int = 0, start: int = 0
) -> list[Message]:
    return [Message("t", partition, start + i, None, value) for i in range(count)]


class Boom(Exception):
    """A picklable custom exception: it comes back as itself."""


class Unsendable(Exception):
    """Carries a lock, so it cannot be pickled: it comes back as RemoteHandlerError."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lock = threading.Lock()


class Unloadable(Exception):
    """Pickles, but unpickling calls ``__init__`` with one argument and fails."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")


class PidReport(Exception):
    """Raised on purpose to tell the test which worker ran a message."""


def noop(msg: Message) -> None:
    return None


def scripted(msg: Message) -> None:
    """``b"sleep:<s>"`` sleeps, ``b"boom"`` raises Boom, ``b"value"`` ValueError,
    ``b"unsendable"``/``b"unloadable"`` raise those, ``b"exit"`` ends the process
    abruptly, ``b"mark:<s>:<path>"`` creates ``path`` then sleeps, ``b"pid"`` raises
    PidReport(pid); anything else returns."""
    value = msg.value or b""
    if value.startswith(b"sleep:"):
        time.sleep(float(value[6:]))
    elif value == b"boom":
        raise Boom(f"boom at offset {msg.offset}")
    elif value == b"value":
        raise ValueError("bad value")
    elif value == b"unsendable":
        raise Unsendable("cannot travel")
    elif value == b"unloadable":
        raise Unloadable(7, "cannot unpickle")
    elif value == b"exit":
        os._exit(3)
    elif value.startswith(b"mark:"):
        # b"mark:<seconds>:<path>": show the test this call is running, then stay busy.
        seconds, path = value[5:].decode().split(":", 1)
        with open(path, "w"):
            pass
        time.sleep(float(seconds))
    elif value == b"pid":
        time.sleep(0.005)  # long enough that one worker cannot take every message
        raise PidReport(os.getpid())


def spin(msg: Message) -> None:
    """About ``msg.value`` milliseconds of pure-Python CPU work (default 2)."""
    ms = float(msg.value or b"2")
    end = time.thread_time() + ms / 1000
    x = 0
    while time.thread_time() < end:
        for i in range(200):
            x += i * i


class Callable:
    """An instance of a module-level class is a valid handler too."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, msg: Message) -> None:
        return None


class HoldsLock:
    """Its bound method cannot be pickled (the instance carries a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def handle(self, msg: Message) -> None:
        return None


async def async_handler(msg: Message) -> None:
    return None
