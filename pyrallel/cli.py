"""`pyrallel` command line: demo, generate, status, bench.

Each subcommand lives in its own module and exposes ``main(argv) -> int``; this file only
dispatches, so importing the CLI stays cheap and one subcommand's dependencies never
break another.
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pyrallel.demo", "produce keyed messages and consume them in parallel, then verify"),
    "generate": ("pyrallel.monitoring.generate", "write alert rules, dashboards and runbook links"),
    "status": ("pyrallel.observability.status", "diagnose a running consumer from its /status"),
    "bench": ("pyrallel.bench", "run the benchmark suite (see benchmarks/)"),
}


def _usage() -> str:
    lines = ["usage: pyrallel <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help}" for name, (_, help) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in _COMMANDS:
        print(f"pyrallel: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
