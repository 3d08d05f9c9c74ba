"""The session benchmark's client process: a real :class:`~orchestrator.client.RobotClient`, no framework bypass.

    python -m bench.session_client CONFIG HOST PORT NAME PART/RESOURCE

Connects as client ``NAME`` (``RobotClient`` opens a session with the primary and heartbeats it at
window / 5 from a thread of its own), sets the motor ``PART/RESOURCE`` moving in that session,
prints ``ready <session id>`` and then waits, at most ten minutes, for the benchmark's SIGKILL.
(The same as ``tests/session_client.py``, with a fixed client name so its heartbeat topic is known.)
"""

from __future__ import annotations

import asyncio
import sys

from orchestrator.client import RobotClient
from orchestrator.resources.base import Motor

MAX_LIFE_S = 600.0


async def main(config: str, host: str, port: int, name: str, target: str) -> None:
    async with RobotClient.from_config(config, urls=[(host, port)], name=name, timeout=10.0) as robot:
        await robot.resource(target, Motor).set_power(0.5)  # type: ignore[type-abstract]
        assert robot.session is not None
        print(f"ready {robot.session.id}", flush=True)
        await asyncio.sleep(MAX_LIFE_S)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
