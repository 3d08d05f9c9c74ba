"""A watchdog thread per part: a stalled event loop must not leave actuators moving.

A plugin that blocks the event loop (a synchronous driver call that hangs) freezes everything the
part does with asyncio: calls, heartbeats, session expiry, even reacting to a lost broker.  This
thread needs no event loop.  A task on the loop touches a timestamp every ``period_s``; when it is
older than ``stall_s`` the thread calls ``emergency_stop()`` (synchronous, thread-safe by contract)
on every actuator that has one, and logs which actuators have none.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from orchestrator.resources.base import Actuator

log = logging.getLogger("orchestrator.watchdog")


class LoopWatchdog:
    def __init__(self, part: str, actuators: Callable[[], list[tuple[str, Actuator]]], stall_s: float,
                 period_s: float | None = None) -> None:
        self.part = part
        self.actuators = actuators
        self.stall_s = stall_s
        # a stall is noticed within stall_s + period_s; a quarter of stall_s costs a few wake-ups a second
        self.period_s = period_s if period_s is not None else max(0.01, stall_s / 4)
        self.fired = 0
        self.last_stopped: list[str] = []
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"part[{part}].watchdog", daemon=True)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._last = time.monotonic()
        self._task = asyncio.create_task(self._touch(), name=f"part[{self.part}].watchdog-touch")
        self._thread.start()

    def touch(self) -> None:
        """The loop is alive (called from a task on it)."""
        self._last = time.monotonic()

    def touched_every(self, seconds: float) -> None:
        """The caller's task touches from now on at least every ``seconds`` (the heartbeat loop): when that
        is no longer than ``period_s``, the watchdog's own task stops waking the loop."""
        self.touch()
        if seconds <= self.period_s and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _touch(self) -> None:
        while True:
            self._last = time.monotonic()
            await asyncio.sleep(self.period_s)

    def _run(self) -> None:
        armed = True
        while not self._stop.wait(self.period_s):
            stalled = time.monotonic() - self._last
            if stalled > self.stall_s and armed:
                armed = False
                self._emergency(stalled)
            elif stalled <= self.stall_s:
                armed = True

    def _emergency(self, stalled: float) -> None:
        stopped, unstoppable = [], []
        for name, act in self.actuators():
            es = getattr(act, "emergency_stop", None)
            if not callable(es):
                unstoppable.append(name)
                continue
            try:
                es()
                stopped.append(name)
            except Exception:
                log.exception("part %s: emergency_stop() of %s failed", self.part, name)
                unstoppable.append(name)
        self.fired += 1
        self.last_stopped = stopped
        log.critical("part %s: event loop stalled for %.2f s: emergency-stopped %s%s", self.part, stalled, stopped,
                     f"; no emergency_stop() on {unstoppable}" if unstoppable else "")

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 1.0)
