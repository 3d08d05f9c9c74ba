"""The primary part: supervises every sub-part, publishes the robot status and the shutdown timeline.

It tracks every part's liveness from births, Wills and heartbeats (a kill -9 is seen through the
Will within milliseconds, a frozen part after ``heartbeat_s * heartbeat_misses``), publishes a
retained robot status on every change, and on SIGINT, SIGTERM or a shutdown request over MQTT runs
the bottom-up shutdown, tells clients the robot is going down, publishes the timeline, and exits
last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.errors import ProtocolError
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import (
    Notice,
    PartState,
    PartStateName,
    PartStatus,
    ReloadRequest,
    RobotStatus,
    ShutdownRequest,
    Timeline,
    TimelineEntry,
)
from orchestrator.runtime.liveness import Liveness
from orchestrator.runtime.part import Part
from orchestrator.transport.client import Message

log = logging.getLogger("orchestrator.primary")

R = TypeVar("R", bound=BaseModel)


class Primary(Part):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        others = [p for p in self.topology.parts if p != self.name]
        self.liveness = Liveness(
            [(p, self.config.part(p).heartbeat_s, self.config.part(p).heartbeat_misses) for p in others],
            listener=self._on_change,
        )
        self._status_dirty = asyncio.Event()
        self._robot_state = "starting"
        self.timeline: Timeline | None = None
        self._shutdown_started_at: float | None = None

    async def _subscribe(self) -> None:
        t = self.topics
        # one wildcard per kind, not one subscription per part (amqtt matching is linear in subscriptions)
        await self.client.subscribe(t.all_part_states(), self._on_any_state)
        await self.client.subscribe(t.all_part_heartbeats(), self._on_any_heartbeat, qos=0)
        for c in self.children:
            await self.client.subscribe(t.part_report(c), self._on_report)
        await self.client.subscribe(t.all_client_shutdowns(), self._on_shutdown_request)
        await self.client.subscribe(t.all_client_reloads(), self._on_reload_request)

    async def start(self) -> None:
        await super().start()
        self.spawn(self._status_loop(), "status")
        self.spawn(self._watch_loop(), "liveness")
        self._status_dirty.set()

    # -- supervision ------------------------------------------------------------------------------
    def _on_any_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        if part is None or part == self.name or part not in self.liveness:
            return
        env = self._decode(msg)
        if env is None:
            return
        try:
            state = env.parse(PartState)
        except ProtocolError as exc:
            log.warning("primary: %s", exc)
            return
        self.liveness.on_state(part, env, state)
        if part in self.children:
            self._on_child_state(msg)

    def _on_any_heartbeat(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        if part is None or part == self.name or part not in self.liveness:
            return
        env = self._decode(msg)
        if env is None:
            return
        self.liveness.on_heartbeat(part, env)
        if part in self.children:
            self.children_liveness.on_heartbeat(part, env)

    async def _watch_loop(self) -> None:
        period = min([self.config.part(p).heartbeat_s for p in self.topology.parts] + [0.5]) / 2
        while True:
            await asyncio.sleep(period)
            for part in self.liveness.check_timeouts():
                log.warning("primary: %s missed its heartbeats: offline", part)
            self.children_liveness.check_timeouts()

    def _on_change(self, part: str, new: PartStatus, old: PartStatus | None) -> None:
        if old is not None and old.online and not new.online:
            log.warning("primary: part %s offline (%s)", part, new.reason or new.state)
        self._status_dirty.set()

    def robot_status(self) -> RobotStatus:
        parts = self.liveness.snapshot()
        parts[self.name] = PartStatus(state=self.state, online=True, birth=self.client.birth, since=time.time(),
                                      pid=None)
        state = self._robot_state
        if state in ("starting", "running", "degraded"):
            if all(p.online and p.state == PartStateName.RUNNING for p in parts.values()):
                state = "running"
            elif any(p.birth and not p.online for p in parts.values()):
                state = "degraded"
            else:
                state = "starting"
            self._robot_state = state
        return RobotStatus(robot=self.config.robot, primary=self.name, state=state, parts=parts)

    async def _status_loop(self) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            await self.publish_status()

    async def publish_status(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.robot_status(), self.encode(self.robot_status()), qos=1,
                                      retain=True, timeout=2.0)

    async def publish_state(self, state: PartStateName, reason: str | None = None) -> None:
        await super().publish_state(state, reason)
        self._status_dirty.set()

    # -- shutdown ---------------------------------------------------------------------------------
    def _client_request(self, msg: Message, model: type[R]) -> tuple[str, R] | None:
        """A request published by a client on its own topic; None (logged) if malformed or forged."""
        client = self.topics.client_of(msg.topic)
        try:
            env = decode(msg.payload)
            req = env.parse(model)
        except ProtocolError as exc:
            log.warning("primary: malformed request on %s: %s", msg.topic, exc)
            return None
        if client is None or env.src != f"client/{client}":
            log.warning("primary: request on %s claims to be from %s: ignored", msg.topic, env.src)
            return None
        return client, req

    def _on_shutdown_request(self, msg: Message) -> None:
        got = self._client_request(msg, ShutdownRequest)
        if got is not None:
            log.info("primary: shutdown requested by client %s: %s", got[0], got[1].reason)
            self.request_stop(f"requested by client {got[0]}: {got[1].reason}")

    def _on_reload_request(self, msg: Message) -> None:
        got = self._client_request(msg, ReloadRequest)
        if got is not None:
            self.spawn(self.reload(f"requested by client {got[0]}: {got[1].reason}"), "reload")

    async def shutdown(self, reason: str) -> TimelineEntry:
        if self._shutdown_started_at is None:
            self._shutdown_started_at = self._asked_at or time.time()
            self._robot_state = "stopping"
            await self._notice("going_down", reason)
        return await super().shutdown(reason)

    async def _notice(self, kind: str, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.robot_notice(),
                                      self.encode(Notice(kind=kind, shutdown_id=self._shutdown_id, reason=reason)),
                                      qos=1, timeout=2.0)

    async def after_stopped(self, children: list[TimelineEntry]) -> None:
        assert self.entry is not None
        started = self._shutdown_started_at or time.time()
        # every sub-part is accounted for: tell clients the robot is down (they disconnect), then record
        await self._notice("down", self._stop_reason)
        clients_closed_at = time.time()
        self.timeline = Timeline(
            shutdown_id=self._shutdown_id, reason=self._stop_reason, started_at=started,
            clients_closed_at=clients_closed_at, finished_at=time.time(),
            entries=[*children, self.entry],
        )
        self._robot_state = "stopped"
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.robot_timeline(), self.encode(self.timeline), qos=1, retain=True,
                                      timeout=2.0)
        await self.publish_status()
