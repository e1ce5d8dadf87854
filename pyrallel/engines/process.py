"""ProcessExecutionEngine: sync handlers in worker processes, for CPU-bound work.

The handler runs in ``processes`` worker processes; the parent keeps everything else
(the Kafka consumer, offsets, commits, telemetry). The contract:

* **Handler.** A plain (sync), picklable callable: a module-level function or an
  instance of a module-level class. Lambdas, closures, ``async def`` handlers and bound
  methods of unpicklable objects are refused with :class:`ConfigError` when the engine
  is built. Workers use the ``spawn`` start method (see :data:`START_METHOD`), which
  imports the program's main module again, so the entry point must sit under
  ``if __name__ == "__main__":``.
* **Batches.** Messages travel in batches of ``(token, Message)`` over one pipe per
  worker, and results come back in batches, so IPC cost is paid per batch, not per
  message. The batch size adapts to the measured handler duration (about
  ``_BATCH_WORK_S`` of work per batch); each worker holds at most two batches, the rest
  wait in the parent and go to whichever worker holds the fewest messages.
* **Outcomes.** ``deliver`` is called from the ``pyrallel-process-results`` thread with
  the *original* :class:`Message` given to :meth:`submit` (the worker's copy has no
  epoch). A handler exception arrives as itself when it survives pickling, otherwise as
  :class:`RemoteHandlerError` naming its type and text; either way the worker's
  traceback text is attached as ``__cause__``.
* **Worker death** (SIGKILL, segfault, ``os._exit``) is seen at once through the
  process sentinel. The worker is replaced (``restarts`` grows by one) and every message
  it held - running, queued in its pipe, or finished but not yet reported - is delivered
  with :class:`WorkerDiedError`. **Such a message counts as a failed attempt**: the core
  retries it (or dead-letters it) by its failure policy, like any handler error.
* **Timeout** (``timeout_s``, from ``handler_timeout_ms``): a call running longer gets
  its worker killed and replaced; that message is delivered with
  :class:`HandlerTimeoutError`, the worker's other held messages with
  :class:`WorkerDiedError`. A call's clock starts when the parent learns the worker
  finished the previous one, so a timeout never fires early (and may fire up to one
  tick, ``_TICK_S``, late).
* **abandon** drops a partition's messages still waiting in the parent without
  delivering them; results of ones already in a worker are ignored when they arrive.
* **stop** sends each worker a stop marker, waits up to ``timeout`` for it to exit, then
  terminates and kills it by its ``Process``; nothing is delivered once stop begins.
* **Spans.** With ``span_factory``, the span opens in the parent when the message is
  submitted and closes when its outcome arrives (with the error, if any), so it covers
  queueing, IPC and the call. Each span is entered and exited inside its own copy of
  the submitting thread's ``contextvars`` context: it is opened on the poll thread and
  closed on the result thread, and this keeps a "current span" it may set from
  leaking into either thread.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Final

from pyrallel.engines.base import Deliver, ExecutionEngine, SpanFactory
from pyrallel.engines.thread import check_sync_handler
from pyrallel.errors import ConfigError, HandlerTimeoutError, PyrallelError, WorkerDiedError
from pyrallel.message import Message

log = logging.getLogger(__name__)

START_METHOD: Final = "spawn"
"""How worker processes start; the one place it is chosen.

``spawn`` starts a fresh interpreter that inherits nothing but the pipe it is given. A
bare ``fork`` would copy a parent whose librdkafka and telemetry threads may hold locks
at that instant (the child can deadlock on them) and would leak other workers' pipe
ends into each child, hiding their deaths. ``forkserver`` avoids the first problem but
is Unix-only; ``spawn`` behaves the same on every platform. Its cost, a fresh import
per worker (tens of ms), is paid at start and at each restart only.
"""

_CONTEXT = multiprocessing.get_context(START_METHOD)

_BATCH_WORK_S = 0.01
"""Aim for about this much handler time per batch: big enough to amortise a send, small
enough that a dead worker takes few bystanders with it and load stays balanced."""
_INITIAL_BATCH = 1
"""Until a duration is measured, assume a slow handler: a big first batch would all go
to whichever worker is ready first."""
_MAX_BATCH = 64
_FLUSH_S = 0.005
"""A worker reports finished results at least this often while it has more to do."""
_TICK_S = 0.05
"""How often the result thread checks timeouts (only when a timeout is set)."""
_MAX_EARLY_DEATHS = 3
"""Consecutive workers dying before they are ready means they cannot start at all."""
_JOIN_S = 1.0
_START_WAIT_S = 10.0
""":meth:`start` waits up to this long for the workers to import and report ready."""

SyncHandler = Callable[[Message], Any]
_Batch = list[tuple[int, Message]]
_ErrorPayload = tuple[str, str, str, bytes | None]  # type name, text, traceback, pickle
_Result = tuple[int, _ErrorPayload | None, float]
_Span = tuple[contextvars.Context, AbstractContextManager[Any]]
_READY = "ready"
_BROKEN = "broken"


class RemoteHandlerError(PyrallelError):
    """A handler raised an exception that could not be sent back from its worker.

    ``type_name`` is the exception's qualified class name, ``text`` its ``str()`` and
    ``remote_traceback`` the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, text: str, remote_traceback: str = "") -> None:
        self.type_name = type_name
        self.text = text
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {text}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.text, self.remote_traceback))


class _RemoteTraceback(Exception):
    """Carries a worker's traceback text as the ``__cause__`` of the error it raised."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- the worker process -------------------------------------------------------------------


def _worker_main(handler_blob: bytes, conn: Connection[Any, Any], report_each: bool) -> None:
    """Entry point of a worker: load the handler, report ready, serve batches."""
    # Ctrl-C in a terminal signals the whole process group; the parent decides when
    # workers stop, so a keypress must not kill them with work in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            handler = pickle.loads(handler_blob)
        except Exception as exc:
            # E.g. a handler defined in a notebook or REPL ``__main__``: it pickles by
            # name in the parent but that name does not exist in a fresh interpreter.
            conn.send((_BROKEN, f"the handler cannot be loaded in a worker process: {exc!r}"))
            return
        conn.send((_READY, os.getpid()))
        _serve(handler, conn, report_each)
    except (EOFError, OSError):
        pass  # the parent closed the pipe (stopping, or gone): nobody to report to


def _serve(handler: SyncHandler, conn: Connection[Any, Any], report_each: bool) -> None:
    perf = time.perf_counter
    results: list[_Result] = []
    oldest = 0.0
    while True:
        batch: _Batch | None = conn.recv()
        if batch is None:
            return
        for token, msg in batch:
            if results and perf() - oldest >= _FLUSH_S:
                conn.send(results)
                results = []
            started = perf()
            error: _ErrorPayload | None = None
            try:
                handler(msg)
            except Exception as exc:
                error = _encode_error(exc)
            ended = perf()
            if not results:
                oldest = ended
            results.append((token, error, ended - started))
            # With a timeout the parent must know which call is running, so each
            # result goes out before the next call starts.
            if report_each or len(results) >= _MAX_BATCH:
                conn.send(results)
                results = []
        if results and not conn.poll():
            conn.send(results)  # about to wait for work: report what is done first
            results = []


def _encode_error(exc: Exception) -> _ErrorPayload:
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        text = str(exc)
    except Exception:
        text = "<str() failed>"
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:
        blob = None
    return (name, text, "".join(traceback.format_exception(exc)), blob)


def _decode_error(payload: _ErrorPayload) -> BaseException:
    name, text, remote_tb, blob = payload
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:
            exc = None  # pickles but does not unpickle (e.g. a custom __init__ signature)
        if isinstance(exc, BaseException):
            exc.__cause__ = _RemoteTraceback(remote_tb)
            return exc
    wrapper = RemoteHandlerError(name, text, remote_tb)
    wrapper.__cause__ = _RemoteTraceback(remote_tb)
    return wrapper


# -- the parent ---------------------------------------------------------------------------


def _send_loop(conn: Connection[Any, Any], outbox: queue.SimpleQueue[_Batch | None]) -> None:
    """One sender thread per worker: a send blocked on one busy worker's full pipe stalls
    neither the other workers nor the result thread (which must keep reading, or the
    worker could block writing results and never read its input)."""
    while True:
        batch = outbox.get()
        try:
            conn.send(batch)
        except OSError:
            return  # the worker is gone; the result thread reports what it held
        if batch is None:
            return


class _Job:
    __slots__ = ("abandoned", "msg", "span")

    def __init__(self, msg: Message, span: _Span | None) -> None:
        self.msg = msg
        self.span = span
        self.abandoned = False


class _Worker:
    __slots__ = ("broken", "conn", "held", "last_result", "outbox", "process", "ready", "sender")

    def __init__(self, process: BaseProcess, conn: Connection[Any, Any]) -> None:
        self.process = process
        self.conn = conn
        self.outbox: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.sender = threading.Thread(
            target=_send_loop,
            args=(conn, self.outbox),
            name=f"pyrallel-send-{process.pid}",
            daemon=True,
        )
        self.sender.start()
        # token -> when it was sent, in the order the worker runs them (dicts keep
        # insertion order), so the first entry is the call in progress.
        self.held: dict[int, float] = {}
        self.ready = False
        self.last_result = 0.0
        self.broken: str | None = None


class ProcessExecutionEngine(ExecutionEngine):
    """Run a sync, picklable ``handler`` in ``processes`` worker processes.

    ``timeout_s`` is the per-call limit (``handler_timeout_ms`` / 1000, ``None`` for
    none); ``span_factory`` opens the per-message span in the parent. See the module
    docstring for delivery, death, timeout, abandon and stop semantics.
    """

    name = "process"

    def __init__(
        self,
        handler: SyncHandler,
        *,
        processes: int,
        timeout_s: float | None = None,
        span_factory: SpanFactory | None = None,
    ) -> None:
        check_sync_handler(handler, "process")
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ConfigError("process_count", processes, "a positive number of worker processes")
        try:
            self._handler_blob = pickle.dumps(handler)
        except Exception as exc:
            raise ConfigError(
                "handler",
                handler,
                "engine='process' needs a picklable handler (a module-level function or an "
                f"instance of a module-level class); pickling failed: {exc}",
            ) from exc
        self._processes = processes
        self._timeout = timeout_s
        self._span = span_factory
        self._deliver: Deliver | None = None
        self._lock = threading.Lock()  # guards everything below that the threads share
        self._ready = threading.Condition(self._lock)
        self._tokens = itertools.count()
        self._jobs: dict[int, _Job] = {}
        self._pending: deque[int] = deque()
        self._workers: list[_Worker] = []
        self._avg_duration: float | None = None
        self._early_deaths = 0
        self._broken: str | None = None
        self._started = False
        self._stopped = False
        self._reader: threading.Thread | None = None
        self._wake_r, self._wake_w = _CONTEXT.Pipe(duplex=False)
        self.restarts = 0

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """PIDs of the current worker processes (changes when a worker is replaced)."""
        with self._lock:
            return tuple(w.process.pid for w in self._workers if w.process.pid is not None)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        """Start the workers and wait (up to ``_START_WAIT_S``) until they are ready, so
        the first messages spread over all of them."""
        assert not self._started, "engine already started"
        self._started = True
        self._deliver = deliver
        workers = [self._spawn() for _ in range(self._processes)]
        with self._lock:
            self._workers = workers
        self._reader = threading.Thread(
            target=self._read_loop, name="pyrallel-process-results", daemon=True
        )
        self._reader.start()
        with self._ready:
            if not self._ready.wait_for(self._all_ready, _START_WAIT_S):
                log.warning("worker processes not ready after %.0f s; going on", _START_WAIT_S)

    def _all_ready(self) -> bool:
        return self._broken is not None or all(w.ready for w in self._workers)

    def submit(self, messages: list[Message]) -> None:
        assert self._started, "engine not started"
        jobs = [_Job(msg, self._open_span(msg)) for msg in messages]
        with self._lock:
            stopped = self._stopped
            broken = self._broken
            if not stopped and broken is None:
                for job in jobs:
                    token = next(self._tokens)
                    self._jobs[token] = job
                    self._pending.append(token)
                self._dispatch_locked()
        if stopped:
            for job in jobs:
                _close_span(job.span, None)
        elif broken is not None:
            self._finish([(job, self._died(job.msg, broken), 0.0) for job in jobs])

    def abandon(self, topic: str, partition: int) -> None:
        dropped: list[_Job] = []
        with self._lock:
            jobs = self._jobs
            keep: deque[int] = deque()
            for token in self._pending:
                msg = jobs[token].msg
                if msg.partition == partition and msg.topic == topic:
                    dropped.append(jobs.pop(token))
                else:
                    keep.append(token)
            self._pending = keep
            for worker in self._workers:
                for token in worker.held:
                    job = jobs.get(token)
                    if (
                        job is not None
                        and job.msg.partition == partition
                        and job.msg.topic == topic
                    ):
                        job.abandoned = True
        for job in dropped:
            _close_span(job.span, None)

    def stop(self, timeout: float) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            leftovers = list(self._jobs.values())
            self._jobs.clear()
            self._pending.clear()
            workers = list(self._workers)
        deadline = time.monotonic() + max(0.0, timeout)
        if self._reader is not None and self._reader is not threading.current_thread():
            self._wake_w.send_bytes(b"")
            self._reader.join(_JOIN_S * 2)
            if self._reader.is_alive():
                log.warning("process engine result thread did not stop; stopping workers anyway")
            with self._lock:
                workers = list(self._workers)  # it may have replaced one meanwhile
        for worker in workers:
            worker.outbox.put(None)
        self._await_exit(workers, deadline)
        # Still busy after ``timeout``: SIGTERM all, a moment to exit, then SIGKILL.
        busy = [w for w in workers if w.process.exitcode is None]
        for worker in busy:
            log.warning("worker pid=%s still busy at stop; terminating it", worker.process.pid)
            worker.process.terminate()
        self._await_exit(busy, time.monotonic() + _JOIN_S / 2)
        for worker in busy:
            if worker.process.exitcode is None:
                worker.process.kill()
        self._await_exit(busy, time.monotonic() + _JOIN_S)
        for worker in workers:
            self._release(worker)
        self._wake_r.close()
        self._wake_w.close()
        for job in leftovers:
            _close_span(job.span, None)

    def _await_exit(self, workers: list[_Worker], deadline: float) -> None:
        """Wait for workers to exit, reading (and dropping) their results meanwhile: a
        worker blocked writing to a full pipe would never reach its stop marker."""
        readable = {w.conn for w in workers}
        while True:
            alive = [w.process.sentinel for w in workers if w.process.exitcode is None]
            remaining = deadline - time.monotonic()
            if not alive or remaining <= 0:
                return
            ready = wait([*alive, *readable], remaining)
            for conn in [c for c in readable if c in ready]:
                try:
                    while conn.poll():
                        conn.recv()
                except (EOFError, OSError):
                    readable.discard(conn)

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=_worker_main,
            args=(self._handler_blob, child_conn, self._timeout is not None),
            name="pyrallel-worker",
            daemon=True,  # never outlive the consumer, even if stop() is never called
        )
        process.start()
        # The worker has its own copy; keeping ours open would hide its death (no EOF).
        child_conn.close()
        return _Worker(process, parent_conn)

    def _release(self, worker: _Worker) -> None:
        """Close a finished worker's pipe once its sender thread is done with it."""
        worker.outbox.put(None)
        worker.sender.join(_JOIN_S)
        if worker.sender.is_alive():
            # Closing under a blocked send could let the fd be reused by a new pipe and
            # receive stray bytes; leaking one fd is the lesser harm.
            log.warning("sender thread for worker pid=%s is stuck", worker.process.pid)
        else:
            worker.conn.close()

    # -- dispatch (under the lock) -----------------------------------------------------------

    def _dispatch_locked(self) -> None:
        pending = self._pending
        if not pending:
            return
        avg = self._avg_duration
        batch = (
            _INITIAL_BATCH
            if avg is None
            else max(1, min(_MAX_BATCH, int(_BATCH_WORK_S / max(avg, 1e-9))))
        )
        jobs = self._jobs
        now = time.monotonic()
        while pending:
            # One batch at a time to the least-loaded worker, to workers down to their
            # last batch: each holds at most two, so it always has the next one queued
            # while the rest wait here for whichever worker frees up first.
            best: _Worker | None = None
            for worker in self._workers:
                if (
                    worker.ready
                    and len(worker.held) <= batch
                    and (best is None or len(worker.held) < len(best.held))
                ):
                    best = worker
            if best is None:
                return
            out: _Batch = []
            for _ in range(min(batch, len(pending))):
                token = pending.popleft()
                best.held[token] = now
                out.append((token, jobs[token].msg))
            best.outbox.put(out)

    # -- the result thread ---------------------------------------------------------------------

    def _read_loop(self) -> None:
        tick = None if self._timeout is None else min(_TICK_S, self._timeout / 4)
        while not self._stopped:
            try:
                self._read_once(tick)
            except Exception:
                # A bug here must not silently stall every message; keep serving.
                log.exception("process engine result thread failed; continuing")
                time.sleep(_TICK_S)

    def _read_once(self, tick: float | None) -> None:
        with self._lock:
            workers = list(self._workers)
        owner: dict[Any, _Worker] = {}
        for worker in workers:
            owner[worker.conn] = worker
            owner[worker.process.sentinel] = worker
        ready = wait([self._wake_r, *owner], tick)
        if self._wake_r in ready:
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        seen: set[int] = set()
        for obj in ready:
            woken = owner.get(obj)
            if woken is None or id(woken) in seen:
                continue
            seen.add(id(woken))
            if self._collect(woken):
                self._on_death(woken, None)
        if self._timeout is not None:
            self._enforce_timeouts(self._timeout)

    def _collect(self, worker: _Worker) -> bool:
        """Read every result the worker has sent and deliver it; True if it is dead."""
        items: list[Any] = []
        dead = False
        for _ in range(2):
            try:
                while worker.conn.poll():
                    items.append(worker.conn.recv())
            except (EOFError, OSError):
                dead = True
                break
            # A grandchild holding the pipe open would hide EOF; the exit code does not
            # lie. If it exited, one more pass reads what it wrote just before.
            if worker.process.exitcode is None:
                break
            dead = True
        if not items:
            return dead
        done: list[tuple[_Job, _ErrorPayload | None, float]] = []
        with self._lock:
            now = time.monotonic()
            worker.last_result = now
            total = 0.0
            count = 0
            for item in items:
                if isinstance(item, tuple):  # (_READY, pid) or (_BROKEN, reason)
                    if item[0] == _READY:
                        worker.ready = True
                        self._early_deaths = 0
                        self._ready.notify_all()
                    else:
                        worker.broken = str(item[1])
                    continue
                for token, payload, duration in item:
                    worker.held.pop(token, None)
                    total += duration
                    count += 1
                    job = self._jobs.pop(token, None)
                    if job is not None:
                        done.append((job, payload, duration))
            if count:
                mean = total / count
                avg = self._avg_duration
                self._avg_duration = mean if avg is None else avg + 0.2 * (mean - avg)
            self._dispatch_locked()
        self._finish([(job, None if p is None else _decode_error(p), d) for job, p, d in done])
        return dead

    def _enforce_timeouts(self, timeout: float) -> None:
        for worker, token in self._expired(timeout):
            # A result written just before we looked would clear this call; read first.
            if self._collect(worker):
                self._on_death(worker, None)
                continue
            if token not in self._expired_tokens(timeout, worker):
                continue
            log.warning(
                "handler exceeded %.0f ms in worker pid=%s; killing and replacing it",
                timeout * 1000,
                worker.process.pid,
            )
            worker.process.kill()
            worker.process.join(_JOIN_S)
            self._collect(worker)
            self._on_death(worker, token)

    def _expired(self, timeout: float) -> list[tuple[_Worker, int]]:
        with self._lock:
            workers = list(self._workers)
        return [(w, t) for w in workers for t in self._expired_tokens(timeout, w)]

    def _expired_tokens(self, timeout: float, worker: _Worker) -> list[int]:
        now = time.monotonic()
        with self._lock:
            if not worker.ready or not worker.held:
                return []
            token, sent = next(iter(worker.held.items()))
            # It cannot have started before it was sent, nor before the previous
            # result reached us; so this start estimate is never early.
            started = max(sent, worker.last_result)
            return [token] if now - started >= timeout else []

    def _on_death(self, worker: _Worker, timed_out: int | None) -> None:
        """Replace a dead (or just killed) worker and fail every message it held."""
        if worker.process.exitcode is None:
            worker.process.kill()  # closed its pipe but lingers: make it certain
        worker.process.join(_JOIN_S)
        now = time.monotonic()
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            held = list(worker.held.items())
            worker.held.clear()
            # Results are buffered in the worker, so any held message may be the one
            # that killed it: all of them fail (a retryable attempt), none is re-run
            # silently, so a message that crashes every worker cannot loop forever.
            lost = [(t, s, self._jobs.pop(t, None)) for t, s in held]
            stopped = self._stopped
            if not worker.ready and worker.broken is None:
                self._early_deaths += 1
            broken = worker.broken
            if broken is None and self._early_deaths >= _MAX_EARLY_DEATHS:
                broken = (
                    f"{self._early_deaths} worker processes in a row died while starting "
                    f"(last exit code {worker.process.exitcode}); is the handler importable "
                    "and the entry point under `if __name__ == '__main__':`?"
                )
        self._release(worker)
        if stopped:
            for _, _, job in lost:
                if job is not None:
                    _close_span(job.span, None)
            return
        how = _describe_exit(worker.process.exitcode)
        log.warning(
            "worker pid=%s %s holding %d message(s); %s",
            worker.process.pid,
            how,
            len(lost),
            "not replacing it" if broken else "replacing it",
        )
        outcomes: list[tuple[_Job, BaseException | None, float]] = []
        for index, (token, sent, job) in enumerate(lost):
            if job is None:
                continue
            # Only the first held message was running; the rest never started.
            ran = now - max(sent, worker.last_result) if index == 0 else 0.0
            msg = job.msg
            if token == timed_out:
                error: BaseException = HandlerTimeoutError(
                    f"handler exceeded handler_timeout_ms={self._timeout_ms()} for "
                    f"topic={msg.topic} partition={msg.partition} offset={msg.offset}; "
                    f"worker pid={worker.process.pid} was killed and replaced"
                )
            else:
                error = self._died(msg, f"worker process pid={worker.process.pid} {how}")
            outcomes.append((job, error, ran))
        if broken is None:
            try:
                replacement = self._spawn()
            except Exception as exc:  # e.g. out of file descriptors or memory
                log.exception("could not start a replacement worker")
                with self._lock:
                    none_left = not self._workers
                if none_left:
                    self._break(f"cannot start a worker process: {exc!r}")
            else:
                with self._lock:
                    self._workers.append(replacement)
                    self.restarts += 1
        else:
            self._break(broken)
        self._finish(outcomes)

    def _break(self, reason: str) -> None:
        """Workers cannot start at all: fail what waits, and all later submits, at once."""
        with self._lock:
            if self._broken is None:
                log.error("process engine cannot run the handler: %s", reason)
            self._broken = reason
            self._ready.notify_all()
            waiting = [self._jobs.pop(t) for t in self._pending]
            self._pending.clear()
        self._finish([(job, self._died(job.msg, reason), 0.0) for job in waiting])

    # -- delivery --------------------------------------------------------------------------------

    def _finish(self, outcomes: list[tuple[_Job, BaseException | None, float]]) -> None:
        deliver = self._deliver
        assert deliver is not None
        for job, error, duration in outcomes:
            _close_span(job.span, error)
            if not job.abandoned and not self._stopped:
                deliver(job.msg, error, duration)

    def _died(self, msg: Message, why: str) -> WorkerDiedError:
        return WorkerDiedError(
            f"{why} while holding topic={msg.topic} partition={msg.partition} "
            f"offset={msg.offset} (attempt {msg.attempt}); counted as a failed attempt"
        )

    def _timeout_ms(self) -> str:
        return "none" if self._timeout is None else f"{self._timeout * 1000:.0f}"

    def _open_span(self, msg: Message) -> _Span | None:
        factory = self._span
        if factory is None:
            return None
        ctx = contextvars.copy_context()
        try:
            cm = factory(msg)
            ctx.run(cm.__enter__)
        except Exception:
            log.debug("span factory failed for %r", msg, exc_info=True)
            return None
        return (ctx, cm)


def _close_span(span: _Span | None, error: BaseException | None) -> None:
    if span is None:
        return
    ctx, cm = span
    try:
        if error is None:
            ctx.run(cm.__exit__, None, None, None)
        else:
            ctx.run(cm.__exit__, type(error), error, error.__traceback__)
    except Exception:  # telemetry must never change the outcome
        log.debug("closing a span failed", exc_info=True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
