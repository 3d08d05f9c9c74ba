"""`python -m bench [NAME...]`: run benchmarks, print one JSON document."""

from __future__ import annotations

import json
import sys

from bench import core


def main() -> None:
    names = sys.argv[1:] or ["core"]
    out = {}
    for n in names:
        if n == "core":
            out["core"] = core.run()
        else:
            raise SystemExit(f"unknown benchmark {n!r} (known: core)")
    print(json.dumps(out, indent=2))


main()
