"""A generic resource that misbehaves on request: for demos and tests of error handling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.resources.base import Generic, Resource


class FaultyAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_to_build: bool = False


class Faulty(Generic):
    """``do_command({"echo": x})`` returns x; ``{"raise": "msg"}`` raises; ``{"hang_s": s}`` awaits s
    seconds; ``{"block_s": s}`` blocks the whole event loop s seconds (a hung synchronous driver)."""

    def __init__(self, name: str, attributes: FaultyAttributes, deps: dict[str, Resource] | None = None) -> None:
        if attributes.fail_to_build:
            raise RuntimeError("configured to fail to build")
        super().__init__(name)

    async def do_command(self, command: dict[str, Any]) -> dict[str, Any]:
        if "raise" in command:
            raise RuntimeError(str(command["raise"]))
        if "hang_s" in command:
            await asyncio.sleep(float(command["hang_s"]))
        if "block_s" in command:  # a synchronous call that blocks the part's event loop
            time.sleep(float(command["block_s"]))  # noqa: ASYNC251 - the fault being simulated
        return {"echo": command.get("echo")}
