"""One part of a robot: its own process, connected to the broker under its own identity.

A part publishes a retained state (starting, running, stopping, stopped; ``offline`` through its
Will), heartbeats, hosts its resources, obeys its parent's control messages and, when asked to stop
(by its parent, by SIGTERM or SIGINT), stops bottom-up: first it asks its own children and waits for
their reports (each bounded by the child's stop budget), then stops its actuators and closes its
resources, then reports to its parent with what it did, and exits.

The primary is the part without a parent; :class:`~orchestrator.runtime.primary.Primary` adds
supervision, the robot status and the shutdown timeline on top of this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.config.loader import LoadedConfig, load_config
from orchestrator.config.topology import ResourceRef
from orchestrator.errors import ConfigError, PartOffline, ProtocolError
from orchestrator.protocol.codec import Envelope, Sequencer, decode, encode
from orchestrator.protocol.messages import (
    Control,
    ControlCommand,
    Heartbeat,
    PartState,
    PartStateName,
    PartStatus,
    StopReport,
    TelemetryReading,
    TimelineEntry,
)
from orchestrator.protocol.topics import PartId, Topics
from orchestrator.resources.base import Resource, Sensor
from orchestrator.resources.registry import Registry
from orchestrator.rpc.client import RpcClient
from orchestrator.rpc.methods import MethodSpec
from orchestrator.rpc.server import RpcServer
from orchestrator.runtime.liveness import Liveness
from orchestrator.runtime.resource_host import ResourceHost
from orchestrator.runtime.watchdog import LoopWatchdog
from orchestrator.security.access import Access
from orchestrator.security.access import session_key as robot_session_key
from orchestrator.sessions.context import CallContext
from orchestrator.sessions.guard import SessionGuard
from orchestrator.sessions.heartbeat import Heartbeater
from orchestrator.sessions.service import SERVICE as SESSION_SERVICE
from orchestrator.sessions.service import SessionService
from orchestrator.sessions.tokens import SessionKey
from orchestrator.tasks import cancel_and_wait
from orchestrator.transport.client import Message, MqttClient, Will

log = logging.getLogger("orchestrator.part")


class Part:
    """Runs one part.  ``async with Part(cfg, name) as p: await p.wait_stopped()``."""

    def __init__(
        self,
        loaded: LoadedConfig,
        name: str,
        *,
        urls: list[tuple[str, int]] | None = None,
        registry: Registry | None = None,
        session_key: SessionKey | None = None,
        credentials: str | Path | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.topology = loaded.topology
        self.part_config = self.config.part(name)
        self.name = name
        self.id = PartId(self.config.robot, name)
        self.topics = Topics(self.config.robot)
        self.parent = self.topology.parent(name)
        self.children = self.topology.children(name)
        self.urls = urls or self.config.broker.client_urls()
        self._registry = registry
        self.state = PartStateName.STARTING
        self._seq = Sequencer()
        self._started_mono = time.monotonic()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_reason = ""
        self._shutdown_id = ""
        self._asked_at: float | None = None
        self._reports: dict[str, tuple[float, Envelope, StopReport]] = {}
        self._report_events: dict[str, asyncio.Event] = {c: asyncio.Event() for c in self.children}
        self._tasks: list[asyncio.Task[Any]] = []
        self._telemetry: dict[str, asyncio.Task[Any]] = {}
        self.last_reload: tuple[list[str], list[str]] | None = None
        self._reload_lock = asyncio.Lock()
        self._closing = False
        self.entry: TimelineEntry | None = None
        self.children_liveness = Liveness(
            [
                (c, self.config.part(c).heartbeat_s, self.config.part(c).heartbeat_misses)
                for c in self.children
            ]
        )
        # this part's own broker identity (username = identity) and the robot's session key
        self.access = Access.of(self.config, loaded.path, self.id, credentials)
        self.client = MqttClient(
            f"{self.config.robot}.part.{name}",
            self.urls,
            keepalive=self.config.broker.keepalive_s,
            username=self.access.username,
            password=self.access.password,
            will=self._will,
        )
        self.client.on_connect(self._on_connect)
        self.client.on_disconnect(self._on_disconnect)
        # calls this part makes (remote dependencies) and serves (its resources)
        self.rpc = RpcClient(self.client, self.topics, self.sender)
        self.host = ResourceHost(self.part_config, self.topology, registry, robot=self.config, rpc=self.rpc)
        self.server = RpcServer(self.client, self.topics, name, self.sender, self._lookup, self._describe_missing)
        # sessions: expiry checked here, where the actuators live
        self.session_key = session_key or SessionKey(robot_session_key(self.config, loaded.path, credentials))
        self.sessions = SessionGuard(name, self.sender, self.client, self.topics, self.session_key,
                                     self.config.sessions, self.host.resources)
        self.session_service = SessionService(self.sessions, can_open=self.parent is None,
                                              window_s=self.config.sessions.heartbeat_window_s)
        self.host.on_built = self.sessions.guard_resource
        ws = self.part_config.watchdog_s
        self.watchdog = LoopWatchdog(name, self.host.actuators, ws) if ws else None
        self.server.before_call.append(self._refuse_moves_while_stopping)
        self.server.before_call.append(self.sessions.before_call)
        # this part's own session: what it drives on other parts stops if it dies or loses its link
        own_window = self.config.sessions.heartbeat_window_s
        self.own_session = self.session_key.issue(self.sender, own_window)
        self.rpc.session = self.own_session
        self._own_heartbeat = Heartbeater(self.client, self.topics.session_heartbeat(self.sender), self.sender,
                                          self.own_session, self.session_key.heartbeat_secret(self.own_session),
                                          own_window / 5)

    # -- identity and wire helpers ---------------------------------------------------------------
    @property
    def sender(self) -> str:
        return self.id.sender

    def _will(self, birth: int) -> Will:
        self._seq.reset()
        body = PartState(state=PartStateName.OFFLINE, parent=self.parent, pid=os.getpid(),
                         reason="connection lost (Last Will)", heartbeat_s=self.part_config.heartbeat_s)
        return Will(self.topics.part_state(self.name), encode(self.sender, body, birth=birth, seq=0))

    def encode(self, body: BaseModel) -> bytes:
        return encode(self.sender, body, birth=self.client.birth, seq=self._seq.next())

    def _state_body(self, reason: str | None = None) -> PartState:
        return PartState(
            state=self.state,
            parent=self.parent,
            pid=os.getpid(),
            host=socket.gethostname(),
            reason=reason,
            heartbeat_s=self.part_config.heartbeat_s,
            resources=[r.name for r in self.part_config.resources],
        )

    async def publish_state(self, state: PartStateName, reason: str | None = None) -> None:
        self.state = state
        with contextlib.suppress(Exception):
            await self.client.publish(
                self.topics.part_state(self.name), self.encode(self._state_body(reason)), qos=1, retain=True,
                timeout=2.0,
            )

    # -- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> Part:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _lookup(self, resource: str) -> Resource | None:
        if resource == SESSION_SERVICE:
            return self.session_service
        return self.host.resources.get(resource)

    async def _refuse_moves_while_stopping(self, ctx: CallContext, direct: bool, resource: str, res: Resource,
                                           spec: MethodSpec) -> None:
        if spec.actuating and self.state in (PartStateName.STOPPING, PartStateName.STOPPED):
            raise PartOffline(f"part {self.name} is {self.state.value}: it accepts no command that moves",
                              part=self.name)

    def _describe_missing(self, resource: str) -> str | None:
        st = self.host.states.get(resource)
        if st is None:
            return None
        return f"{st.status}: {st.reason}" if st.reason else st.status

    async def start(self) -> None:
        await self._subscribe()
        await self.rpc.start()
        await self.server.start()
        await self.client.start()
        self.sessions.start()
        # heartbeats begin with the first remote call, which does not wait for their connection
        self.rpc.session_activate = lambda: self._own_heartbeat.start(wait=False)
        if self.watchdog is not None:
            self.watchdog.start()
        await self.publish_state(PartStateName.STARTING)
        await self.host.start()
        degraded = [s for s in self.host.states.values() if s.status == "degraded"]
        await self.publish_resources()
        self.spawn(self._heartbeat_loop(), "heartbeat")
        if self.children:
            self.spawn(self._liveness_loop(), "children-liveness")
        self._start_telemetry()
        reason = f"{len(degraded)} resource(s) degraded" if degraded else None
        await self.publish_state(PartStateName.RUNNING, reason)
        log.info("part %s running (birth %d)", self.name, self.client.birth)

    async def _subscribe(self) -> None:
        """Register subscriptions before connecting: the transport sends them on every CONNACK."""
        if self.parent is not None:
            await self.client.subscribe(self.topics.part_control(self.parent, self.name), self._on_control)
        for c in self.children:
            await self.client.subscribe(self.topics.part_report(c), self._on_report)
            await self.client.subscribe(self.topics.part_state(c), self._on_child_state)
            await self.client.subscribe(self.topics.part_heartbeat(c), self._on_child_heartbeat, qos=0)

    async def publish_resources(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.publish(
                self.topics.part_resources(self.name),
                encode(self.sender, {"resources": self.host.describe()}, birth=self.client.birth,
                       seq=self._seq.next()),
                qos=1, retain=True, timeout=2.0,
            )

    def spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"part[{self.name}].{what}")
        self._tasks.append(task)
        return task

    async def close(self) -> None:
        """Idempotent: stops everything (if not already) and disconnects."""
        if self._closing:
            return
        self._closing = True
        if not self._stopped.is_set():
            with contextlib.suppress(Exception):
                await self.shutdown("closed")
        await self.server.close()
        if self.watchdog is not None:
            await self.watchdog.close()
        await self.sessions.close()
        await self._own_heartbeat.aclose(close=True)
        await cancel_and_wait(self._tasks)
        await self.client.close()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self, reason: str) -> None:
        """Thread-safe-from-the-loop trigger (signal handlers call this)."""
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._asked_at = time.time()
            self._stop_requested.set()

    async def run(self) -> int:
        """Start, run until asked to stop, stop bottom-up, close.  Returns the process exit code."""
        try:
            await self.start()
            await self._stop_requested.wait()
            await self.shutdown(self._stop_reason)
            return 0
        finally:
            await self.close()

    # -- heartbeats and liveness -------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        topic = self.topics.part_heartbeat(self.name)
        period = self.part_config.heartbeat_s
        next_at = time.monotonic()
        while True:
            if self.client.is_connected:
                body = Heartbeat(uptime_s=time.monotonic() - self._started_mono)
                self.client.publish_nowait(topic, self.encode(body), qos=0)
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # the loop was blocked: do not burst, resynchronise
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)

    # -- telemetry --------------------------------------------------------------------------------
    def _start_telemetry(self) -> None:
        for t in self._telemetry.values():
            t.cancel()
        self._telemetry = {
            r.name: self.spawn(self._telemetry_loop(r.name), f"telemetry[{r.name}]")
            for r in self.part_config.resources
            if r.telemetry is not None
        }

    async def _telemetry_loop(self, name: str) -> None:
        topic = self.topics.telemetry(self.name, name)
        last: dict[str, Any] | None = None
        while True:
            cfg = next((r for r in self.part_config.resources if r.name == name), None)
            if cfg is None or cfg.telemetry is None:
                return
            res = self.host.resources.get(name)
            if isinstance(res, Sensor) and self.client.is_connected:
                try:
                    readings = await asyncio.wait_for(res.get_readings(), cfg.telemetry.period_s * 5)
                except Exception as exc:
                    log.warning("part %s: telemetry of %s: %s: %s", self.name, name, type(exc).__name__, exc)
                else:
                    if not (cfg.telemetry.on_change and readings == last):
                        last = readings
                        self.client.publish_nowait(
                            topic, self.encode(TelemetryReading(resource=name, readings=readings)), qos=0)
            await asyncio.sleep(cfg.telemetry.period_s)

    # -- reload ---------------------------------------------------------------------------------
    async def reload(self, reason: str = "reload") -> tuple[list[str], list[str]] | None:
        """Re-read the config file: rebuild changed resources and their dependents, keep the rest.

        Then tells the children to reload too.  Returns (rebuilt or added, removed), None if refused.
        """
        async with self._reload_lock:
            return await self._reload(reason)

    async def _reload(self, reason: str) -> tuple[list[str], list[str]] | None:
        if self.state != PartStateName.RUNNING:
            return None
        try:
            new = load_config(self.loaded.path)
        except ConfigError as exc:
            log.error("part %s: reload refused, the configuration is invalid:\n%s", self.name, exc)
            return None
        if new.config.robot != self.config.robot or self.name not in new.topology.parts:
            log.error("part %s: reload refused: the new configuration has no part %s in robot %s",
                      self.name, self.name, self.config.robot)
            return None
        if new.topology.parent(self.name) != self.parent or new.topology.children(self.name) != self.children:
            log.warning("part %s: parent/children changes need a restart; reloading resources only", self.name)
        old = {ResourceRef(p.name, r.name): r for p in self.config.parts for r in p.resources}
        cur = {ResourceRef(p.name, r.name): r for p in new.config.parts for r in p.resources}
        changed = {ref for ref, r in cur.items() if old.get(ref) != r} | {ref for ref in old if ref not in cur}
        affected = {ref.name for ref in new.topology.affected_by(changed & set(cur)) if ref.part == self.name}
        affected |= {ref.name for ref in changed if ref.part == self.name}
        new_part = new.config.part(self.name)
        rebuilt, removed = await self.host.reload(new_part, new.topology, new.config, affected)
        self.loaded, self.config, self.topology, self.part_config = new, new.config, new.topology, new_part
        self.last_reload = (rebuilt, removed)
        self._start_telemetry()
        await self.publish_resources()
        log.info("part %s reloaded (%s): rebuilt %s, removed %s", self.name, reason, rebuilt, removed)
        for child in self.children:
            ctl = Control(cmd=ControlCommand.RELOAD, reason=reason)
            with contextlib.suppress(Exception):
                await self.client.publish(self.topics.part_control(self.name, child), self.encode(ctl), qos=1,
                                          timeout=2.0)
        return rebuilt, removed

    async def _liveness_loop(self) -> None:
        period = min(self.config.part(c).heartbeat_s for c in self.children) / 2
        while True:
            await asyncio.sleep(period)
            self.children_liveness.check_timeouts()

    def _decode(self, msg: Message) -> Envelope | None:
        try:
            return decode(msg.payload)
        except ProtocolError as exc:
            log.warning("part %s: dropped malformed message on %s: %s", self.name, msg.topic, exc)
            return None

    def _on_child_state(self, msg: Message) -> None:
        env = self._decode(msg)
        child = self.topics.part_of(msg.topic)
        if env is None or child is None:
            return
        try:
            self.children_liveness.on_state(child, env, env.parse(PartState))
        except ProtocolError as exc:
            log.warning("part %s: bad state from %s: %s", self.name, child, exc)
        ev = self._report_events.get(child)
        if ev is not None and self._child_gone(child) and self._shutdown_id:
            ev.set()  # a child that died while we wait for its report: do not wait for the deadline

    def _on_child_heartbeat(self, msg: Message) -> None:
        env = self._decode(msg)
        child = self.topics.part_of(msg.topic)
        if env is not None and child is not None:
            self.children_liveness.on_heartbeat(child, env)

    async def _on_connect(self, birth: int) -> None:
        if self.client.connections > 1:  # a reconnect: announce the new birth at once
            await self.publish_state(self.state, "reconnected")

    async def _on_disconnect(self, reason: str) -> None:
        """Safety: a part that loses the broker stops its own actuators."""
        if self._closing:
            return
        log.warning("part %s lost the broker (%s): stopping its actuators", self.name, reason)
        result = await self.host.stop_actuators(bound_s=max(0.05, self.part_config.stop_deadline_s / 2))
        if result.errors:
            log.error("part %s: stopping actuators after broker loss: %s", self.name, result.errors)

    # -- control from the parent -------------------------------------------------------------------
    def _on_control(self, msg: Message) -> None:
        env = self._decode(msg)
        if env is None:
            return
        if env.src != f"part/{self.parent}":
            log.warning("part %s: control from %s ignored (not my parent)", self.name, env.src)
            return
        try:
            ctl = env.parse(Control)
        except ProtocolError as exc:
            log.warning("part %s: %s", self.name, exc)
            return
        if ctl.cmd == ControlCommand.STOP:
            self._shutdown_id = self._shutdown_id or ctl.shutdown_id
            self.request_stop(f"asked by {self.parent}" + (f": {ctl.reason}" if ctl.reason else ""))
        elif ctl.cmd == ControlCommand.RELOAD:
            self.spawn(self.reload(ctl.reason or f"asked by {self.parent}"), "reload")

    def _on_report(self, msg: Message) -> None:
        env = self._decode(msg)
        child = self.topics.part_of(msg.topic)
        if env is None or child is None or child not in self._report_events:
            return
        try:
            rep = env.parse(StopReport)
        except ProtocolError as exc:
            log.warning("part %s: %s", self.name, exc)
            return
        self._reports[child] = (time.time(), env, rep)
        self._report_events[child].set()

    # -- bottom-up shutdown -----------------------------------------------------------------------
    async def stop_children(self, shutdown_id: str, reason: str) -> list[TimelineEntry]:
        """Ask every child to stop and wait for its report, each bounded by the child's stop budget."""
        if not self.children:
            return []
        asked: dict[str, float] = {}
        for child in self.children:
            ev = self._report_events[child]
            if child in self._reports:
                continue
            ev.clear()
            asked[child] = time.time()
            ctl = Control(cmd=ControlCommand.STOP, reason=reason, shutdown_id=shutdown_id,
                          deadline_s=self.topology.stop_budget(child))
            try:
                await self.client.publish(self.topics.part_control(self.name, child), self.encode(ctl), qos=1,
                                          timeout=1.0)
            except Exception as exc:
                log.warning("part %s: could not ask %s to stop: %s", self.name, child, exc)
        entries: list[TimelineEntry] = []

        async def wait_child(child: str) -> None:
            budget = self.topology.stop_budget(child)
            ev = self._report_events[child]
            if not (child in self._reports or self._child_gone(child)):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), timeout=budget)

        await asyncio.gather(*(wait_child(c) for c in self.children))
        for child in self.children:
            got = self._reports.get(child)
            if got is not None:
                reported_at, _env, rep = got
                entries.append(
                    TimelineEntry(
                        part=child, parent=self.name, asked_at=asked.get(child, rep.asked_at),
                        began_at=rep.began_at, stopped_at=rep.stopped_at, reported_at=reported_at,
                        resources_stopped=rep.resources_stopped, errors=rep.errors,
                    )
                )
                entries.extend(rep.children)
            else:
                gone = self._child_gone(child)
                why = "offline before it reported" if gone else (
                    f"no report within its stop budget of {self.topology.stop_budget(child):g} s")
                log.warning("part %s: child %s forced: %s", self.name, child, why)
                entries.append(TimelineEntry(part=child, parent=self.name, asked_at=asked.get(child),
                                             forced=True, errors=[why]))
                for d in self.topology.descendants(child):
                    entries.append(TimelineEntry(part=d, parent=self.topology.parent(d), forced=True,
                                                 errors=[f"unaccounted for: ancestor {child} was forced"]))
        return entries

    def _child_gone(self, child: str) -> bool:
        """Only a Will says a child is gone; missed heartbeats (a starved machine) are waited out."""
        st: PartStatus = self.children_liveness.status(child)
        return st.state == PartStateName.OFFLINE and st.birth != 0

    async def stop_self(self) -> tuple[float, float, list[str], list[str]]:
        began = time.time()
        res = await self.host.close(self.part_config.stop_deadline_s)
        return began, time.time(), res.stopped, res.errors

    async def shutdown(self, reason: str) -> TimelineEntry:
        """Stop bottom-up and report to the parent.  Idempotent: a second call waits for the first."""
        if self.entry is not None or self.state in (PartStateName.STOPPING, PartStateName.STOPPED):
            await self._stopped.wait()
            assert self.entry is not None
            return self.entry
        self._stop_requested.set()
        asked_at = self._asked_at or time.time()
        shutdown_id = self._shutdown_id or uuid.uuid4().hex[:12]
        self._shutdown_id = shutdown_id
        log.info("part %s stopping: %s", self.name, reason)
        await self.publish_state(PartStateName.STOPPING, reason)
        children = await self.stop_children(shutdown_id, reason)
        began, stopped, res_stopped, errors = await self.stop_self()
        self.entry = TimelineEntry(part=self.name, parent=self.parent, asked_at=asked_at, began_at=began,
                                   stopped_at=stopped, resources_stopped=res_stopped, errors=errors)
        if self.parent is not None:
            rep = StopReport(shutdown_id=shutdown_id, asked_at=asked_at, began_at=began, stopped_at=stopped,
                             resources_stopped=res_stopped, errors=errors, children=children)
            try:
                await self.client.publish(self.topics.part_report(self.name), self.encode(rep), qos=1, timeout=2.0)
            except Exception as exc:
                log.warning("part %s: could not report to %s: %s", self.name, self.parent, exc)
        await self.after_stopped(children)
        await self.publish_state(PartStateName.STOPPED, reason)
        self._stopped.set()
        return self.entry

    async def after_stopped(self, children: list[TimelineEntry]) -> None:
        """Hook for the primary: runs once this part and its subtree have stopped."""
