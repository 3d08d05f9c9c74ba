"""Stopping background tasks: cancelled, awaited with a bound, and named when they do not stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("orchestrator.tasks")


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], timeout: float = 1.0) -> list[str]:
    """Cancel ``tasks`` and wait for them, at most ``timeout`` seconds; returns the names of those that
    did not stop.  A cancellation can be lost (``asyncio.wait_for`` in Python 3.11 swallows one that
    races with its inner future), so stragglers are cancelled again once before giving up."""
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return []
    current = asyncio.current_task()
    pending.discard(current)
    for t in pending:
        t.cancel()
    _, pending = await asyncio.wait(pending, timeout=timeout / 2)
    for t in pending:
        t.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout / 2)
    stuck = [t.get_name() if isinstance(t, asyncio.Task) else repr(t) for t in pending]
    if stuck:
        log.error("tasks still running after cancellation: %s", ", ".join(stuck))
    return stuck
