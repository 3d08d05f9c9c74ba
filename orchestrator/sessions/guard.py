"""Session safety where the actuator lives, and a session that ends as one across the robot.

Each part keeps, for the sessions that drive its resources, the expiry timer itself: it follows
their heartbeats on the owners' own topics and, when one goes silent for its window, calls
``stop()`` on exactly the resources that session owns here.  No message from the primary is needed,
so this still happens when the primary is unreachable.

A session ends as one: when a part expires a session (or its owner closes it), it says so on its
events topic; every other part then refuses that session at once, and the primary ends it
robot-wide, bottom-up (see ``Part.end_session``): sub-parts stop what it owned and report, then the
primary stops its own, publishes ``ended`` (the SDK is told) and closes the client's connections.
While the primary is reachable, a sub-part's own timer waits a short grace beyond the window for
that ordered end; without a primary it acts at the window.  Ended sessions are remembered (retained
on ``part/<p>/sessions/state``, re-announced on reconnect), so a part that restarts refuses them too.

Ownership: an actuating call made in a session binds the resource to that session (the last
session that actuated it owns it); a read never binds; ``stop()`` clears the owner.  An actuating
call outside any session on a resource that a live session owns is refused (``ResourceBusy``):
otherwise the resource would no longer stop when its owner goes away.  With ``default_management:
false`` nothing is bound by calls; resources associated by hand (:meth:`SessionGuard.associate`) are
still stopped on expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config.models import SessionsConfig
from orchestrator.errors import ProtocolError, ResourceBusy, SessionExpired
from orchestrator.protocol.codec import decode, encode
from orchestrator.protocol.messages import (
    EndedSession,
    SessionEvent,
    SessionHeartbeat,
    SessionsState,
    TrackedSession,
)
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import Topics
from orchestrator.resources.base import Actuator, Resource
from orchestrator.rpc.methods import MethodSpec, api_methods
from orchestrator.sessions.context import CallContext, current
from orchestrator.sessions.tokens import SessionKey, heartbeat_tag, public_id, short
from orchestrator.tasks import cancel_and_wait
from orchestrator.transport.client import Message, MqttClient

log = logging.getLogger("orchestrator.sessions")

MAX_SLEEP_S = 1.0  # the expiry task sleeps until the earliest deadline, at most this long
EXPIRED_MESSAGE = "session expired or unknown"
MAX_ENDED = 1000  # ended sessions remembered (and announced) per part
MAX_LATENCIES = 10_000  # expiry latencies kept (bench)
MAX_GRACE_S = 0.5
STATE_DEBOUNCE_S = 0.1
# expired (a timer ran out), closed (by its owner), ended (by the API, or the robot-wide end is complete),
# halted (the upstream rule), stopped (a part stopped what the session owned there, during the end)
ENDING_KINDS = ("expired", "closed", "ended", "halted", "stopped")

ExpiryListener = Callable[[SessionEvent], Awaitable[None] | None]


def grace_of(window_s: float) -> float:
    """How long past its window a sub-part waits for the primary's ordered end before acting alone."""
    return min(MAX_GRACE_S, 0.25 * window_s)


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
    ending: str = ""  # why the robot is ending it ("" while it lives)
    expires_at: float = 0.0  # monotonic: last heartbeat + window (what the grace is added to)

    @property
    def public(self) -> str:
        return public_id(self.id)


class SessionGuard:
    def __init__(self, part: str, sender: str, mqtt: MqttClient, topics: Topics, key: SessionKey,
                 config: SessionsConfig, resources: dict[str, Resource], *, is_primary: bool = False,
                 refusals: Refusals | None = None,
                 mirror: Callable[[str, Any, bool], None] | None = None) -> None:
        self.part = part
        self.sender = sender
        self.mqtt = mqtt
        self.topics = topics
        self.key = key
        self.config = config
        self.resources = resources
        self.is_primary = is_primary
        self.refusals = refusals or Refusals(f"part {part}")
        self.tracked: dict[str, Tracked] = {}
        self.owner_of: dict[str, str] = {}  # resource -> session id
        self.ended: OrderedDict[str, EndedSession] = OrderedDict()  # public id -> why and when
        self.listeners: list[ExpiryListener] = []
        # the primary: end a session robot-wide (set by the primary part); None elsewhere
        self.end_robot_wide: Callable[[str, str, str], None] | None = None
        # a sub-part: is the primary reachable (then it orders the end of a session)?
        self.primary_reachable: Callable[[], bool] = lambda: False
        # seconds from the deadline to stop() returning (bench): the last ones only, one per expiry
        self.stop_latencies: deque[float] = deque(maxlen=MAX_LATENCIES)
        self.stops: dict[str, int] = {}  # session ends that stopped actuators here, by kind (metrics)
        self.mirror = mirror
        self._followed: dict[str, int] = {}  # owner -> tracked sessions (its heartbeat subscription)
        self._task: asyncio.Task[None] | None = None
        self._state_task: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Future[Any]] = set()
        self._tracking_changed = asyncio.Event()
        self._state_dirty = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    async def subscribe(self) -> None:
        """Register before connecting: every part hears every other part's session events and states."""
        await self.mqtt.subscribe(self.topics.all_session_events(), self._on_event)
        await self.mqtt.subscribe(self.topics.all_session_states(), self._on_state)

    def start(self) -> None:
        self._task = asyncio.create_task(self._tick_loop(), name=f"part[{self.part}].session-expiry")
        self._state_task = asyncio.create_task(self._state_loop(), name=f"part[{self.part}].session-state")

    async def close(self) -> None:
        await cancel_and_wait([t for t in (self._task, self._state_task, *self._bg) if t is not None])

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"part[{self.part}].{name}")
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- validation and ownership -------------------------------------------------------------------
    def validate(self, owner: str, session: str) -> Tracked:
        """The tracked session ``session`` of ``owner``; SessionExpired (one message) otherwise."""
        t = self.tracked.get(session)
        if t is not None:
            if t.owner != owner or t.ending:
                raise SessionExpired(EXPIRED_MESSAGE, part=self.part)
            return t
        if public_id(session) in self.ended:
            raise SessionExpired(EXPIRED_MESSAGE, part=self.part)
        window = self.key.check(owner, session)
        if window is None:
            raise SessionExpired(EXPIRED_MESSAGE, part=self.part)
        now = time.monotonic()
        t = Tracked(session, owner, window, deadline=now + window + self._grace(window), expires_at=now + window)
        self.tracked[session] = t
        self._tracking_changed.set()
        self._state_dirty.set()
        self._follow(owner)
        return t

    def _grace(self, window: float) -> float:
        return 0.0 if self.is_primary or not self.primary_reachable() else grace_of(window)

    def _follow(self, owner: str) -> None:
        n = self._followed.get(owner, 0)
        self._followed[owner] = n + 1
        if n == 0:
            self._spawn(self.mqtt.subscribe(self.topics.session_heartbeat(owner), self._on_heartbeat, qos=0),
                        "session-follow")

    def _unfollow(self, owner: str) -> None:
        """The owner's last tracked session is gone: drop its heartbeat subscription (bounded growth)."""
        n = self._followed.get(owner, 0) - 1
        if n > 0:
            self._followed[owner] = n
            return
        self._followed.pop(owner, None)
        self._spawn(self.mqtt.unsubscribe(self.topics.session_heartbeat(owner)), "session-unfollow")

    async def before_call(self, ctx: CallContext, direct: bool, resource: str, res: Resource,
                          spec: MethodSpec) -> None:
        """RPC hook: validate the session, refresh it on a direct call, bind on an actuating method."""
        if ctx.session is None:
            if spec.actuating:
                self.check_unowned(resource)
            elif spec.name == "stop":
                self.release(resource)
            return
        t = self.validate(ctx.caller, ctx.session)
        if direct:
            now = time.monotonic()
            t.deadline = max(t.deadline, now + t.window_s + self._grace(t.window_s))
            t.expires_at = max(t.expires_at, now + t.window_s)
        if spec.actuating and self.config.default_management:
            self.bind(resource, t)

    def check_unowned(self, resource: str) -> None:
        """An actuating call outside any session: refused while a live session owns the resource."""
        sid = self.owner_of.get(resource)
        if sid is None:
            return
        t = self.tracked.get(sid)
        if t is None or t.ending:
            self.owner_of.pop(resource, None)
            return
        raise ResourceBusy(f"{self.part}/{resource} is driven by session {short(sid)} of {t.owner}: call it in a "
                           "session, or stop it first", part=self.part, resource=resource)

    def bind(self, resource: str, t: Tracked) -> None:
        prev = self.owner_of.get(resource)
        self.owner_of[resource] = t.id
        if prev != t.id:
            self._event("owned", t, [resource])
            self._state_dirty.set()

    def release(self, resource: str) -> None:
        if self.owner_of.pop(resource, None) is not None:
            self._state_dirty.set()

    def associate(self, owner: str, session: str, resource: str) -> None:
        """Manual API: stop ``resource`` when ``session`` expires, whatever default management says."""
        t = self.validate(owner, session)
        t.manual.add(resource)
        self._state_dirty.set()

    def dissociate(self, owner: str, session: str, resource: str) -> None:
        self.validate(owner, session).manual.discard(resource)
        self._state_dirty.set()

    def owned_by(self, session: str) -> list[str]:
        t = self.tracked.get(session)
        owned = {r for r, s in self.owner_of.items() if s == session}
        return sorted(owned | (t.manual if t else set()))

    def find(self, public: str) -> Tracked | None:
        return next((t for t in self.tracked.values() if t.public == public), None)

    def on_expiry(self, listener: ExpiryListener) -> None:
        """Call ``listener(event)`` (sync or async) after every session this part ends (expiry, close, or
        the robot-wide end)."""
        self.listeners.append(listener)

    def guard_resource(self, name: str, res: Resource) -> None:
        """Wrap the actuating methods of a hosted resource so calls *between* resources inside this part
        (a base driving its motors) bind ownership to the session of the call that started them, and
        check their arguments like a call from the wire (no NaN reaches a driver).

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
            spec.check_local(args, kwargs)
            ctx = current.get()
            if ctx is not None:
                if ctx.session is None:
                    self.check_unowned(name)
                elif self.config.default_management:
                    self.bind(name, self.validate(ctx.caller, ctx.session))
            return await fn(*args, **kwargs)

        return wrapper

    # -- heartbeats and expiry --------------------------------------------------------------------
    def _on_heartbeat(self, msg: Message) -> None:
        owner = self.topics.owner_of_heartbeat(msg.topic)
        try:
            env = decode(msg.payload)
            hb = env.parse(SessionHeartbeat)
        except ProtocolError as exc:
            self.refusals.refuse(f"heartbeat:{exc.details.get('reason', 'malformed')}", msg.topic,
                                 level=logging.INFO, message=msg)
            return
        t = self.tracked.get(hb.session)
        if t is None or t.owner != owner or env.src != owner:
            return  # not tracked here, or another owner's topic
        if hb.n <= t.last_n:
            self.refusals.refuse("heartbeat:replayed", msg.topic, level=logging.INFO, message=msg)
            return
        if hb.tag != heartbeat_tag(self.key.heartbeat_secret(hb.session), hb.session, hb.n):
            self.refusals.refuse("heartbeat:forged", msg.topic, f"session {short(hb.session)}", message=msg)
            return
        t.last_n = hb.n
        t.last_heartbeat = time.time()
        if t.ending:
            return
        if hb.close:
            self._begin_end(t, "closed", "closed by its owner")
        else:
            now = time.monotonic()
            t.deadline = now + t.window_s + self._grace(t.window_s)
            t.expires_at = now + t.window_s

    def _begin_end(self, t: Tracked, kind: str, reason: str) -> None:
        """The session must end now: the primary ends it robot-wide; a sub-part refuses it at once and,
        unless the primary's ordered end reaches it first, ends it itself after the grace."""
        if t.ending:
            return
        if self.is_primary and self.end_robot_wide is not None:
            t.ending = reason
            self.end_robot_wide(t.public, reason, kind)
            return
        grace = self._grace(t.window_s)
        if grace <= 0:
            self._spawn(self.end_local(t.public, reason, kind), "session-end")
            return
        t.ending = reason
        t.deadline = min(t.deadline, time.monotonic() + grace)
        self._tracking_changed.set()

    async def _tick_loop(self) -> None:
        """Sleep until the earliest deadline (woken early when a session starts being tracked), then
        expire what is due.  No fixed tick: a deadline is acted on as soon as the loop gets to it."""
        while True:
            now = time.monotonic()
            for t in [t for t in self.tracked.values() if now >= t.deadline]:
                if self.is_primary and self.end_robot_wide is not None and not t.ending:
                    self._begin_end(t, "expired", f"no heartbeat for {t.window_s:g} s")
                    t.deadline = now + MAX_SLEEP_S  # the conversation ends it; look again later
                else:
                    await self.end_local(t.public, t.ending or f"no heartbeat for {t.window_s:g} s",
                                         "expired" if not t.ending else "stopped")
            earliest = min((t.deadline for t in self.tracked.values()), default=now + MAX_SLEEP_S)
            self._tracking_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(earliest - time.monotonic(), 0.0), MAX_SLEEP_S)):
                    await self._tracking_changed.wait()

    async def end_local(self, public: str, reason: str, kind: str = "stopped", cause: str = "") -> list[str]:
        """End session ``public`` on this part: stop what it owns here, refuse it from now on, tell
        everyone (``kind``: expired or closed when this part decided, stopped during the robot-wide end).
        Idempotent; returns the resources stopped."""
        t = self.find(public)
        if public not in self.ended:
            self.ended[public] = EndedSession(session=public, owner=t.owner if t else "", at=time.time(),
                                              reason=reason[:500])
            while len(self.ended) > MAX_ENDED:
                self.ended.popitem(last=False)
            self._state_dirty.set()
        if t is None or self.tracked.pop(t.id, None) is None:
            return []
        self._unfollow(t.owner)
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
                errors.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
        if stopped:
            self.stops[kind] = self.stops.get(kind, 0) + 1
        if kind == "expired" or cause == "expired":  # from the end of its window to its actuators stopped here
            self.stop_latencies.append(max(0.0, time.monotonic() - t.expires_at))
        level = logging.INFO if kind in ("closed", "ended", "stopped") else logging.WARNING
        log.log(level, "part %s: session %s of %s %s (%s); stopped %s", self.part, short(t.id), t.owner, kind,
                reason, stopped)
        ev = self._event(kind, t, stopped, detail="; ".join(errors), reason=reason)
        self._state_dirty.set()
        for listener in list(self.listeners):
            try:
                r = listener(ev)
                if r is not None:
                    await r
            except Exception:
                log.exception("session expiry listener failed")
        return stopped

    def _event(self, kind: str, t: Tracked | None, resources: list[str], detail: str = "", reason: str = "",
               public: str = "", owner: str = "") -> SessionEvent:
        ev = SessionEvent(kind=kind, session=t.public if t else public, owner=t.owner if t else owner,
                          part=self.part, resources=resources, at=time.time(), detail=detail[:2000],
                          reason=reason[:2000])
        self.mqtt.publish_nowait(self.topics.session_events(self.part), encode(self.sender, ev), qos=1)
        if self.mirror is not None:
            self.mirror(self.topics.session_events(self.part), ev, False)
        return ev

    # -- what the other parts say ------------------------------------------------------------------
    def _trusted(self, msg: Message) -> Any:
        try:
            env = decode(msg.payload)
        except ProtocolError as exc:
            self.refusals.refuse(f"session:{exc.details.get('reason', 'malformed')}", msg.topic, message=msg)
            return None
        if not self.topics.authentic(msg.topic, env.src) or not env.src.startswith("part/"):
            self.refusals.refuse("session:forged_sender", msg.topic, message=msg)
            return None
        return env

    def _on_event(self, msg: Message) -> None:
        env = self._trusted(msg)
        if env is None or env.src == self.sender:
            return
        try:
            ev = env.parse(SessionEvent)
        except ProtocolError:
            self.refusals.refuse("session:bad_event", msg.topic, message=msg)
            return
        if ev.kind in ENDING_KINDS:
            self._heard_end(ev.session, ev.owner, ev.reason or f"{ev.kind} at part {ev.part}", ev.kind)

    def _on_state(self, msg: Message) -> None:
        env = self._trusted(msg)
        if env is None or env.src == self.sender:
            return
        try:
            st = env.parse(SessionsState)
        except ProtocolError:
            self.refusals.refuse("session:bad_state", msg.topic, message=msg)
            return
        for e in st.ended:
            self._heard_end(e.session, e.owner, e.reason or "ended elsewhere", "ended")

    def _heard_end(self, public: str, owner: str, reason: str, kind: str) -> None:
        """Another part ended (or began ending) a session: it ends here too (the primary ends it
        robot-wide, also when it does not track it any more, e.g. after a restart)."""
        t = self.find(public)
        if self.is_primary and self.end_robot_wide is not None and kind != "ended":
            if t is not None:
                t.ending = t.ending or reason
            self.end_robot_wide(public, reason, kind)
            return
        if t is None:
            if public not in self.ended:
                self.ended[public] = EndedSession(session=public, owner=owner, at=time.time(), reason=reason[:500])
                while len(self.ended) > MAX_ENDED:
                    self.ended.popitem(last=False)
            return
        self._begin_end(t, kind if kind in ("expired", "closed") else "ended", reason)

    # -- the retained picture ---------------------------------------------------------------------
    def state(self) -> SessionsState:
        return SessionsState(
            tracked=[TrackedSession(session=t.public, owner=t.owner, window_s=t.window_s,
                                    resources=self.owned_by(t.id)) for t in self.tracked.values()],
            ended=list(self.ended.values()),
        )

    async def publish_state(self) -> None:
        body = self.state()
        with contextlib.suppress(Exception):
            await self.mqtt.publish(self.topics.session_state(self.part), encode(self.sender, body), qos=1,
                                    retain=True, timeout=2.0)
        if self.mirror is not None:
            self.mirror(self.topics.session_state(self.part), body, True)

    async def _state_loop(self) -> None:
        while True:
            await self._state_dirty.wait()
            await asyncio.sleep(STATE_DEBOUNCE_S)
            self._state_dirty.clear()
            await self.publish_state()

    def describe(self) -> list[dict[str, Any]]:
        now = time.time()
        return [
            {"session": short(t.id), "owner": t.owner, "window_s": t.window_s, "age_s": round(now - t.first_seen, 3),
             "last_heartbeat_s_ago": None if t.last_heartbeat is None else round(now - t.last_heartbeat, 3),
             "resources": self.owned_by(t.id), "part": self.part, "ending": t.ending or None}
            for t in self.tracked.values()
        ]
