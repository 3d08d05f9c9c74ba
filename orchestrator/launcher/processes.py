"""Part processes started by ``orchestrator up``: spawn, restart policy with a rate limit, kill.

Each part is a process of its own.  By default (Linux) it is *forked* from a fork server that has
already imported the framework and the installed plugins (the standard library's multiprocessing
``forkserver`` with preload): a part then costs a fork, not a cold interpreter and its imports, and
the preloaded pages stay shared between the parts.  ``ORCHESTRATOR_SPAWN=exec`` starts each part as
``python -m orchestrator.runtime`` instead (what `orchestrator part` and docker compose do).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.context
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.models import PartConfig, RestartPolicy

log = logging.getLogger("orchestrator.up")

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
SPAWN_ENV = "ORCHESTRATOR_SPAWN"
PRELOAD = ["orchestrator.runtime.preload"]


def _prctl(option: int, arg: Any) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except OSError:
        pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """If ``up`` itself is killed, the kernel sends SIGTERM to its parts: they stop bottom-up."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _forked_part(argv: list[str], env: dict[str, str]) -> None:  # pragma: no cover - runs in the forked part
    """The body of a forked part: its own session (Ctrl-C reaches only `up`), SIGTERM when the fork server
    (hence `up`) dies, a name that ps and top show, then the part itself."""
    os.setsid()
    # the fork server lives as long as anyone holds its "alive" pipe, which multiprocessing hands every
    # child too: let go of it, so the fork server exits with `up` and the death signal below reaches us
    from multiprocessing import forkserver

    alive_fd = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_alive_fd", None)
    if isinstance(alive_fd, int):
        with contextlib.suppress(OSError):
            os.close(alive_fd)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    name = argv[argv.index("--name") + 1] if "--name" in argv else "part"
    _prctl(_PR_SET_NAME, ctypes.c_char_p(f"orc:{name}"[:15].encode()))
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from orchestrator.runtime.main import main

    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_context: multiprocessing.context.ForkServerContext | None = None


def fork_context() -> multiprocessing.context.ForkServerContext | None:
    """The preloaded fork server (started on first use), or None where parts are exec'd."""
    global _context
    if os.environ.get(SPAWN_ENV, "fork") == "exec" or not sys.platform.startswith("linux"):
        return None
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        assert isinstance(ctx, multiprocessing.context.ForkServerContext)
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


@dataclass
class PartProcess:
    config: PartConfig
    argv: list[str]  # python -m orchestrator.runtime CONFIG --name NAME ...
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    forked: Any = None  # multiprocessing.Process
    returncode: int | None = None
    restarts: deque[float] = field(default_factory=deque)
    exits: list[int] = field(default_factory=list)
    gave_up: bool = False
    killed: bool = False
    stopping: bool = False
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _reaper: asyncio.Future[None] | None = None
    _cpu_seen: int | None = None  # the main thread's CPU time (ns) at the last look (progressing)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def pid(self) -> int | None:
        if self.forked is not None:
            pid: int | None = self.forked.pid
            return pid
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return (self.proc is not None or self.forked is not None) and self.returncode is None

    async def spawn(self) -> None:
        self.returncode = None
        self._exited = asyncio.Event()
        ctx = fork_context()
        if ctx is not None:
            args = self.argv[self.argv.index("orchestrator.runtime") + 1:]
            process = ctx.Process(target=_forked_part, args=(args, self.env), name=f"part[{self.name}]",
                                  daemon=False)
            await asyncio.to_thread(process.start)  # the first one starts the fork server
            self.forked, self.proc = process, None
            loop = asyncio.get_running_loop()
            loop.add_reader(process.sentinel, self._forked_exit, process)
            return
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches `up` only; `up` runs the ordered shutdown
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.forked = None
        self._reaper = asyncio.ensure_future(self._exec_exit(self.proc))

    def _forked_exit(self, process: Any) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(0)
        code = process.exitcode
        self.returncode = code if code is not None and code >= 0 else 128 - (code or 0)
        self._exited.set()

    async def _exec_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.returncode = code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says
        self._exited.set()

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
        pid = self.pid
        if self.alive and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def main_thread_cpu_ns(self) -> int | None:
        """CPU time of the process's main thread (the one running its event loop), in ns; None when it
        cannot be read (not Linux, the process has gone)."""
        pid = self.pid
        if not self.alive or pid is None:
            return None
        try:
            with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def progressing(self) -> bool:
        """Whether its event loop ran since the last look: a busy process (starved, or waiting on a busy
        broker) still runs its timers; a hung one (frozen, blocked in a call) does not.  The first look
        only takes the measure."""
        now = self.main_thread_cpu_ns()
        prev, self._cpu_seen = self._cpu_seen, now
        return now is not None and prev is not None and now > prev

    def kill(self) -> None:
        if self.alive:
            self.killed = True
            self.signal(signal.SIGKILL)

    async def exited(self) -> int:
        """The exit code, once the process has exited (a signal N gives 128 + N)."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None and self.forked is None:
            return None
        try:
            return await asyncio.wait_for(self.exited(), timeout)
        except TimeoutError:
            return None
