"""Session safety where the actuator lives.

Each part keeps, for the sessions that drive its resources, the expiry timer itself: it follows
their heartbeats on the owners' own topics and, when one goes silent for its window, calls
``stop()`` on exactly the resources that session owns here.  No message from the primary is needed,
so this still happens when the primary is unreachable.

Ownership: an actuating call made in a session binds the resource to that session (the last
session that actuated it owns it); a read never binds; an actuating call made outside any session
clears the owner.  With ``default_management: false`` nothing is bound by calls; resources
associated by hand (:meth:`SessionGuard.associate`) are still stopped on expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.models import SessionsConfig
from orchestrator.errors import ProtocolError, SessionExpired
from orchestrator.protocol.codec import decode, encode
from orchestrator.protocol.messages import SessionEvent, SessionHeartbeat
from orchestrator.protocol.topics import Topics
from orchestrator.resources.base import Actuator, Resource
from orchestrator.rpc.methods import MethodSpec, api_methods
from orchestrator.sessions.context import CallContext, current
from orchestrator.sessions.tokens import SessionKey, heartbeat_tag, short
from orchestrator.tasks import cancel_and_wait
from orchestrator.transport.client import Message, MqttClient

log = logging.getLogger("orchestrator.sessions")

MAX_SLEEP_S = 1.0  # the expiry task sleeps until the earliest deadline, at most this long
EXPIRED_MESSAGE = "session expired or unknown"

ExpiryListener = Callable[[SessionEvent], Awaitable[None] | None]


@dataclass
class Tracked:
    id: str
    owner: str
    window_s: float
    deadline: float  # monotonic
    last_n: int = 0
    last_heartbeat: float | None = None  # wall clock
    first_seen: float = field(default_factory=time.time)
    manual: set[str] = field(default_factory=set)


class SessionGuard:
    def __init__(self, part: str, sender: str, mqtt: MqttClient, topics: Topics, key: SessionKey,
                 config: SessionsConfig, resources: dict[str, Resource]) -> None:
        self.part = part
        self.sender = sender
        self.mqtt = mqtt
        self.topics = topics
        self.key = key
        self.config = config
        self.resources = resources
        self.tracked: dict[str, Tracked] = {}
        self.owner_of: dict[str, str] = {}  # resource -> session id
        self.expired: OrderedDict[str, float] = OrderedDict()
        self.listeners: list[ExpiryListener] = []
        self.stop_latencies: list[float] = []  # seconds from the deadline to stop() returning (bench)
        self._owners_followed: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Future[Any]] = set()
        self._tracking_changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._tick_loop(), name=f"part[{self.part}].session-expiry")

    async def close(self) -> None:
        await cancel_and_wait([t for t in (self._task, *self._bg) if t is not None])

    # -- validation and ownership -------------------------------------------------------------------
    def validate(self, owner: str, session: str) -> Tracked:
        """The tracked session ``session`` of ``owner``; SessionExpired (one message) otherwise."""
        if session in self.expired:
            raise SessionExpired(EXPIRED_MESSAGE, part=self.part)
        t = self.tracked.get(session)
        if t is not None:
            if t.owner != owner:
                raise SessionExpired(EXPIRED_MESSAGE, part=self.part)
            return t
        window = self.key.check(owner, session)
        if window is None:
            raise SessionExpired(EXPIRED_MESSAGE, part=self.part)
        t = Tracked(session, owner, window, deadline=time.monotonic() + window)
        self.tracked[session] = t
        self._tracking_changed.set()
        self._follow(owner)
        return t

    def _follow(self, owner: str) -> None:
        if owner in self._owners_followed:
            return
        self._owners_followed.add(owner)
        task = asyncio.ensure_future(self.mqtt.subscribe(self.topics.session_heartbeat(owner), self._on_heartbeat,
                                                         qos=0))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def before_call(self, ctx: CallContext, direct: bool, resource: str, res: Resource,
                          spec: MethodSpec) -> None:
        """RPC hook: validate the session, refresh it on a direct call, bind on an actuating method."""
        if ctx.session is None:
            if spec.actuating:
                self.release(resource)
            return
        t = self.validate(ctx.caller, ctx.session)
        if direct:
            t.deadline = max(t.deadline, time.monotonic() + t.window_s)
        if spec.actuating and self.config.default_management:
            self.bind(resource, t)

    def bind(self, resource: str, t: Tracked) -> None:
        prev = self.owner_of.get(resource)
        self.owner_of[resource] = t.id
        if prev != t.id:
            self._event("owned", t, [resource])

    def release(self, resource: str) -> None:
        self.owner_of.pop(resource, None)

    def associate(self, owner: str, session: str, resource: str) -> None:
        """Manual API: stop ``resource`` when ``session`` expires, whatever default management says."""
        t = self.validate(owner, session)
        t.manual.add(resource)

    def dissociate(self, owner: str, session: str, resource: str) -> None:
        self.validate(owner, session).manual.discard(resource)

    def owned_by(self, session: str) -> list[str]:
        t = self.tracked.get(session)
        owned = {r for r, s in self.owner_of.items() if s == session}
        return sorted(owned | (t.manual if t else set()))

    def on_expiry(self, listener: ExpiryListener) -> None:
        """Call ``listener(event)`` (sync or async) after every session expiry or close seen here."""
        self.listeners.append(listener)

    def guard_resource(self, name: str, res: Resource) -> None:
        """Wrap the actuating methods of a hosted resource so calls *between* resources inside this part
        (a base driving its motors) bind ownership to the session of the call that started them.

        A resource with an ``attach_sessions(guard)`` method receives this guard: the session management
        API from inside a plugin (associate, on_expiry, describe)."""
        attach = getattr(res, "attach_sessions", None)
        if callable(attach):
            attach(self)
        for mname, spec in api_methods(type(res)).items():
            if not spec.actuating:
                continue
            original = getattr(res, mname)
            setattr(res, mname, self._wrap(name, original, spec))

    def _wrap(self, name: str, fn: Callable[..., Awaitable[Any]], spec: MethodSpec) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = current.get()
            if ctx is not None:
                if ctx.session is None:
                    self.release(name)
                elif self.config.default_management:
                    self.bind(name, self.validate(ctx.caller, ctx.session))
            return await fn(*args, **kwargs)

        return wrapper

    # -- heartbeats and expiry --------------------------------------------------------------------
    def _on_heartbeat(self, msg: Message) -> None:
        owner = self.topics.owner_of_heartbeat(msg.topic)
        try:
            hb = decode(msg.payload).parse(SessionHeartbeat)
        except ProtocolError:
            return
        t = self.tracked.get(hb.session)
        if t is None or t.owner != owner or hb.n <= t.last_n:
            return  # unknown here, another owner's topic, or a replay
        if hb.tag != heartbeat_tag(self.key.heartbeat_secret(hb.session), hb.session, hb.n):
            log.warning("part %s: forged heartbeat for session %s ignored", self.part, short(hb.session))
            return
        t.last_n = hb.n
        t.last_heartbeat = time.time()
        if hb.close:
            task = asyncio.ensure_future(self._expire(t, "closed"))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)
        else:
            t.deadline = time.monotonic() + t.window_s

    async def _tick_loop(self) -> None:
        """Sleep until the earliest deadline (woken early when a session starts being tracked), then
        expire what is due.  No fixed tick: a deadline is acted on as soon as the loop gets to it."""
        while True:
            now = time.monotonic()
            for t in [t for t in self.tracked.values() if now >= t.deadline]:
                await self._expire(t, "expired")
            earliest = min((t.deadline for t in self.tracked.values()), default=now + MAX_SLEEP_S)
            self._tracking_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(earliest - time.monotonic(), 0.0), MAX_SLEEP_S)):
                    await self._tracking_changed.wait()

    async def _expire(self, t: Tracked, why: str) -> None:
        if self.tracked.pop(t.id, None) is None:
            return
        self.expired[t.id] = time.time()
        while len(self.expired) > 10000:
            self.expired.popitem(last=False)
        doomed = set(t.manual)
        if self.config.default_management:
            doomed |= {r for r, s in self.owner_of.items() if s == t.id}
        for res_name in [n for n, sid in self.owner_of.items() if sid == t.id]:
            del self.owner_of[res_name]
        stopped, errors = [], []
        for name in sorted(doomed):
            res = self.resources.get(name)
            if not isinstance(res, Actuator):
                continue
            try:
                await asyncio.wait_for(res.stop(), timeout=max(0.1, t.window_s))
                stopped.append(name)
            except Exception as exc:  # a stop that fails or hangs is recorded; the others still stop
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
        lateness = time.monotonic() - t.deadline
        if why == "expired":
            self.stop_latencies.append(lateness)
        log.warning("part %s: session %s of %s %s; stopped %s", self.part, short(t.id), t.owner, why, stopped)
        ev = self._event(why, t, stopped, detail="; ".join(errors))
        for listener in list(self.listeners):
            try:
                r = listener(ev)
                if r is not None:
                    await r
            except Exception:
                log.exception("session expiry listener failed")

    def _event(self, kind: str, t: Tracked, resources: list[str], detail: str = "") -> SessionEvent:
        ev = SessionEvent(kind=kind, session=short(t.id), owner=t.owner, part=self.part, resources=resources,
                          at=time.time(), detail=detail)
        self.mqtt.publish_nowait(self.topics.session_events(self.part), encode(self.sender, ev), qos=1)
        return ev

    def describe(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {"session": short(t.id), "owner": t.owner, "window_s": t.window_s, "age_s": round(now - t.first_seen, 3),
             "last_heartbeat_s_ago": None if t.last_heartbeat is None else round(now - t.last_heartbeat, 3),
             "resources": self.owned_by(t.id), "part": self.part}
            for t in self.tracked.values()
        ]
