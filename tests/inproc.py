"""Robots whose parts run inside the test's event loop (fast), on a real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from robot import unique_robot, write_config

from orchestrator.client import RobotClient
from orchestrator.config import LoadedConfig, load_config
from orchestrator.runtime.main import make_part
from orchestrator.runtime.part import Part


@contextlib.asynccontextmanager
async def running_robot(tmp: Path, where: tuple[str, int], parts: list[dict[str, Any]],
                        **top: Any) -> AsyncIterator[tuple[LoadedConfig, dict[str, Part]]]:
    robot = unique_robot()
    cfg = write_config(tmp / f"{robot}.yaml", robot, {"urls": [f"mqtt://{where[0]}:{where[1]}"]}, parts, **top)
    loaded = load_config(cfg)
    started: dict[str, Part] = {}
    try:
        for name in loaded.topology.start_order():
            p = make_part(loaded, name)
            await p.start()
            started[name] = p
        yield loaded, started
    finally:
        for name in loaded.topology.stop_order():
            if name in started:
                await asyncio.wait_for(started[name].close(), 10)


@contextlib.asynccontextmanager
async def client_for(loaded: LoadedConfig, **kw: Any) -> AsyncIterator[RobotClient]:
    async with RobotClient.from_config(loaded, **kw) as c:
        yield c
