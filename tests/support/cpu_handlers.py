"""Picklable handlers for process-engine tests (module level, so workers can import them)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pyrallel.message import Message


def burn(ms: float) -> int:
    """About ``ms`` milliseconds of pure-Python CPU work."""
    end = time.perf_counter() + ms / 1000
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


@dataclass(frozen=True)
class RecordingCpuHandler:
    """Burns CPU, then appends one line per call: pid partition key offset begin_ns end_ns."""

    path: str
    work_ms: float = 2.0

    def __call__(self, msg: Message) -> None:
        begin = time.time_ns()
        burn(self.work_ms)
        end = time.time_ns()
        key = (msg.key or b"-").decode()
        line = f"{os.getpid()} {msg.partition} {key} {msg.offset} {begin} {end}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write per record: whole lines even with many writers
        finally:
            os.close(fd)


def read_records(path: str) -> list[tuple[int, int, str, int, int, int]]:
    out = []
    with open(path) as f:
        for line in f:
            pid, part, key, offset, begin, end = line.split()
            out.append((int(pid), int(part), key, int(offset), int(begin), int(end)))
    return out
