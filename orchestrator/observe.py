"""Watching a robot from its topics, as any MQTT client can: the picture behind `status`, `monitor`,
the metrics and the logs.

:class:`RobotView` subscribes to the robot's public topics (part states, the primary's status, what each
part hosts, its sessions, counters, telemetry, the upstream link, the last timeline, session
events and part logs), keeps the latest of each, believes a message only from the identity its topic is
reserved to, and keeps a bounded log of recent events.  It needs no configuration file and no plugin:
a robot's name and a broker are enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.errors import ProtocolError
from orchestrator.protocol.codec import Envelope
from orchestrator.protocol.messages import (
    Counters,
    LivenessReport,
    PartPulse,
    PartState,
    RobotStatus,
    SessionEvent,
    SessionsState,
    TelemetryReading,
    Timeline,
    UpstreamState,
)
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import Topics
from orchestrator.protocol.trust import authentic_envelope, trusted
from orchestrator.transport.client import Message, MqttClient, private_client_id

__all__ = ["Event", "PartView", "RobotView"]

M = TypeVar("M", bound=BaseModel)

MAX_EVENTS = 500
STALE_PULSE_S = 2.5  # the primary reports every second: past this, its reports stopped
MAX_SAMPLES = 600  # telemetry samples kept per reading (a minute at 10 Hz)


@dataclass
class Event:
    at: float
    kind: str  # state | offline | online | session | reload | refusal | log | upstream | shutdown
    part: str
    text: str
    level: str = "info"

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "part": self.part, "text": self.text, "level": self.level}


@dataclass
class PartView:
    name: str
    state: PartState | None = None
    birth: int = 0
    resources: list[dict[str, Any]] = field(default_factory=list)
    sessions: SessionsState | None = None
    counters: dict[str, int] = field(default_factory=dict)
    telemetry: dict[str, TelemetryReading] = field(default_factory=dict)
    samples: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)  # "res.key" -> (t, value)
    state_at: float = 0.0  # when the part published its current state (its clock)
    pulse: PartPulse | None = None  # heartbeat age and jitter, as the primary last reported them
    pulse_at: float = 0.0

    def heartbeat_age(self, now: float) -> float | None:
        if self.pulse is None or self.pulse.age_s is None:
            return None
        late = now - self.pulse_at
        # as of the last report (once a second); once reports stop coming, an upper bound that keeps growing
        return round(self.pulse.age_s + (late if late > STALE_PULSE_S else 0.0), 3)

    def liveness(self, status: RobotStatus | None, now: float) -> str:
        """``live`` (heard from lately), ``silent`` (its heartbeats stopped: frozen or cut off, not yet
        declared offline), ``offline`` (its Will, its own state, or the primary says so) or ``unknown``."""
        if self.state is not None and self.state.state.value in ("offline", "stopped"):
            return "offline"
        if status is not None and self.name == status.primary:
            return "offline" if status.state in ("offline", "stopped") else "live"
        st = status.parts.get(self.name) if status is not None else None
        if st is not None and not st.online:
            return "offline"
        if self.pulse is not None:
            age = self.heartbeat_age(now)
            if not self.pulse.online:
                return "offline"
            if age is not None and self.pulse.heartbeat_s and age > 3 * self.pulse.heartbeat_s + 0.1:
                return "silent"
            return "live"
        if self.state is None or status is None or status.state in ("offline", "stopped"):
            return "unknown"  # no primary is watching its heartbeats
        return "live" if st is not None and st.online else "unknown"

    def to_json(self, status: RobotStatus | None) -> dict[str, Any]:
        st = status.parts.get(self.name) if status is not None else None
        now = time.time()
        running_since = self.state_at if self.state is not None and self.state.state.value == "running" else None
        owners = {r: t.owner for t in (self.sessions.tracked if self.sessions else []) for r in t.resources}
        return {
            "state": self.state.state.value if self.state else "unknown",
            "online": st.online if st else (self.state is not None and self.state.state.value not in
                                             ("offline", "stopped")),
            "birth": self.birth, "pid": self.state.pid if self.state else None,
            "parent": self.state.parent if self.state else None,
            "reason": (st.reason if st else None) or (self.state.reason if self.state else None),
            "liveness": self.liveness(status, now),
            "heartbeat_age_s": self.heartbeat_age(now),
            "heartbeat_jitter_s": self.pulse.jitter_s if self.pulse else None,
            "since": st.since if st else None,
            "uptime_s": round(max(0.0, now - running_since), 1) if running_since else None,
            "restarts": st.restarts if st else 0,
            "resources": [{**r, "owner": owners.get(r.get("name", ""))} for r in self.resources],
            "sessions": [t.model_dump() for t in self.sessions.tracked] if self.sessions else [],
            "refused": dict(self.counters),
            "telemetry": {k: v.readings for k, v in self.telemetry.items()},
        }


class RobotView:
    """``async with RobotView(robot, urls, username=..., password=...) as view:`` then read ``view.parts``,
    ``view.status``, ``view.events``; ``view.changed`` is set on every change."""

    def __init__(self, robot: str, urls: list[tuple[str, int]], *, username: str | None = None,
                 password: str | None = None, tls: Any = None, connect_timeout: float = 5.0,
                 client_id: str | None = None, logs: bool = True, telemetry: bool = True,
                 fail_fast: bool = False) -> None:
        self.topics = Topics(robot)
        self.robot = robot
        self.mqtt = MqttClient(client_id or private_client_id(f"{robot}.view"), urls, username=username,
                               password=password, tls=tls, connect_timeout=connect_timeout, fail_fast=fail_fast)
        self.parts: dict[str, PartView] = {}
        self.status: RobotStatus | None = None
        self.upstream: UpstreamState | None = None
        self.timeline: Timeline | None = None
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.changed = asyncio.Event()
        self.refusals = Refusals(f"view of {robot}")
        self.listeners: list[Callable[[Event], None]] = []
        self._logs = logs
        self._telemetry = telemetry
        self.messages = 0
        self.refused_topics: dict[str, str] = {}  # topic -> why its last message was not believed

    # -- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> RobotView:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        t = self.topics
        subs: list[tuple[str, Callable[[Message], None]]] = [
            (t.all_part_states(), self._on_state), (t.robot_status(), self._on_status),
            (t.all_part_resources(), self._on_resources), (t.all_session_states(), self._on_sessions),
            (t.all_session_events(), self._on_session_event), (f"{t.root}/part/+/counters", self._on_counters),
            (t.robot_upstream(), self._on_upstream),
            (t.robot_timeline(), self._on_timeline), (f"{t.root}/part/+/events", self._on_part_event),
            (t.robot_liveness(), self._on_liveness),
        ]
        if self._telemetry:
            subs.append((t.all_telemetry(), self._on_telemetry))
        if self._logs:
            subs.append((f"{t.root}/part/+/log", self._on_log))
        for f, h in subs:
            await self.mqtt.subscribe(f, h)
        await self.mqtt.start()

    async def close(self) -> None:
        await self.mqtt.close()

    async def settle(self, quiet_s: float = 0.3, at_most_s: float = 3.0) -> None:
        """Wait until the retained picture has arrived: nothing new for ``quiet_s`` (bounded)."""
        end = time.monotonic() + at_most_s
        while time.monotonic() < end:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(quiet_s, max(0.01, end - time.monotonic())))
            except TimeoutError:
                return

    # -- reading ----------------------------------------------------------------------------------
    def part(self, name: str) -> PartView:
        pv = self.parts.get(name)
        if pv is None:
            if len(self.parts) >= 10_000:
                raise ProtocolError("too many parts")
            pv = self.parts[name] = PartView(name)
        return pv

    def ordered_parts(self) -> list[str]:
        """Parts in tree order (parents before children, from their states), the primary first."""
        parent = {n: (p.state.parent if p.state else None) for n, p in self.parts.items()}
        if self.status is not None:
            for n in self.status.parts:
                parent.setdefault(n, self.status.parts[n].parent)
        roots = sorted(n for n, p in parent.items() if p is None or p not in parent)
        out: list[str] = []
        stack = list(reversed(roots))
        seen: set[str] = set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            out.append(n)
            stack.extend(sorted((c for c, p in parent.items() if p == n), reverse=True))
        return out

    def depth(self, name: str) -> int:
        d, seen = 0, set()
        p = self.parts.get(name)
        while p is not None and p.state is not None and p.state.parent and p.state.parent not in seen:
            seen.add(p.state.parent)
            d += 1
            p = self.parts.get(p.state.parent)
        return d

    def robot_state(self) -> str:
        if self.status is None:
            return "unknown (no status from a primary)"
        return self.status.state

    def to_json(self) -> dict[str, Any]:
        return {
            "robot": self.robot,
            "state": self.robot_state(),
            "primary": self.status.primary if self.status else None,
            "upstream": (self.upstream.model_dump() if self.upstream
                         else self.status.upstream if self.status else None),
            "parts": {n: self.parts[n].to_json(self.status) for n in self.ordered_parts() if n in self.parts},
            "timeline": self.timeline.model_dump() if self.timeline else None,
        }

    # -- what arrives -----------------------------------------------------------------------------
    def _emit(self, kind: str, part: str, text: str, level: str = "info", at: float | None = None) -> None:
        ev = Event(at or time.time(), kind, part, text[:500], level)
        self.events.append(ev)
        for cb in list(self.listeners):
            with contextlib.suppress(Exception):
                cb(ev)

    def _trusted(self, msg: Message) -> Envelope | None:
        self.messages += 1
        version = self.refusals.version
        env = authentic_envelope(self.topics, self.refusals, msg.topic, msg.payload)
        if env is None:
            self._refused(msg.topic, version)
            return None
        self.refused_topics.pop(msg.topic, None)
        self.changed.set()
        return env

    def _parse(self, msg: Message, model: type[M]) -> tuple[Envelope, M] | None:
        self.messages += 1
        version = self.refusals.version
        got = trusted(self.topics, self.refusals, msg.topic, msg.payload, model)
        if got is None:
            self._refused(msg.topic, version)
            return None
        self.refused_topics.pop(msg.topic, None)
        self.changed.set()
        return got

    def _refused(self, topic: str, version: int) -> None:
        """Remember why the last message of a topic was not believed (``status`` shows such a row as invalid)."""
        if self.refusals.version != version and (topic in self.refused_topics or len(self.refused_topics) < 10_000):
            self.refused_topics[topic] = self.refusals.last_reason or "refused"
            self.changed.set()

    def _on_state(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        got = self._parse(msg, PartState)
        if name is None or got is None:
            return
        env, st = got
        pv = self.part(name)
        if pv.state is not None and env.birth < pv.birth:
            return  # a late Will of an older connection
        old = pv.state.state.value if pv.state else None
        pv.state, pv.birth = st, env.birth
        if old != st.state.value or not pv.state_at:
            pv.state_at = env.ts or time.time()
        if old != st.state.value and not msg.retain:
            level = "warning" if st.state.value == "offline" else "info"
            self._emit("state", name, f"{st.state.value}" + (f" ({st.reason})" if st.reason else ""), level)

    def _on_status(self, msg: Message) -> None:
        got = self._parse(msg, RobotStatus)
        if got is None:
            return
        status: RobotStatus = got[1]
        old = self.status
        self.status = status
        for name in status.parts:
            self.part(name)
        if old is not None and not msg.retain:
            for name, p in status.parts.items():
                before = old.parts.get(name)
                if before is not None and before.online and not p.online:
                    self._emit("offline", name, p.reason or "offline", "warning")
                elif before is not None and not before.online and p.online:
                    self._emit("online", name, "online again")
                if before is not None and p.restarts > before.restarts:
                    self._emit("restart", name, f"restarted (restart {p.restarts})", "warning")
            if old.state != status.state:
                self._emit("robot", status.primary, f"robot {status.state}", "info")

    def _on_liveness(self, msg: Message) -> None:
        got = self._parse(msg, LivenessReport)
        if got is None:
            return
        now = time.time()
        for name, pulse in list(got[1].parts.items())[:10_000]:
            pv = self.part(name)
            pv.pulse, pv.pulse_at = pulse, now

    def _on_resources(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        env = self._trusted(msg)
        if name is None or env is None:
            return
        res = env.body.get("resources")
        if isinstance(res, list):
            self.part(name).resources = [r for r in res if isinstance(r, dict)][:1000]

    def _on_sessions(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        got = self._parse(msg, SessionsState)
        if name is not None and got is not None:
            self.part(name).sessions = got[1]

    def _on_session_event(self, msg: Message) -> None:
        got = self._parse(msg, SessionEvent)
        if got is None:
            return
        ev: SessionEvent = got[1]
        if ev.kind == "owned":
            return
        level = "warning" if ev.kind in ("expired", "halted") else "info"
        what = f"session {ev.session[:8]} of {ev.owner} {ev.kind}"
        if ev.resources:
            what += f": {', '.join(ev.resources)}"
        if ev.reason and ev.kind != "opened":
            what += f" ({ev.reason})"
        self._emit("session", ev.part, what, level, ev.at or None)

    def _on_counters(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        got = self._parse(msg, Counters)
        if name is None or got is None:
            return
        pv = self.part(name)
        new = got[1].counts
        grown = {k: v - pv.counters.get(k, 0) for k, v in new.items() if v > pv.counters.get(k, 0)}
        if grown and pv.counters and not msg.retain:
            self._emit("refusal", name, "refused " + ", ".join(f"{k} x{v}" for k, v in sorted(grown.items())),
                       "warning")
        pv.counters = dict(new)

    def _on_telemetry(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        got = self._parse(msg, TelemetryReading)
        if name is None or got is None:
            return
        env, reading = got
        pv = self.part(name)
        pv.telemetry[reading.resource] = reading
        for k, v in list(reading.readings.items())[:50]:
            if isinstance(v, int | float) and not isinstance(v, bool):
                q = pv.samples.setdefault(f"{reading.resource}.{k}", deque(maxlen=MAX_SAMPLES))
                q.append((env.ts or time.time(), float(v)))

    def _on_upstream(self, msg: Message) -> None:
        got = self._parse(msg, UpstreamState)
        if got is None:
            return
        old = self.upstream
        self.upstream = got[1]
        if old is not None and old.state != self.upstream.state and not msg.retain:
            self._emit("upstream", self.status.primary if self.status else "", f"upstream link {self.upstream.state}"
                       + (f" ({self.upstream.reason})" if self.upstream.reason else ""),
                       "warning" if self.upstream.state == "down" else "info")

    def _on_timeline(self, msg: Message) -> None:
        got = self._parse(msg, Timeline)
        if got is None:
            return
        self.timeline = got[1]
        if not msg.retain:
            forced = [e.part for e in self.timeline.entries if e.forced]
            self._emit("shutdown", self.status.primary if self.status else "",
                       f"shutdown timeline ({self.timeline.reason})" + (f", forced: {forced}" if forced else ""))

    def _on_part_event(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        env = self._trusted(msg)
        if name is None or env is None:
            return
        b = env.body
        self._emit(str(b.get("kind", "event"))[:32], name, str(b.get("text", ""))[:500],
                   str(b.get("level", "info"))[:16])

    def _on_log(self, msg: Message) -> None:
        name = self.topics.part_of(msg.topic)
        env = self._trusted(msg)
        if name is None or env is None:
            return
        b = env.body
        self._emit("log", name, f"{str(b.get('logger', ''))[:60]}: {str(b.get('message', ''))[:400]}",
                   str(b.get("level", "info")).lower()[:16], b.get("ts") if isinstance(b.get("ts"), float) else None)
