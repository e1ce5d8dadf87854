"""Start one worker process, read its protocol lines, sample its RSS, stop it by PID."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.protocol import MARK, READY, RESULT


@dataclass
class Outcome:
    """What one run produced. ``result`` is the worker's result line (or an error)."""

    result: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    returncode: int | None = None
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and "error" not in self.result and bool(self.result)

    def mark(self, name: str) -> float | None:
        """Epoch time of the ``ready`` event or of the ``mark`` event called ``name``."""
        for event in self.events:
            if event.get("event") == READY and name == READY:
                return float(event["t"])
            if event.get("event") == MARK and event.get("name") == name:
                return float(event["t"])
        return None


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_worker(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_path: Path,
    timeout: float,
    on_ready: Callable[[], Any] | None = None,
    sample_rss: float | None = None,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run ``argv`` to completion (or ``timeout``), returning its protocol output.

    ``on_ready`` runs in a thread once the worker reports ``ready`` (live producing);
    ``sample_rss`` is the interval in seconds for reading the worker's VmRSS from /proc.
    The worker gets its own session so that a timeout can stop it, and everything it
    started, by its process-group id.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(result={})
    cpu_before = _children_cpu()
    began = time.perf_counter()
    with log_path.open("w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
            env=env,
        )
        stop_sampling = threading.Event()
        sampler: threading.Thread | None = None
        if sample_rss:
            interval = sample_rss

            def sample() -> None:
                while not stop_sampling.is_set():
                    kib = _rss_kib(proc.pid)
                    if kib is not None:
                        outcome.rss_kib.append((time.time(), kib))
                    stop_sampling.wait(interval)

            sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
            sampler.start()
        helpers: list[threading.Thread] = []
        timer = threading.Timer(timeout, _kill_group, args=(proc,))
        timer.daemon = True
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = _parse(line)
                if event is None:
                    log.write(line)
                    continue
                outcome.events.append(event)
                if event["event"] == READY and on_ready is not None:
                    helper = threading.Thread(target=on_ready, name="bench-live", daemon=True)
                    helper.start()
                    helpers.append(helper)
                elif event["event"] == RESULT:
                    outcome.result = {k: v for k, v in event.items() if k != "event"}
            outcome.returncode = proc.wait()
        finally:
            timer.cancel()
            stop_sampling.set()
            if proc.poll() is None:
                _kill_group(proc)
                outcome.returncode = proc.wait()
            if sampler is not None:
                sampler.join(2)
            for helper in helpers:
                helper.join(60)
    outcome.wall_s = time.perf_counter() - began
    outcome.cpu_s = _children_cpu() - cpu_before
    if not outcome.result:
        outcome.result = {"error": f"no result line (exit status {outcome.returncode})"}
    elif outcome.returncode != 0:
        outcome.result.setdefault("error", f"exit status {outcome.returncode}")
    outcome.log = str(log_path)
    return outcome


def _parse(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{") or '"event"' not in text:
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # Our own child and its group (process-engine workers, JVM threads): by id, not name.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
