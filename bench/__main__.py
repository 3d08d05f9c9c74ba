"""`python -m bench [NAME...]`: run benchmarks (all of them by default), print one JSON document.

Progress goes to stderr; stdout carries only the JSON document, so `python -m bench > out.json` works.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def _core() -> dict[str, Any]:
    from bench import core

    return core.run()


def _calls() -> dict[str, Any]:
    from bench import calls

    return calls.run()


BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {"core": _core, "calls": _calls}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(map(repr, unknown))} (known: {', '.join(BENCHMARKS)})",
              file=sys.stderr)
        return 2
    out = {n: BENCHMARKS[n]() for n in names}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
