"""The local stack without Docker: Kafka, Prometheus and the continuous demo on 127.0.0.1.

It starts what ``compose/docker-compose.yml`` describes, from the same files:

* Kafka: the real broker of :mod:`devtools.kafka_broker` (the version the compose file
  pins), on a free port;
* Prometheus: ``/usr/bin/prometheus`` with ``compose/prometheus/prometheus.yml`` in a temp
  dir. Only the scrape targets are rewritten (service names and
  ``host.docker.internal`` become ``127.0.0.1``); the files the compose service mounts
  beside it (the generated rule file) are linked in at the same relative paths, so the
  scrape jobs and the rules are the compose ones;
* the demo: the compose ``demo`` service's command (``pyrallel demo --continuous ...``,
  with ``${VAR:-default}`` taken from the environment), with only the bootstrap servers
  and the metrics address changed.

Grafana is not part of it (no Grafana here); ``docker compose`` brings it. Ctrl-C or
SIGTERM stops everything by PID, demo first so it commits while Kafka is still up::

    python -m devtools.stack [--poison-key KEY] [--prometheus-port 9090] [--demo-port 9465]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from devtools.kafka_broker import REPO_ROOT, KafkaBroker, _die_with_parent, free_port

COMPOSE_FILE = REPO_ROOT / "compose" / "docker-compose.yml"
DEFAULT_PROMETHEUS_PORT = 9090
DEFAULT_DEMO_PORT = 9465
"""The host port the compose file publishes the demo's endpoint on."""

_READY_TIMEOUT = 90.0
_STOP_TIMEOUT = 20.0


class StackError(RuntimeError):
    """A component could not be configured, started or stopped."""


class _Interrupted(Exception):
    """SIGINT/SIGTERM arrived while the stack was still starting."""


# -- reading the compose file ------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise StackError(f"{path}: not a compose file with services")
    return data


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``${NAME}`` and ``${NAME:-default}`` (empty counts as unset), nothing more."""

    def value(match: re.Match[str]) -> str:
        found = env.get(match["name"], "")
        return found if found else (match["default"] or "")

    out = _INTERPOLATION.sub(value, text)
    if "${" in out:
        raise StackError(f"unsupported interpolation in {text!r}")
    return out


def bind_mounts(service: Mapping[str, Any], compose_dir: Path) -> dict[str, Path]:
    """Container path to host path of every bind mount of ``service`` (named volumes skipped)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":", 1)[0]
            if not source.startswith((".", "/")):
                continue  # a named volume
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        mounts[target] = (compose_dir / source).resolve()
    return mounts


def _config_path(service: Mapping[str, Any]) -> str:
    for arg in service.get("command", []):
        if isinstance(arg, str) and arg.startswith("--config.file="):
            return arg.split("=", 1)[1]
    return "/etc/prometheus/prometheus.yml"  # the image's default


def prometheus_files(compose: Mapping[str, Any], compose_dir: Path) -> tuple[Path, dict[str, Path]]:
    """The compose Prometheus config on the host and the files mounted beside it.

    Returns ``(config, {path relative to the config's dir: host path})``: what a copy of
    the config needs around it to find its rule files as it does in the container.
    """
    service = compose["services"]["prometheus"]
    mounts = bind_mounts(service, compose_dir)
    in_container = _config_path(service)
    if in_container not in mounts:
        raise StackError(f"the prometheus service does not mount {in_container}")
    config_dir = in_container.rsplit("/", 1)[0] + "/"
    beside = {
        target[len(config_dir) :]: source
        for target, source in mounts.items()
        if target.startswith(config_dir) and target != in_container
    }
    return mounts[in_container], beside


def local_prometheus_config(
    config: Mapping[str, Any], targets: Mapping[str, str]
) -> dict[str, Any]:
    """A copy of ``config`` whose static targets are mapped through ``targets``.

    Every static target must be in ``targets``: a job added to the compose config without
    a local address fails here instead of silently scraping nothing.
    """
    local = copy.deepcopy(dict(config))
    for job in local.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            unknown = [t for t in static.get("targets", []) if t not in targets]
            if unknown:
                raise StackError(f"job {job.get('job_name')!r}: no local address for {unknown}")
            static["targets"] = [targets[t] for t in static["targets"]]
    return local


def demo_command(
    compose: Mapping[str, Any], env: Mapping[str, str], overrides: Mapping[str, str]
) -> list[str]:
    """The compose demo's arguments (after the ``pyrallel`` entrypoint), interpolated,
    with each ``--flag=value`` named in ``overrides`` replaced (or added)."""
    args = [interpolate(str(a), env) for a in compose["services"]["demo"]["command"]]
    for flag, value in overrides.items():
        item = f"{flag}={value}"
        at = [i for i, a in enumerate(args) if a.startswith(f"{flag}=")]
        if at:
            args[at[0]] = item
        else:
            args.append(item)
    return args


# -- processes -----------------------------------------------------------------------------


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _spawn(cmd: Sequence[str], log_path: Path | None, cwd: Path) -> subprocess.Popen[bytes]:
    out = log_path.open("ab") if log_path is not None else None
    try:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            # Own session: a terminal Ctrl-C reaches only us, and we stop the children
            # in order. PDEATHSIG stops them if we are killed outright.
            start_new_session=True,
            preexec_fn=_die_with_parent
            if threading.current_thread() is threading.main_thread()
            else None,
        )
    finally:
        if out is not None:
            out.close()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = _STOP_TIMEOUT) -> None:
    """SIGTERM ``proc`` by its PID, SIGKILL it after ``timeout``; reaps it either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log: Path | None
) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not ready():
        code = proc.poll()
        if code is not None:
            raise StackError(f"{what} exited with {code} while starting{_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{what} not ready after {_READY_TIMEOUT:.0f} s{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None:
        return ""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return f"; log {log}:\n" + "\n".join(text.splitlines()[-lines:])


class PrometheusServer:
    """``/usr/bin/prometheus`` on 127.0.0.1 with a config written into ``work_dir``.

    ``files`` are linked into ``work_dir`` at their relative paths (rule files the config
    names relative to itself). Data lives in ``work_dir/data``; stopped by PID.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        work_dir: Path,
        *,
        files: Mapping[str, Path] | None = None,
        port: int | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(found).is_file():
            raise StackError("prometheus not found: install the Debian package `prometheus`")
        self.binary = found
        self.config = dict(config)
        self.work_dir = work_dir
        self.files = dict(files or {})
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "prometheus.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PrometheusServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for relative, source in self.files.items():
            link = self.work_dir / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(source)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}/",
        ]
        self._proc = _spawn(cmd, self.log_path, self.work_dir)
        try:
            _wait(lambda: _http_ok(f"{self.url}/-/ready"), self._proc, "prometheus", self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


# -- the stack -----------------------------------------------------------------------------


class Stack:
    """Kafka, Prometheus and the demo, started in that order and stopped in reverse."""

    def __init__(
        self,
        *,
        work_dir: Path,
        prometheus_port: int,
        demo_port: int,
        env: Mapping[str, str],
        demo_log: Path | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.compose = load_compose()
        self.env = dict(env)
        self.demo_port = demo_port
        self.demo_log = demo_log
        self.broker = KafkaBroker(work_dir / "kafka")
        config_file, beside = prometheus_files(self.compose, COMPOSE_FILE.parent)
        compose_config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        local = local_prometheus_config(
            compose_config,
            {
                "demo:9464": f"127.0.0.1:{demo_port}",
                # The host is this machine: a consumer you run yourself on 9464.
                "host.docker.internal:9464": "127.0.0.1:9464",
                "localhost:9090": f"127.0.0.1:{prometheus_port}",
            },
        )
        self.prometheus = PrometheusServer(
            local, work_dir / "prometheus", files=beside, port=prometheus_port
        )
        self.demo: subprocess.Popen[bytes] | None = None

    @property
    def demo_url(self) -> str:
        return f"http://127.0.0.1:{self.demo_port}"

    def start(self) -> Stack:
        try:
            self.broker.start()
            args = demo_command(
                self.compose,
                self.env,
                {
                    "--bootstrap-servers": self.broker.bootstrap,
                    "--metrics-host": "127.0.0.1",
                    "--metrics-port": str(self.demo_port),
                },
            )
            self.demo = _spawn(
                [sys.executable, "-m", "pyrallel.cli", *args], self.demo_log, REPO_ROOT
            )
            _wait(lambda: _http_ok(f"{self.demo_url}/healthz"), self.demo, "demo", self.demo_log)
            self.prometheus.start()
        except BaseException:
            self.stop()
            raise
        return self

    def dead(self) -> str | None:
        """Which component exited on its own, if any."""
        if not self.broker.is_running():
            return f"kafka broker (log {self.broker.log_path})"
        if self.demo is None or self.demo.poll() is not None:
            return "demo"
        if not self.prometheus.is_running():
            return f"prometheus (log {self.prometheus.log_path})"
        return None

    def stop(self) -> None:
        # Demo first: its final commit needs the broker.
        stop_process(self.demo)
        self.prometheus.stop()
        self.broker.stop()

    def state(self) -> dict[str, Any]:
        return {
            "bootstrap": self.broker.bootstrap,
            "prometheus_url": self.prometheus.url,
            "demo_url": self.demo_url,
            "pids": {
                "kafka": self.broker.pid,
                "prometheus": self.prometheus.pid,
                "demo": self.demo.pid if self.demo is not None else None,
            },
            "work_dir": str(self.work_dir),
        }


def _banner(stack: Stack) -> str:
    prom, demo = stack.prometheus.url, stack.demo_url
    return "\n".join(
        [
            "pyrallel local stack is up (no Docker):",
            f"  Kafka bootstrap  {stack.broker.bootstrap}",
            f"  Prometheus       {prom}   alerts: {prom}/alerts   targets: {prom}/targets",
            f"  demo endpoint    {demo}/metrics   {demo}/status   {demo}/healthz",
            "  Grafana          not here: `docker compose -f compose/docker-compose.yml up`",
            "Ctrl-C stops everything.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--prometheus-port",
        type=int,
        default=DEFAULT_PROMETHEUS_PORT,
        help="0 picks a free one",
    )
    parser.add_argument(
        "--demo-port", type=int, default=DEFAULT_DEMO_PORT, help="0 picks a free one"
    )
    parser.add_argument(
        "--poison-key", help="the demo's handler hangs on this key (default: $POISON_KEY)"
    )
    parser.add_argument("--rate", help="demo messages per second (default: $DEMO_RATE or 50)")
    parser.add_argument("--state-file", type=Path, help="write URLs and PIDs as JSON here")
    parser.add_argument("--demo-log", type=Path, help="demo output here (default: terminal)")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.poison_key is not None:
        env["POISON_KEY"] = args.poison_key
    if args.rate is not None:
        env["DEMO_RATE"] = args.rate

    stop = threading.Event()
    started = False

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()
        if not started:
            # Startup can take a minute (a cold broker): abort it; Stack.start() stops
            # whatever it had started before re-raising.
            raise _Interrupted

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    work_dir = Path(tempfile.mkdtemp(prefix="pyrallel-stack-"))
    stack: Stack | None = None
    status = 0
    try:
        stack = Stack(
            work_dir=work_dir,
            prometheus_port=args.prometheus_port or free_port(),
            demo_port=args.demo_port or free_port(),
            env=env,
            demo_log=args.demo_log,
        )
        stack.start()
        started = True
        if args.state_file is not None:
            args.state_file.write_text(json.dumps(stack.state(), indent=2) + "\n")
        print(_banner(stack), flush=True)
        while not stop.wait(1.0):
            dead = stack.dead()
            if dead is not None:
                print(f"{dead} exited on its own; stopping the stack", file=sys.stderr)
                status = 1
                break
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1
    except _Interrupted:
        print("interrupted while starting", file=sys.stderr)
        status = 130
    finally:
        if stack is not None:
            print("stopping: demo, prometheus, kafka", flush=True)
            stack.stop()
        if args.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                args.state_file.unlink()
        shutil.rmtree(work_dir, ignore_errors=True)
    print("stack stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
