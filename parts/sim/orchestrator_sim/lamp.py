"""A session-aware resource: an example of the session management API from inside a plugin.

``orc:sim:lamp`` is an actuator (a warning lamp) that also keeps a log of the session expiries its
part sees; a real plugin could use the same hook to park an arm when its operator's session ends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.resources.base import Actuator, Resource, actuating
from orchestrator.sessions import SessionEvent, SessionGuard, current_call


class LampAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimLamp(Actuator):
    def __init__(self, name: str, attributes: LampAttributes, deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.on = False
        self.guard: SessionGuard | None = None
        self.expiries: list[SessionEvent] = []
        self.switched_by: str | None = None

    def attach_sessions(self, guard: SessionGuard) -> None:
        self.guard = guard
        guard.on_expiry(self.expiries.append)

    @actuating
    async def switch_on(self) -> None:
        ctx = current_call()
        self.switched_by = ctx.caller if ctx else None
        self.on = True

    async def stop(self) -> None:
        self.on = False

    async def is_moving(self) -> bool:
        return self.on

    async def do_command(self, command: dict[str, Any]) -> dict[str, Any]:
        """``{"expiries": true}``: the session events this part saw, newest last."""
        return {"expiries": [e.model_dump() for e in self.expiries], "switched_by": self.switched_by}
