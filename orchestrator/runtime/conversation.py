"""Parent-to-children conversations on the wire: ask every child, wait for each one's report.

The bottom-up shutdown, the robot-wide end of a session and the halt of every actuator all have
the same shape: a parent sends a control message to each child, each child does the same with its
own children first, acts, and reports; the parent waits for each report, at most that child's stop
budget, and stops waiting for a child whose Will says it is gone.  A report is believed only from
the child itself (the topic is reserved to it), for the conversation it answers (its id), and only
while that conversation is open: an early or forged "done" can never make a parent skip a child.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")

ALIVE_RECHECK_S = 0.1  # past its budget, how often a child's liveness is looked at again


@dataclass
class _Open(Generic[R]):
    children: set[str]
    reports: dict[str, tuple[float, R]] = field(default_factory=dict)
    events: dict[str, asyncio.Event] = field(default_factory=dict)  # a report, or the child is gone
    received: dict[str, asyncio.Event] = field(default_factory=dict)  # a report only


class Conversations(Generic[R]):
    """Open conversations of one kind (keyed by their id) and the reports they received."""

    def __init__(self) -> None:
        self._open: dict[str, _Open[R]] = {}

    def open(self, conversation: str, children: Iterable[str]) -> None:
        kids = set(children)
        self._open[conversation] = _Open(kids, events={c: asyncio.Event() for c in kids},
                                         received={c: asyncio.Event() for c in kids})

    def close(self, conversation: str) -> None:
        self._open.pop(conversation, None)

    def is_open(self, conversation: str) -> bool:
        return conversation in self._open

    def offer(self, conversation: str, child: str, report: R) -> bool:
        """A report from ``child`` (the topic says so) for ``conversation``: kept only if that
        conversation is open and asked that child; the first report of a child wins."""
        conv = self._open.get(conversation)
        if conv is None or child not in conv.children or child in conv.reports:
            return False
        conv.reports[child] = (time.time(), report)
        conv.events[child].set()
        conv.received[child].set()
        return True

    def report(self, conversation: str, child: str) -> tuple[float, R] | None:
        conv = self._open.get(conversation)
        return conv.reports.get(child) if conv is not None else None

    async def late(self, conversation: str, children: Iterable[str], grace: float) -> None:
        """Wait at most ``grace`` s for the reports of ``children`` that are known to be on their way: each
        said it stopped, which a part does only after it has published its report.  A broker may deliver
        one publisher's messages on two topics out of order (a NATS cluster: one JetStream consumer per
        subscription), so the "stopped" state can overtake the report."""
        conv = self._open.get(conversation)
        if conv is None:
            return
        waits = [conv.received[c].wait() for c in children if c in conv.received and c not in conv.reports]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*waits)

    def child_gone(self, child: str) -> None:
        """A child's Will arrived: stop waiting for it in every open conversation."""
        for conv in self._open.values():
            ev = conv.events.get(child)
            if ev is not None:
                ev.set()

    async def wait(self, conversation: str, budget: Callable[[str], float], gone: Callable[[str], bool], *,
                   alive: Callable[[str], bool] | None = None, cap: float | None = None) -> \
            dict[str, tuple[float, R] | None]:
        """Each child's (time received, report), or None for a child that did not report (or is gone);
        waits for all children at once.

        A child gets its ``budget``; past it, a child that is still ``alive`` (heard from: a busy machine,
        not a hung part) is waited for up to ``cap`` (a ``time.monotonic()`` deadline: the overall bound
        of the conversation).  A child that goes silent is given up at once."""
        conv = self._open.get(conversation)
        if conv is None:
            return {}

        async def one(child: str) -> None:
            if child in conv.reports or gone(child):
                return
            ev = conv.events[child]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget(child)):
                    await ev.wait()
            while not ev.is_set() and alive is not None and cap is not None and alive(child) and not gone(child):
                left = cap - time.monotonic()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, ALIVE_RECHECK_S)):
                        await ev.wait()

        await asyncio.gather(*(one(c) for c in conv.children))
        return {c: conv.reports.get(c) for c in conv.children}
