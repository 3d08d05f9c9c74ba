"""The client side of sessions: open, heartbeat (from a thread), close, list, associate, expiry events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ProtocolError
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import SessionEvent
from orchestrator.sessions.heartbeat import Heartbeater
from orchestrator.sessions.service import SERVICE
from orchestrator.sessions.tokens import short

if TYPE_CHECKING:
    from orchestrator.client.robot_client import RobotClient


@dataclass
class Session:
    """An open session.  ``heartbeats=False`` at open: call :meth:`heartbeat` yourself (manual API)."""

    id: str
    window_s: float
    owner: str
    _heart: Heartbeater = field(repr=False)
    _auto: bool = field(default=True, repr=False)
    closed: bool = False

    @property
    def short_id(self) -> str:
        return short(self.id)

    def heartbeat(self) -> bool:
        """Send one heartbeat now (thread-safe); with automatic heartbeats this is never needed."""
        return self._heart.beat()

    def close(self) -> None:
        """Close the session: the parts stop what it owns, at once.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._auto:
            self._heart.stop(close=True)
        else:
            self._heart.beat(close=True)


class ClientSessions:
    """``robot.sessions``: the session management API of a :class:`RobotClient`."""

    def __init__(self, robot: RobotClient) -> None:
        self.robot = robot
        self._open: list[Session] = []

    async def open(self, window_s: float | None = None, *, heartbeats: bool = True) -> Session:
        """Open a session with the primary (window: the robot's configured one by default)."""
        r = self.robot
        info = await r.rpc.call(await r.primary_name(), SERVICE, "open", {"window_s": window_s}, session=None)
        sid, secret, window = str(info["id"]), str(info["secret"]), float(info["window_s"])
        heart = Heartbeater(r.mqtt, r.topics.session_heartbeat(r.id.sender), r.id.sender, sid, secret, window / 5)
        s = Session(sid, window, r.id.sender, heart, heartbeats)
        await heart.start(auto=heartbeats)
        self._open.append(s)
        return s

    async def close_all(self) -> None:
        for s in self._open:
            await asyncio.to_thread(s.close)
            await s._heart.aclose()
        self._open.clear()

    async def associate(self, session: Session, path: str) -> None:
        """Stop ``PART/RESOURCE`` when ``session`` expires, whatever the robot's default management."""
        part, _, name = path.partition("/")
        await self.robot.rpc.call(part, SERVICE, "associate", {"session": session.id, "resource": name},
                                  session=None)

    async def dissociate(self, session: Session, path: str) -> None:
        part, _, name = path.partition("/")
        await self.robot.rpc.call(part, SERVICE, "dissociate", {"session": session.id, "resource": name},
                                  session=None)

    async def list(self, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Every session the running parts track: owner, age, last heartbeat, resources owned (per part)."""
        r = self.robot
        parts = [p for p, (_, st) in r.rpc.part_states.items() if st.value in ("running", "starting")]

        async def one(part: str) -> list[dict[str, Any]]:
            try:
                got = await r.rpc.call(part, SERVICE, "list", {}, timeout=timeout, session=None)
                return list(got)
            except Exception:
                return []

        rows = await asyncio.gather(*(one(p) for p in parts))
        return [row for rs in rows for row in rs]

    @contextlib.asynccontextmanager
    async def events(self, only_mine: bool = True) -> AsyncIterator[asyncio.Queue[SessionEvent]]:
        """A queue of session events (opened, owned, expired, closed) published by the parts."""
        q: asyncio.Queue[SessionEvent] = asyncio.Queue()
        mine = {s.short_id for s in self._open}

        def on(msg: Any) -> None:
            with contextlib.suppress(ProtocolError):
                ev = decode(msg.payload).parse(SessionEvent)
                if not only_mine or ev.owner == self.robot.id.sender or ev.session in mine:
                    q.put_nowait(ev)

        await self.robot.mqtt.subscribe(self.robot.topics.all_session_events(), on)
        yield q
