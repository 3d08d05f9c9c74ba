"""Entry point of one part process (``orchestrator part CONFIG --name NAME``)."""

from __future__ import annotations

import asyncio
import logging
import signal

from orchestrator.config.loader import LoadedConfig
from orchestrator.runtime.part import Part
from orchestrator.runtime.primary import Primary

log = logging.getLogger("orchestrator.part")


def make_part(loaded: LoadedConfig, name: str, urls: list[tuple[str, int]] | None = None) -> Part:
    cls = Primary if loaded.topology.parent(name) is None else Part
    return cls(loaded, name, urls=urls)


async def run_part(loaded: LoadedConfig, name: str, urls: list[tuple[str, int]] | None = None) -> int:
    part = make_part(loaded, name, urls)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, part.request_stop, f"{signal.Signals(sig).name}")
    return await part.run()
