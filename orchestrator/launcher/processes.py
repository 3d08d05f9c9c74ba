"""Part processes started by ``orchestrator up``: spawn, restart policy with a rate limit, kill."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from orchestrator.config.models import PartConfig, RestartPolicy

log = logging.getLogger("orchestrator.up")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If ``up`` itself is killed, the kernel sends SIGTERM to its parts: they stop bottom-up."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class PartProcess:
    config: PartConfig
    argv: list[str]
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    restarts: deque[float] = field(default_factory=deque)
    exits: list[int] = field(default_factory=list)
    gave_up: bool = False
    killed: bool = False
    stopping: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `up` only; `up` runs the ordered shutdown
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def may_restart(self, code: int, now: float | None = None) -> tuple[bool, str]:
        """Restart policy with a rate limit: at most ``max_restarts`` inside ``window_s``."""
        pol = self.config.restart
        if pol.policy == RestartPolicy.NEVER:
            return False, "restart policy is 'never'"
        if pol.policy == RestartPolicy.ON_FAILURE and code == 0:
            return False, "exited cleanly (policy on-failure)"
        now = time.monotonic() if now is None else now
        while self.restarts and now - self.restarts[0] > pol.window_s:
            self.restarts.popleft()
        if len(self.restarts) >= pol.max_restarts:
            return False, f"{len(self.restarts)} restarts within {pol.window_s:g} s: giving up"
        self.restarts.append(now)
        return True, f"restart {len(self.restarts)}/{pol.max_restarts}"

    def signal(self, sig: int) -> None:
        if self.alive and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.alive:
            self.killed = True
            self.signal(signal.SIGKILL)

    async def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None
