"""The session management API as a service every part exposes under the reserved name ``_sessions``.

Resource names in a configuration start with a letter or digit, so ``_sessions`` never collides.
The caller's identity comes from the call topic (the broker authenticated it), never from arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.errors import InvalidArgument, SessionExpired
from orchestrator.resources.base import Resource
from orchestrator.sessions.context import current
from orchestrator.sessions.guard import EXPIRED_MESSAGE, SessionGuard
from orchestrator.sessions.tokens import public_id

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
        # the primary remembers which MQTT connections hold a session, to close them when it ends
        self.on_open: Callable[[str, str, list[str]], None] | None = None

    async def open(self, window_s: float | None = None, connections: list[str] | None = None) -> dict[str, Any]:
        """Open a session for the caller: its id, heartbeat secret and window (the robot's by default).

        ``connections``: the caller's MQTT client ids, closed by the embedded broker when the robot ends
        the session (only connections authenticated as the caller's own identity are ever closed)."""
        if not self.can_open:
            raise InvalidArgument("sessions are opened with the primary")
        window = self.window_s if window_s is None else window_s
        if not 0.03 <= window <= 60:
            raise InvalidArgument(f"heartbeat window must be within [0.03, 60] s, got {window}")
        owner = _caller()
        sid = self.guard.key.issue(owner, window)
        t = self.guard.validate(owner, sid)  # the primary tracks every session it opens (listing, events)
        if self.on_open is not None:
            self.on_open(t.public, owner, [str(c)[:200] for c in (connections or [])[:16]])
        self.guard._event("opened", t, [])
        return {"id": sid, "secret": self.guard.key.heartbeat_secret(sid), "window_s": window}

    async def end(self, session: str, reason: str = "ended through the session management API") -> None:
        """End a session robot-wide, bottom-up (by its public id or its full id), as if it had expired:
        what it owns stops everywhere, it is refused afterwards, its owner is told."""
        if not self.can_open or self.guard.end_robot_wide is None:
            raise InvalidArgument("sessions are ended through the primary")
        public = public_id(session)
        if self.guard.find(public) is None and public not in self.guard.ended:
            raise SessionExpired(EXPIRED_MESSAGE)
        self.guard.end_robot_wide(public, f"ended by {_caller()}: {reason[:200]}", "ended")

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
