"""A part's own answer to "running and connected", kept in a file for a container health check.

``orchestrator health`` answers from the broker (it connects, reads the part's retained state and waits
for one of its live heartbeats): honest, but it is a Python process that imports the framework, about
0.35 s of CPU per check.  A health check runs every few seconds in every container, so 50 part
containers on a small computer spent their cores on health checks and never came up healthy
(docs/deploy.md).  The part already proves its link all the time: each of its heartbeats comes back
to it through the broker (the echo, see :mod:`orchestrator.runtime.part`).  On each echo while it is
``running`` it writes one line::

    running <until> birth=<birth> pid=<pid>

where ``until`` is the Unix time (whole seconds, rounded up) after which the line is no longer true
if no further echo renews it: a frozen process (``docker pause``), a dead link or a stalled loop
stops renewing it and the check fails by itself.  Any other state is written as it happens, with
``until`` 0 (``stopping 0 <reason>``, ``disconnected 0 <reason>``, ``stopped 0``).  The check is a
POSIX shell line (:func:`shell_check`): a ``read`` and one ``date``, no Python.

The file is written atomically (a temporary file renamed over it), at most once per second while
nothing changes.  A write that fails (read-only or full file system) is logged once and never stops
the part.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

__all__ = ["DEFAULT_PATH", "HealthFile", "shell_check"]

log = logging.getLogger("orchestrator.part")

DEFAULT_PATH = "/run/orchestrator/health"
# seconds past the heartbeat window a line stays true: a busy machine delays an echo
SLACK_S = 1.0


class HealthFile:
    """Writes the part's health line to ``path`` (nothing at all when ``path`` is None)."""

    def __init__(self, path: str | Path | None, window_s: float) -> None:
        self.path = Path(path) if path else None
        self.window_s = window_s + SLACK_S
        self._line = ""
        self._failed = False

    def running(self, birth: int, pid: int) -> None:
        """An echo of our heartbeat came back while running: true until one window from now."""
        if self.path is None:  # every echo of every part comes here: nothing to do without a file
            return
        until = math.ceil(time.time() + self.window_s)
        self._write(f"running {until} birth={birth} pid={pid}")

    def not_running(self, state: str, reason: str = "") -> None:
        """Anything but running and connected, said at once (``state`` is one word)."""
        why = " ".join(reason.split())[:200]
        self._write(f"{state} 0 {why}".rstrip())

    def _write(self, line: str) -> None:
        if self.path is None or line == self._line:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(line + "\n", encoding="ascii", errors="replace")
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot write the health file %s (%s): the container health check will fail",
                            self.path, exc)
            return
        self._line = line


def shell_check(path: str = DEFAULT_PATH) -> str:
    """The POSIX ``sh`` line that exits 0 while the file says running and its time has not passed, and
    prints why not (one line) otherwise.  For ``HEALTHCHECK``/compose ``CMD-SHELL`` (a compose file
    needs every ``$`` doubled)."""
    return (f'f={path}; {{ read -r s u r < "$f"; }} 2>/dev/null && [ "$s" = running ] && [ "$(date +%s)" -le "$u" ] '
            f'&& echo "healthy: $s $r" || {{ [ -r "$f" ] && echo "unhealthy: $(cat "$f")" '
            f'|| echo "unhealthy: no health file $f (part not started yet?)"; exit 1; }}')
