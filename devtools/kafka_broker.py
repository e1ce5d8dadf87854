"""A real single-node Apache Kafka broker (KRaft, broker+controller) for tests and demos.

The jars come from Maven Central through ``devtools/kafka/pom.xml``; no Kafka distribution
tarball is needed. Usage::

    with KafkaBroker() as broker:        # formats storage, starts, waits for metadata
        use(broker.bootstrap)            # "127.0.0.1:<port>"
        broker.restart()                 # same data dir, same ports

CLI::

    python -m devtools.kafka_broker fetch                 # download jars only (idempotent)
    python -m devtools.kafka_broker run [--state-file F]  # run until SIGINT/SIGTERM
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

DEFAULT_KAFKA_VERSION = "4.1.1"
DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 30.0

REPO_ROOT = Path(__file__).resolve().parent.parent
POM_PATH = Path(__file__).resolve().parent / "kafka" / "pom.xml"
CACHE_ROOT = REPO_ROOT / ".cache" / "kafka"

# Written last by fetch(): a lib folder without it is a half-finished download.
_COMPLETE_MARKER = ".complete"
_NODE_ID = 1


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted, started or stopped."""


def lib_dir(version: str = DEFAULT_KAFKA_VERSION) -> Path:
    return CACHE_ROOT / version / "lib"


def fetch(version: str = DEFAULT_KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """Copy Kafka and its runtime dependencies into the cache; a no-op when already there."""
    target = lib_dir(version)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("`mvn` not found on PATH: Maven is needed to fetch the Kafka jars")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download next to the target and rename, so an interrupted fetch never looks complete.
    staging = Path(tempfile.mkdtemp(prefix="lib.", dir=target.parent))
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(POM_PATH),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-Dkafka.version={version}",
        f"-DoutputDirectory={staging}",
    ]
    if not quiet:
        print(f"fetching Apache Kafka {version} jars into {target}", file=sys.stderr)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(
                f"mvn dependency:copy-dependencies failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"mvn succeeded but no kafka_2.13 jar landed in {staging}")
        (staging / _COMPLETE_MARKER).write_text(version + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def random_cluster_id() -> str:
    # Kafka's Uuid text form: 16 bytes, URL-safe base64 without padding. A leading "-"
    # would be parsed as a command-line flag by StorageTool.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    settings: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": _NODE_ID,
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "log.dirs": str(data_dir),
        "num.partitions": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        # One node: internal topics cannot have more replicas, or groups and
        # transactions never become available. Few partitions keep startup quick.
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # The 3 s default delays every first classic-group join in every test.
        "group.initial.rebalance.delay.ms": 0,
        # KIP-848 ("consumer" protocol) groups take their timeouts from the broker only;
        # the defaults (45 s session, 5 s heartbeat) make failover tests crawl.
        "group.consumer.min.session.timeout.ms": 6000,
        "group.consumer.session.timeout.ms": 10000,
        "group.consumer.min.heartbeat.interval.ms": 500,
        "group.consumer.heartbeat.interval.ms": 1000,
        # Compaction tests need the cleaner to pick up dirty segments within seconds.
        "log.cleaner.enable": "true",
        "log.cleaner.backoff.ms": 1000,
        "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
        "delete.topic.enable": "true",
        "auto.create.topics.enable": "true",
    }
    lines = ["# Written by devtools/kafka_broker.py; regenerated on every start."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _log4j2_config(log_file: Path) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by devtools/kafka_broker.py: everything goes to one file in the broker dir. -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{html.escape(str(log_file), quote=True)}" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Root level="INFO">
      <AppenderRef ref="file"/>
    </Root>
  </Loggers>
</Configuration>
"""


def _load_prctl() -> ctypes._NamedFuncPointer | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved up front: the child must not dlopen between fork and exec while librdkafka
# threads may hold the loader lock in the parent.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process is SIGKILLed, the
    # kernel sends the broker SIGTERM instead of leaving a 512 MB JVM behind.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class KafkaBroker:
    """One combined broker+controller KRaft node on 127.0.0.1, run as a child JVM.

    Ports and storage are chosen once; ``stop()`` followed by ``start()`` (or
    ``restart()``) brings the same node back with its data and on the same ports.
    """

    def __init__(
        self,
        work_dir: str | os.PathLike[str] | None = None,
        *,
        version: str = DEFAULT_KAFKA_VERSION,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        java: str | None = None,
    ) -> None:
        self.version = version
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.heap = heap
        self._java = java or shutil.which("java") or "java"
        self._owns_work_dir = work_dir is None
        self.work_dir = Path(
            tempfile.mkdtemp(prefix="pyrallel-kafka-") if work_dir is None else work_dir
        ).resolve()
        saved = self._saved_ports()
        self.port = port or saved.get("port") or free_port()
        # The KRaft voter set records the controller endpoint at format time, so a reused
        # data dir must keep its controller port.
        self.controller_port = controller_port or saved.get("controller_port") or free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._atexit_registered = False
        self.last_start_seconds: float | None = None

    # -- paths -----------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_path(self) -> Path:
        """Broker log4j output and the JVM's own stdout/stderr, appended across restarts."""
        return self.work_dir / "logs" / "kafka.log"

    @property
    def config_path(self) -> Path:
        return self.work_dir / "server.properties"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> KafkaBroker:
        if self._closed:
            raise BrokerError("this KafkaBroker was closed; create a new one")
        if self.is_running():
            return self
        began = time.monotonic()
        lib = fetch(self.version, quiet=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_config()
        if not (self.data_dir / "meta.properties").is_file():
            self._format_storage(lib)
        self._launch(lib)
        try:
            self._wait_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.last_start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> KafkaBroker:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the broker and delete its directory if this object created it."""
        self.stop()
        self._closed = True
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- internals -------------------------------------------------------------------

    @property
    def _ports_path(self) -> Path:
        return self.work_dir / "ports.json"

    def _saved_ports(self) -> dict[str, int]:
        try:
            raw = json.loads(self._ports_path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in raw.items() if isinstance(v, int)} if isinstance(raw, dict) else {}

    def _write_config(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ports = {"port": self.port, "controller_port": self.controller_port}
        self._ports_path.write_text(json.dumps(ports) + "\n")
        self.config_path.write_text(
            _server_properties(self.data_dir, self.port, self.controller_port)
        )
        self._log4j_path.write_text(_log4j2_config(self.log_path))

    @property
    def _log4j_path(self) -> Path:
        return self.work_dir / "log4j2.xml"

    def _java_cmd(self, lib: Path, main: str, *args: str, heap: str) -> list[str]:
        return [
            self._java,
            f"-Xmx{heap}",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._log4j_path}",
            f"-Dkafka.logs.dir={self.log_path.parent}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def _format_storage(self, lib: Path) -> None:
        cmd = self._java_cmd(
            lib,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            random_cluster_id(),
            "-c",
            str(self.config_path),
            "--standalone",
            heap="256m",
        )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(
                f"kafka StorageTool format failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def _launch(self, lib: Path) -> None:
        cmd = self._java_cmd(lib, "kafka.Kafka", str(self.config_path), heap=self.heap)
        on_main_thread = threading.current_thread() is threading.main_thread()
        with self.log_path.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # A terminal Ctrl-C goes to the foreground group; we stop the broker ourselves.
                start_new_session=True,
                # PDEATHSIG fires when the forking *thread* exits, so only arm it on the main one.
                preexec_fn=_die_with_parent if on_main_thread and _PRCTL is not None else None,
            )
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

    def _wait_ready(self, deadline: float) -> None:
        # A plain TCP probe first: librdkafka would log a connection-refused line per try.
        while not self._port_open():
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._timeout_error("the client port never opened")
            time.sleep(0.1)

        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "reconnect.backoff.ms": 50,
                "reconnect.backoff.max.ms": 500,
                "log_level": 3,
            }
        )
        last_error: Exception | None = None
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout_error(f"metadata never served (last error: {last_error})")
            try:
                metadata = admin.list_topics(timeout=min(2.0, remaining))
            except Exception as exc:  # confluent_kafka.KafkaException, a transient state here
                last_error = exc
                time.sleep(0.2)
                continue
            if _NODE_ID in metadata.brokers:
                return
            last_error = BrokerError(f"metadata lists brokers {list(metadata.brokers)}")
            time.sleep(0.2)

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _check_alive(self) -> None:
        if self._proc is None:
            raise BrokerError("broker is not running")
        code = self._proc.poll()
        if code is not None:
            self._proc = None
            raise BrokerError(
                f"kafka broker exited with {code} during startup; log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def _timeout_error(self, what: str) -> BrokerError:
        return BrokerError(
            f"kafka broker not ready after {self.start_timeout:.0f} s: {what}; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )


# -- command line ----------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    began = time.monotonic()
    path = fetch(args.kafka_version)
    print(f"kafka {args.kafka_version} jars ready in {path} ({time.monotonic() - began:.1f} s)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    broker = KafkaBroker(
        args.work_dir,
        version=args.kafka_version,
        port=args.port,
        start_timeout=args.timeout,
    )
    state_file = Path(args.state_file) if args.state_file else None
    exit_code = 0
    try:
        broker.start()
        state = {
            "bootstrap": broker.bootstrap,
            "pid": broker.pid,
            "log_path": str(broker.log_path),
            "data_dir": str(broker.data_dir),
            "kafka_version": broker.version,
        }
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            state_file.write_text(json.dumps(state, indent=2) + "\n")
        print(f"kafka {broker.version} ready in {broker.last_start_seconds:.1f} s")
        print(f"bootstrap: {broker.bootstrap}")
        print(f"pid: {broker.pid}")
        print(f"log: {broker.log_path}")
        print("press Ctrl-C to stop", flush=True)
        while not stop_requested.wait(1.0):
            if not broker.is_running():
                print(f"broker exited on its own; log {broker.log_path}", file=sys.stderr)
                exit_code = 1
                break
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        broker.stop()
        if args.work_dir is None:
            broker.close()
        if state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                state_file.unlink()
    print("broker stopped")
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.kafka_broker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--kafka-version", default=DEFAULT_KAFKA_VERSION)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the Kafka jars into .cache/kafka (idempotent)")
    run = sub.add_parser("run", help="run a broker in the foreground until SIGINT/SIGTERM")
    run.add_argument("--state-file", help="write bootstrap/pid JSON here while running")
    run.add_argument("--work-dir", help="keep config, data and logs here (default: temp dir)")
    run.add_argument("--port", type=int, help="client port (default: a free one)")
    run.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return _cmd_fetch(args)
    return _cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
