"""``pyrallel bench``: the benchmark suite (scenarios and contenders in ``benchmarks/``).

Starts a real Kafka broker (``devtools/kafka_broker.py``), fills the topics once, runs
every scenario's contenders alternately and writes ``benchmarks/results/latest.json``
and ``latest.md``. ``--smoke`` is the seconds-long variant with tiny counts and one
repetition that the test suite runs. The harness lives in the source checkout, not in
the installed package: this module only finds it and parses the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyrallel bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, tiny counts, one repetition, local contenders only (what CI runs)",
    )
    p.add_argument(
        "--scenarios",
        default="",
        metavar="N,N",
        help="run only these scenario numbers, e.g. 1,2 (default: all seven)",
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="repetitions per contender (default 3; smoke 1)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for latest.json and latest.md "
        "(default benchmarks/results; with --smoke .cache/bench/smoke)",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="use this running broker instead of starting one (topics are added to it)",
    )
    for name, what in (
        ("peer", "the Python peer pyrallel-consumer"),
        ("java", "the Java reference"),
    ):
        group = p.add_mutually_exclusive_group()
        group.add_argument(
            f"--{name}", dest=name, action="store_true", default=None, help=f"run {what}"
        )
        group.add_argument(f"--no-{name}", dest=name, action="store_false", help=f"skip {what}")
    return p


def _scenarios(text: str) -> frozenset[int] | None:
    if not text.strip():
        return None
    try:
        numbers = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        numbers = frozenset()
    if not numbers or not numbers <= frozenset(range(1, 8)):
        raise SystemExit(f"pyrallel bench: --scenarios {text!r}: numbers 1-7, comma separated")
    return numbers


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        print("pyrallel bench: --repeats must be >= 1", file=sys.stderr)
        return 2
    if not (_CHECKOUT / "benchmarks" / "harness.py").is_file():
        print(
            "pyrallel bench runs from a source checkout: benchmarks/ was not found next to "
            f"{Path(__file__).parent}",
            file=sys.stderr,
        )
        return 2
    if str(_CHECKOUT) not in sys.path:
        sys.path.insert(0, str(_CHECKOUT))
    from benchmarks.harness import Options, run

    return run(
        Options(
            smoke=args.smoke,
            scenarios=_scenarios(args.scenarios),
            repeats=args.repeats,
            out=args.out,
            bootstrap=args.bootstrap_servers,
            peer=args.peer,
            java=args.java,
        )
    )
