"""One log format for every process of a robot (``up``, the broker, each part, the CLI).

Human by default, one line per record naming the process it comes from::

    2026-12-02 19:10:04,512 WARNING [part base] orchestrator.sessions: session 3f2a... expired

JSON lines on request (``ORCHESTRATOR_LOG_FORMAT=json`` or ``--log-format json``), one object per record
with ``ts``, ``level``, ``who``, ``logger``, ``message`` (and ``exc`` for a traceback), for journald, Loki
or Docker's log drivers.  The level comes from ``ORCHESTRATOR_LOG`` (default WARNING, DEBUG with -v).
"""

from __future__ import annotations

import json
import logging
import os
import sys

__all__ = ["JsonFormatter", "setup_logging"]

HUMAN = "%(asctime)s %(levelname)s [%(who)s] %(name)s: %(message)s"


class _Who(logging.Filter):
    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def filter(self, record: logging.LogRecord) -> bool:
        record.who = self.who
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "who": getattr(record, "who", ""),
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(who: str, verbose: bool = False, fmt: str | None = None) -> None:
    """Configure the root logger of this process; ``who`` names it on every line (``part base``, ``up``)."""
    level = os.environ.get("ORCHESTRATOR_LOG", "DEBUG" if verbose else "WARNING").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        level = "WARNING"
    fmt = (fmt or os.environ.get("ORCHESTRATOR_LOG_FORMAT", "human")).lower()
    root = logging.getLogger()
    if any(not getattr(h, "_orchestrator", False) for h in root.handlers):
        # logging is already set up by whoever embeds us (an application, pytest): like basicConfig, leave it
        # (a handler of ours on a stream that is later closed would turn every record into a traceback)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN))
    handler.addFilter(_Who(who))
    handler.setLevel(level)
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h, "_orchestrator", False):
            root.removeHandler(h)
    handler._orchestrator = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
