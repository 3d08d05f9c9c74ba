"""`python -m bench [NAME...]`: run benchmarks (all of them by default), print one JSON document.

Progress goes to stderr; stdout carries only the JSON document, so `python -m bench > out.json` works.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("orchestrator", "parts")  # the code under measurement


def code_state() -> dict[str, Any]:
    """Which code a benchmark measured: the commit, files changed from it, and a digest of every source file.

    Others may edit the working tree while a benchmark runs: compare the digest before and after.
    """
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    digest = hashlib.sha1()
    for path in sorted(p for d in SOURCES for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(ROOT)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            continue
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "changed_from_commit": [line[3:] for line in git("status", "--porcelain", "--", *SOURCES).splitlines()],
            "source_sha1": digest.hexdigest()[:12]}


def _core() -> dict[str, Any]:
    from bench import core

    return core.run()


def _calls() -> dict[str, Any]:
    from bench import calls

    return calls.run()


def _sessions() -> dict[str, Any]:
    from bench import sessions

    return sessions.run()


def _broker() -> dict[str, Any]:
    from bench import broker

    return broker.run()


def _operating() -> dict[str, Any]:
    from bench import operating

    return operating.run()


def _disconnection() -> dict[str, Any]:
    from bench import disconnection

    return disconnection.run()


def _hotpath() -> dict[str, Any]:
    from bench import hotpath

    return hotpath.run()


def _deploy() -> dict[str, Any]:
    from bench import deploy

    return deploy.run()


BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {"core": _core, "calls": _calls, "sessions": _sessions,
                                                       "broker": _broker, "operating": _operating,
                                                       "disconnection": _disconnection, "hotpath": _hotpath,
                                                       "deploy": _deploy}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(map(repr, unknown))} (known: {', '.join(BENCHMARKS)})",
              file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    for n in names:
        before = code_state()
        out[n] = BENCHMARKS[n]()
        after = code_state()["source_sha1"]
        out[n]["code"] = {**before, "source_changed_during_run": after != before["source_sha1"]}
        if after != before["source_sha1"]:
            print(f"warning: the sources under {', '.join(SOURCES)} changed while `{n}` ran", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
