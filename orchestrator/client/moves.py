"""Long moves you can await, follow and cancel, in the spirit of ROS 2 actions and Viam's blocking moves.

``go_for``, ``move_straight``, ``spin`` and servo moves return as soon as the actuator accepted the
command (so a client can stop it at any moment); :func:`complete` turns one into an awaitable that
ends when the actuator stops moving::

    from orchestrator.client.moves import complete

    await complete(motor, motor.go_for(rpm=60, revolutions=2), progress=print, timeout=10)

- it returns once ``is_moving()`` is false (polled every ``poll_s``: one call each);
- ``progress(position)`` is called at each poll for actuators with ``get_position()``, and once
  more with the final position;
- **cancelling it (``task.cancel()``, Ctrl-C, a ``timeout``) stops the actuator** before the
  cancellation or :class:`TimeoutError` propagates: a move never outlives the code waiting for it.

It works the same on a local resource (inside a part) and on a remote proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.resources.base import Actuator

__all__ = ["complete", "until_stopped"]

STOP_BOUND_S = 5.0


async def until_stopped(actuator: Actuator, *, poll_s: float = 0.05,
                        progress: Callable[[float], Any] | None = None) -> None:
    """Return when ``actuator`` stops moving (it is polled; nothing is stopped here)."""
    position = getattr(actuator, "get_position", None) if progress is not None else None
    while await actuator.is_moving():
        if position is not None and progress is not None:
            progress(await position())
        await asyncio.sleep(poll_s)
    if position is not None and progress is not None:
        progress(await position())  # the last report is where the move ended


async def complete(actuator: Actuator, start: Awaitable[Any], *, timeout: float | None = None,
                   poll_s: float = 0.05, progress: Callable[[float], Any] | None = None) -> float:
    """Await ``start`` (the call that begins the move), then the end of the move; the seconds it took.

    On cancellation or ``timeout`` the actuator is stopped (bounded, shielded from the cancellation)
    and the error propagates: ``TimeoutError`` for the timeout."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await start
            await until_stopped(actuator, poll_s=poll_s, progress=progress)
    except BaseException:
        stopping = asyncio.ensure_future(asyncio.wait_for(actuator.stop(), STOP_BOUND_S))
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(stopping)
        raise
    return time.monotonic() - began
