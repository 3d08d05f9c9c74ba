"""The client side of sessions: open, heartbeat (from a thread), close, list, associate, expiry events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ProtocolError
from orchestrator.protocol.codec import Envelope, decode
from orchestrator.protocol.messages import SessionEvent, SessionsState
from orchestrator.sessions.guard import ENDING_KINDS
from orchestrator.sessions.heartbeat import Heartbeater
from orchestrator.sessions.service import SERVICE
from orchestrator.sessions.tokens import public_id, short

if TYPE_CHECKING:
    from orchestrator.client.robot_client import RobotClient

log = logging.getLogger("orchestrator.client")


@dataclass
class Session:
    """An open session.  ``heartbeats=False`` at open: call :meth:`heartbeat` yourself (manual API).

    When the robot ends it (it expired at some part, it was ended through the API, the upstream link
    was lost), ``ended`` says why, its heartbeats stop, and every call made in it raises
    :class:`~orchestrator.errors.SessionExpired`: open a new one (``RobotClient.renew_session``)."""

    id: str
    window_s: float
    owner: str
    _heart: Heartbeater = field(repr=False)
    _auto: bool = field(default=True, repr=False)
    closed: bool = False
    ended: str | None = None  # why the robot ended it; None while it lives

    @property
    def short_id(self) -> str:
        return short(self.id)

    @property
    def public_id(self) -> str:
        return public_id(self.id)

    @property
    def alive(self) -> bool:
        return not self.closed and self.ended is None

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
        self.on_end: list[Callable[[Session, SessionEvent], None]] = []
        self._listening = False
        self._ended: list[Session] = []  # ended by the robot; their heartbeat connections closed or closing
        self._releasing: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        """Follow the robot's session events (done at connect): a session the robot ends is marked here.

        Also every part's retained sessions state, which lists the sessions it saw end: an event is not
        retained, and one published while this client was away (a broker restarted without persistence:
        a part's queued event can reach the broker before this client has subscribed again) would be lost;
        the retained state is delivered again on every resubscription."""
        if not self._listening:
            self._listening = True
            await self.robot.mqtt.subscribe(self.robot.topics.all_session_events(), self._on_event)
            await self.robot.mqtt.subscribe(self.robot.topics.all_session_states(), self._on_state)

    def _from_part(self, msg: Any) -> Envelope | None:
        """The envelope of a message a part published on its own topic, else None (ignored)."""
        if self.robot.topics.sender_of(msg.topic) is None:
            return None
        try:
            env = decode(msg.payload)
        except ProtocolError:
            return None
        if not self.robot.topics.authentic(msg.topic, env.src) or not env.src.startswith("part/"):
            return None
        return env

    def _on_event(self, msg: Any) -> None:
        env = self._from_part(msg)
        if env is None:
            return
        try:
            ev = env.parse(SessionEvent)
        except ProtocolError:
            return
        if ev.kind in ENDING_KINDS:
            self._ended_by_robot(ev)

    def _on_state(self, msg: Any) -> None:
        env = self._from_part(msg) if self._open else None
        if env is None:
            return
        try:
            st = env.parse(SessionsState)
        except ProtocolError:
            return
        mine = {s.public_id for s in self._open if s.ended is None and not s.closed}
        for e in st.ended:
            if e.session in mine:
                self._ended_by_robot(SessionEvent(kind="ended", session=e.session, owner=e.owner,
                                                  part=env.src.removeprefix("part/"), at=e.at,
                                                  reason=e.reason or "ended (the part's sessions state)"))

    def _ended_by_robot(self, ev: SessionEvent) -> None:
        for s in list(self._open):
            if s.public_id == ev.session and s.ended is None and not s.closed:
                s.ended = ev.reason or f"{ev.kind} at part {ev.part}"
                s._heart.stop_soon()
                self._release(s)
                for cb in list(self.on_end):
                    try:
                        cb(s, ev)
                    except Exception:
                        log.exception("session end callback failed")

    def _release(self, s: Session) -> None:
        """Close an ended session's heartbeat connection (it would otherwise reconnect for ever) and forget it."""
        task = asyncio.get_running_loop().create_task(s._heart.aclose(), name=f"session[{s.short_id}].release")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        if s in self._open:
            self._open.remove(s)
        self._ended.append(s)

    async def open(self, window_s: float | None = None, *, heartbeats: bool = True) -> Session:
        """Open a session with the primary (window: the robot's configured one by default)."""
        r = self.robot
        await self.listen()
        hb_client_id = Heartbeater.client_id_for(r.mqtt)
        info = await r.rpc.call(await r.primary_name(), SERVICE, "open",
                                {"window_s": window_s, "connections": [r.mqtt.client_id, hb_client_id]},
                                session=None)
        sid, secret, window = str(info["id"]), str(info["secret"]), float(info["window_s"])
        heart = Heartbeater(r.mqtt, r.topics.session_heartbeat(r.id.sender), r.id.sender, sid, secret, window / 5,
                            client_id=hb_client_id)
        s = Session(sid, window, r.id.sender, heart, heartbeats)
        await heart.start(auto=heartbeats)
        self._open.append(s)
        return s

    async def end(self, session: Session | str, reason: str = "ended by its client") -> None:
        """End a session robot-wide through the primary (any operator may end any session): it stops
        everywhere, bottom-up, and is refused afterwards."""
        r = self.robot
        sid = session.id if isinstance(session, Session) else session
        await r.rpc.call(await r.primary_name(), SERVICE, "end", {"session": sid, "reason": reason}, session=None)

    async def close_all(self) -> None:
        for s in self._open:
            await asyncio.to_thread(s.close)
            await s._heart.aclose()
        self._open.clear()
        for s in self._ended:
            await s._heart.aclose()  # idempotent: released already, or being released
        self._ended.clear()
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)

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
    async def events(self, only_mine: bool = True, maxsize: int = 10_000) -> AsyncIterator[asyncio.Queue[SessionEvent]]:
        """A queue of session events (opened, owned, expired, closed) published by the parts: only from the
        part whose topic it is, at most ``maxsize`` unread (newer ones are dropped while it is full)."""
        q: asyncio.Queue[SessionEvent] = asyncio.Queue(maxsize)
        mine = {s.short_id for s in self._open}

        def on(msg: Any) -> None:
            with contextlib.suppress(ProtocolError, asyncio.QueueFull):
                env = decode(msg.payload)
                if not self.robot.topics.authentic(msg.topic, env.src) or not env.src.startswith("part/"):
                    return
                ev = env.parse(SessionEvent)
                if not only_mine or ev.owner == self.robot.id.sender or ev.session in mine:
                    q.put_nowait(ev)

        await self.robot.mqtt.subscribe(self.robot.topics.all_session_events(), on)
        yield q
