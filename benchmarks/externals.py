"""The peers that live outside this venv: the Python peer's venv and the Java build.

Each ``prepare_*`` is idempotent (cached under ``.cache/``) and returns an
:class:`External`: the command prefix to run the contender with, or the reason it
cannot run, which the report shows instead of numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.plan import JAVA_PC_VERSION, PEER_VERSION

PEER_PACKAGE = f"pyrallel-consumer=={PEER_VERSION}"
PEER_PYTHONS = ("/root/.pyenv/versions/3.12.1/bin/python3.12", "python3.12", "python3.13")
"""Where to look for a Python >= 3.12 (the peer's requirement); ``PYRALLEL_BENCH_PEER_PYTHON``
overrides."""


@dataclass
class External:
    name: str
    command: list[str] = field(default_factory=list)
    reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.command)


def _run(cmd: list[str], timeout: float, cwd: Path | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, f"{type(exc).__name__}: {exc}"
    return done.returncode, (done.stdout + done.stderr).strip()


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _find_python312() -> str | None:
    override = os.environ.get("PYRALLEL_BENCH_PEER_PYTHON")
    for candidate in ((override,) if override else ()) + PEER_PYTHONS:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def prepare_peer(root: Path, log: list[str]) -> External:
    """A venv under ``.cache/bench-peer-venv`` with ``pyrallel-consumer`` from PyPI."""
    ext = External(f"pyrallel-consumer {PEER_VERSION}")
    venv = root / ".cache" / "bench-peer-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import pyrallel_consumer.consumer, sys; print(sys.version)"]
    code, out = _run(probe, 60) if python.exists() else (1, "")
    if code != 0:
        base = _find_python312()
        if base is None:
            ext.reason = "needs Python >= 3.12 and none was found (PYRALLEL_BENCH_PEER_PYTHON)"
            return ext
        log.append(f"creating the peer venv with {base}")
        code, out = _run([base, "-m", "venv", str(venv)], 120)
        if code == 0:
            code, out = _run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    PEER_PACKAGE,
                ],
                600,
            )
        if code != 0:
            ext.reason = f"could not install {PEER_PACKAGE}: {_tail(out)}"
            return ext
        code, out = _run(probe, 60)
        if code != 0:
            ext.reason = f"{PEER_PACKAGE} installed but does not import: {_tail(out)}"
            return ext
    ext.versions["python"] = out.splitlines()[-1].split()[0] if out else "?"
    code, versions = _run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, confluent_kafka as c; "
            "print(m.version('pyrallel-consumer'), c.version()[0], c.libversion()[0])",
        ],
        60,
    )
    if code == 0 and versions:
        pkg, ck, rd = versions.split()[-3:]
        ext.versions.update({"pyrallel-consumer": pkg, "confluent-kafka": ck, "librdkafka": rd})
    ext.command = [str(python), "-m", "benchmarks.peer_worker"]
    return ext


def prepare_java(root: Path, log: list[str]) -> External:
    """Build ``benchmarks/java`` with Maven (parallel-consumer-core from Maven Central)."""
    ext = External(f"parallel-consumer {JAVA_PC_VERSION}")
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if java is None or mvn is None:
        ext.reason = "java and mvn are needed on PATH"
        return ext
    project = root / "benchmarks" / "java"
    build = root / ".cache" / "bench-java"
    marker = build / "classes" / "dev" / "pyrallel" / "bench" / "PcBench.class"
    sources = [project / "pom.xml", *project.rglob("*.java")]
    fresh = marker.exists() and (build / "lib").is_dir()
    if fresh:
        built = marker.stat().st_mtime
        fresh = all(src.stat().st_mtime <= built for src in sources)
    if not fresh:
        log.append("building benchmarks/java with mvn (parallel-consumer-core from Maven Central)")
        code, out = _run([mvn, "-q", "-B", "-f", str(project / "pom.xml"), "package"], 900)
        if code != 0:
            if "parallel-consumer" in out and ("resolve" in out or "Could not" in out):
                ext.reason = (
                    f"io.confluent.parallelconsumer:parallel-consumer-core:{JAVA_PC_VERSION} "
                    f"not resolvable: {_tail(out, 3)}"
                )
            else:
                ext.reason = f"mvn package failed: {_tail(out)}"
            return ext
    code, out = _run([java, "-version"], 30)
    ext.versions["java"] = out.splitlines()[0] if out else "?"
    ext.versions["parallel-consumer"] = JAVA_PC_VERSION
    ext.versions["kafka-clients"] = next(
        (
            p.name[len("kafka-clients-") : -len(".jar")]
            for p in (build / "lib").glob("kafka-clients-*.jar")
        ),
        "?",
    )
    ext.command = [
        java,
        "-Xmx1g",
        "-cp",
        f"{build / 'classes'}{os.pathsep}{build / 'lib'}/*",
        "dev.pyrallel.bench.PcBench",
    ]
    return ext


def python_worker() -> list[str]:
    return [sys.executable, "-m", "benchmarks.worker"]
