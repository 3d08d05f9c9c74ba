"""The session management API as a service every part exposes under the reserved name ``_sessions``.

Resource names in a configuration start with a letter or digit, so ``_sessions`` never collides.
The caller's identity comes from the call topic (the broker authenticated it), never from arguments.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import InvalidArgument, SessionExpired
from orchestrator.resources.base import Resource
from orchestrator.sessions.context import current
from orchestrator.sessions.guard import EXPIRED_MESSAGE, SessionGuard

SERVICE = "_sessions"


def _caller() -> str:
    ctx = current.get()
    if ctx is None:
        raise SessionExpired(EXPIRED_MESSAGE)
    return ctx.caller


class SessionService(Resource):
    def __init__(self, guard: SessionGuard, *, can_open: bool, window_s: float) -> None:
        super().__init__(SERVICE)
        self.guard = guard
        self.can_open = can_open
        self.window_s = window_s

    async def open(self, window_s: float | None = None) -> dict[str, Any]:
        """Open a session for the caller: its id, heartbeat secret and window (the robot's by default)."""
        if not self.can_open:
            raise InvalidArgument("sessions are opened with the primary")
        window = self.window_s if window_s is None else window_s
        if not 0.03 <= window <= 60:
            raise InvalidArgument(f"heartbeat window must be within [0.03, 60] s, got {window}")
        owner = _caller()
        sid = self.guard.key.issue(owner, window)
        t = self.guard.validate(owner, sid)  # the primary tracks every session it opens (listing, events)
        self.guard._event("opened", t, [])
        return {"id": sid, "secret": self.guard.key.heartbeat_secret(sid), "window_s": window}

    async def associate(self, session: str, resource: str) -> None:
        """Stop ``resource`` (hosted by this part) when ``session`` expires; only its owner may ask."""
        if resource not in self.guard.resources:
            raise InvalidArgument(f"part {self.guard.part} hosts no resource {resource!r}")
        self.guard.associate(_caller(), session, resource)

    async def dissociate(self, session: str, resource: str) -> None:
        self.guard.dissociate(_caller(), session, resource)

    async def list(self) -> list[dict[str, Any]]:
        """Sessions this part tracks: owner, age, last heartbeat, resources they own here."""
        return self.guard.describe()
