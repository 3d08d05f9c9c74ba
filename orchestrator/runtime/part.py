"""One part of a robot: its own process, connected to the broker under its own identity.

A part publishes a retained state (starting, running, stopping, stopped; ``offline`` through its
Will), heartbeats, hosts its resources, obeys its parent's control messages and, when asked to stop
(by its parent, by SIGTERM or SIGINT), stops bottom-up: first it asks its own children and waits for
their reports (each bounded by the child's stop budget), then stops its actuators and closes its
resources, then reports to its parent with what it did, and exits.

Safety on the link: a part that loses the broker stops its own actuators at once; so does a part
whose connection still looks up but carries nothing (it hears the echo of its own heartbeats, and
when that echo is silent for ``link_timeout_s`` it stops its actuators, or for up to twice that while
the kernel shows TCP recovering a loss on a link that still answers (transport/tcpinfo.py); the keep-alive then ends
the dead connection and the part reconnects with a new birth).  On every reconnection it
re-announces everything it keeps retained (state, resources, sessions).

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
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.config.loader import LoadedConfig
from orchestrator.config.topology import MESSAGE_MARGIN_S, ResourceRef
from orchestrator.errors import ConfigError, PartOffline, ProtocolError
from orchestrator.protocol.codec import Envelope, Sequencer, decode_light, encode
from orchestrator.protocol.messages import (
    Control,
    ControlCommand,
    Counters,
    Heartbeat,
    PartMetrics,
    PartState,
    PartStateName,
    PartStatus,
    SessionEndReport,
    StopReport,
    TimelineEntry,
)
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import PartId, Topics
from orchestrator.protocol.trust import trusted
from orchestrator.resources.base import Actuator, Resource
from orchestrator.resources.registry import Registry
from orchestrator.rpc.client import RpcClient
from orchestrator.rpc.methods import MethodSpec
from orchestrator.rpc.server import RpcServer
from orchestrator.rpc.stats import CallStats
from orchestrator.runtime.conversation import Conversations
from orchestrator.runtime.healthfile import HealthFile
from orchestrator.runtime.liveness import Liveness
from orchestrator.runtime.monitoring import JsonMirror
from orchestrator.runtime.reload import affected_refs, stopped_through
from orchestrator.runtime.resource_host import ResourceHost
from orchestrator.runtime.telemetry import Telemetry
from orchestrator.runtime.watchdog import LoopWatchdog
from orchestrator.security.access import Access
from orchestrator.security.access import session_key as robot_session_key
from orchestrator.security.signed import load_effective
from orchestrator.sessions.context import CallContext
from orchestrator.sessions.guard import SessionGuard
from orchestrator.sessions.heartbeat import Heartbeater
from orchestrator.sessions.service import SERVICE as SESSION_SERVICE
from orchestrator.sessions.service import SessionService
from orchestrator.sessions.tokens import SessionKey, short
from orchestrator.tasks import cancel_and_wait
from orchestrator.transport.client import Message, MqttClient, Will, private_client_id

log = logging.getLogger("orchestrator.part")

M = TypeVar("M", bound=BaseModel)

COUNTERS_PERIOD_S = 5.0
BEAT_SLACK = 0.25  # a heartbeat interval may stretch by this fraction of a period to get onto the shared beat


def next_beat_delay(period: float, now: float) -> float:
    """Seconds until the next heartbeat: on the shared beat (the multiples of ``period`` of the wall clock),
    so the parts of a robot beat together and the broker and the primary read their heartbeats a batch per
    wake-up instead of one each.  A beat less than a quarter period away is skipped (the interval stretches
    to at most 1.25 periods; it never shrinks below 0.25 of one)."""
    delay = (-now) % period
    return delay + period if delay < BEAT_SLACK * period else delay
CAP_MARGIN_S = 2.0  # the primary leaves `up` this much of the robot's shutdown bound
LATE_REPORT_S = 1.0  # how long a child that said "stopped" may take to bring the report it sent before
ALL_SESSIONS = "*"


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
        health_file: str | Path | None = None,
    ) -> None:
        self.loaded = loaded
        self.credentials = credentials
        self.config = loaded.config
        self.topology = loaded.topology
        self.part_config = self.config.part(name)
        self.name = name
        self.id = PartId(self.config.robot, name)
        self.topics = Topics(self.config.robot, self.topology.primary)
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
        self._stop_cap: float | None = None  # monotonic: when this subtree must have stopped, live or not
        self._tasks: list[asyncio.Task[Any]] = []
        self.last_reload: tuple[list[str], list[str]] | None = None
        self._reload_lock = asyncio.Lock()
        self._closing = False
        self.entry: TimelineEntry | None = None
        self.refusals = Refusals(f"part {name}")
        # conversations with the children: the shutdown (by shutdown id) and session ends / halts (by end id)
        self.stop_talks: Conversations[StopReport] = Conversations()
        self.end_talks: Conversations[SessionEndReport] = Conversations()
        self._unasked_reports: dict[str, tuple[float, StopReport]] = {}
        self._following_children = False  # hearing the children's heartbeats (from the start of a shutdown)
        self.children_liveness = Liveness(
            [(c, self.config.part(c).heartbeat_s, self.config.part(c).heartbeat_misses) for c in self.children]
        )
        # the link: the echo of our own heartbeats proves the broker still carries what we send
        self.link_timeout_s = self.config.link_timeout(name)
        self._unechoed_since: float | None = None  # when the oldest heartbeat not echoed yet was sent
        self._link_ok = True
        # wall clock: what we sent up to then came back, so we would have heard others' messages up to then
        self._link_proven_at = time.time()
        self.link_drops = 0
        self.link_waits = 0  # echo checks that waited for TCP to recover a loss (a lossy link, not a dead one)
        self._link_waiting = False
        self._segs_in_at_beat: int | None = None  # data segments from the broker, at the previous beat
        # for a container health check: renewed on each echo while running (runtime/healthfile.py)
        self.health = HealthFile(health_file, max(self.link_timeout_s,
                                                  self.part_config.heartbeat_s * self.part_config.heartbeat_misses))
        # this part's own broker identity (username = identity) and the robot's session key
        self.access = Access.of(self.config, loaded.path, self.id, credentials)
        self.client = MqttClient(
            private_client_id(f"{self.config.robot}.part.{name}"),
            self.urls,
            keepalive=self.config.broker.keepalive_s,
            max_subscribe_qos=self.config.broker.subscribe_qos,
            username=self.access.username,
            password=self.access.password,
            tls=self.access.tls,
            will=self._will,
        )
        self.client.on_connect(self._on_connect)
        self.client.on_disconnect(self._on_disconnect)
        # for the people and tools watching: a JSON copy of what is published, call statistics, events
        self.mirror = JsonMirror(self.client, self.topics, self.config.monitoring.json_mirror)
        self.call_stats = CallStats()
        # calls this part makes (remote dependencies) and serves (its resources)
        self.rpc = RpcClient(self.client, self.topics, self.sender, refusals=self.refusals)
        self.host = ResourceHost(self.part_config, self.topology, registry, robot=self.config, rpc=self.rpc)
        self.server = RpcServer(self.client, self.topics, name, self.sender, self._lookup, self._describe_missing,
                                refusals=self.refusals, stats=self.call_stats)
        # sessions: expiry checked here, where the actuators live
        self.session_key = session_key or SessionKey(robot_session_key(self.config, loaded.path, credentials))
        self.sessions = SessionGuard(name, self.sender, self.client, self.topics, self.session_key,
                                     self.config.sessions, self.host.resources, is_primary=self.parent is None,
                                     refusals=self.refusals, mirror=self.mirror)
        self.sessions.primary_reachable = self._primary_reachable
        self.session_service = SessionService(self.sessions, can_open=self.parent is None,
                                              window_s=self.config.sessions.heartbeat_window_s)
        self.host.on_built = self.sessions.guard_resource
        ws = self.part_config.watchdog_s
        self.watchdog = LoopWatchdog(name, self.host.actuators, ws) if ws else None
        self.server.before_call.append(self._refuse_moves_while_stopping)
        self.server.before_call.append(self.sessions.before_call)
        self.telemetry = Telemetry(self)
        # this part's own session: what it drives on other parts stops if it dies or loses its link
        self._issue_own_session()

    def _issue_own_session(self) -> None:
        """A new session of this part's own, made its calls' session, and the heartbeater that keeps it alive
        (started by the first remote call made in it: ``rpc.session_activate``)."""
        window = self.config.sessions.heartbeat_window_s
        self.own_session = self.session_key.issue(self.sender, window)
        self.rpc.session = self.own_session
        self._own_heartbeat = Heartbeater(self.client, self.topics.session_heartbeat(self.sender), self.sender,
                                          self.own_session, self.session_key.heartbeat_secret(self.own_session),
                                          window / 5)

    def _renew_own_session(self, refused: str) -> None:
        """A part refused a call in this part's own session: the robot ended it (it expired somewhere, e.g.
        while our link was cut for longer than the window).  The refused call fails (what we drove there
        was stopped); the next one goes out in a new session, heartbeated from its first call, so what
        this part drives by itself on other parts works again after an outage.  Nothing moves by itself."""
        if refused != self.own_session:
            return
        old = self._own_heartbeat
        self._issue_own_session()
        self.rpc.session_activate = lambda: self._own_heartbeat.start(wait=False)  # the rpc clears it once used
        log.warning("part %s: its own session %s was ended by the robot; the next call opens session %s",
                    self.name, short(refused), short(self.own_session))
        self.spawn(old.aclose(), "own-session.release")

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
            host=socket.gethostname()[:64],
            reason=reason,
            heartbeat_s=self.part_config.heartbeat_s,
            resources=[r.name for r in self.part_config.resources],
        )

    async def publish_state(self, state: PartStateName, reason: str | None = None) -> None:
        self.state = state
        if state != PartStateName.RUNNING:
            self.health.not_running(state.value, reason or "")
        self._state_reason = reason
        body = self._state_body(reason)
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.part_state(self.name), self.encode(body), qos=1, retain=True,
                                      timeout=2.0)
        self.mirror(self.topics.part_state(self.name), body, retain=True)

    async def publish_resources(self) -> None:
        body = {"resources": self.host.describe()}
        with contextlib.suppress(Exception):
            await self.client.publish(
                self.topics.part_resources(self.name),
                encode(self.sender, body, birth=self.client.birth, seq=self._seq.next()),
                qos=1, retain=True, timeout=2.0,
            )
        self.mirror(self.topics.part_resources(self.name), body, retain=True)

    async def publish_counters(self) -> None:
        body = Counters(since=self.refusals.since, counts=dict(self.refusals.counts))
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.part_counters(self.name), self.encode(body), qos=1, retain=True,
                                      timeout=2.0)
        self.mirror(self.topics.part_counters(self.name), body, retain=True)

    async def announce(self, reason: str | None) -> None:
        """Everything this part keeps retained, again: after a reconnect the broker may have lost it all
        (restarted without persistence)."""
        await self.publish_state(self.state, reason)
        await self.publish_resources()
        await self.sessions.publish_state()
        if self.refusals.total:
            await self.publish_counters()

    def trusted(self, msg: Message, model: type[M]) -> tuple[Envelope, M] | None:
        """Decode a message and believe it only from the identity its topic is reserved to (the broker's
        topic rights make sure nobody else can publish there); anything else is refused and counted."""
        return trusted(self.topics, self.refusals, msg.topic, msg.payload, model, message=msg)

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
        await self.sessions.subscribe()
        remote = any(dep.part != self.name for ref, deps in self.topology.deps_of.items() if ref.part == self.name
                     for dep in deps)
        await self.rpc.start(follow_status=remote, follow_parts=self.followed_parts())
        await self.server.start()
        await self.client.start()
        self.sessions.start()
        # heartbeats begin with the first remote call, which does not wait for their connection
        self.rpc.session_activate = lambda: self._own_heartbeat.start(wait=False)
        self.rpc.on_session_refused = self._renew_own_session
        if self.watchdog is not None:
            self.watchdog.start()
        await self.publish_state(PartStateName.STARTING)
        await self.host.start()
        degraded = [s for s in self.host.states.values() if s.status == "degraded"]
        await self.publish_resources()
        self.spawn(self._heartbeat_loop(), "heartbeat")
        self.spawn(self._counters_loop(), "counters")
        self.telemetry.restart()
        reason = f"{len(degraded)} resource(s) degraded" if degraded else None
        await self.publish_state(PartStateName.RUNNING, reason)
        log.info("part %s running (birth %d)", self.name, self.client.birth)

    def followed_parts(self) -> set[str] | None:
        """The parts whose states this part reads (see :meth:`RpcClient.start`): the primary (whether it can
        end a session) and the parts it depends on; its children it follows on topics of their own."""
        deps = {dep.part for ref, ds in self.topology.deps_of.items() if ref.part == self.name for dep in ds}
        return ({self.topology.primary} | deps) - {self.name}

    async def _subscribe(self) -> None:
        """Register subscriptions before connecting: the transport sends them on every CONNACK."""
        t = self.topics
        await self.client.subscribe(t.part_heartbeat(self.name), self._on_own_heartbeat, qos=0)
        if self.parent is not None:
            await self.client.subscribe(t.part_control(self.parent, self.name), self._on_control)
        for c in self.children:
            await self.client.subscribe(t.part_report(c), self._on_report)
            await self.client.subscribe(t.session_report(c), self._on_session_report)
            await self.client.subscribe(t.part_state(c), self._on_child_state)
        # the children's heartbeats: only from the start of a shutdown (follow_children); the primary hears
        # every part's on a connection of its own

    def spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"part[{self.name}].{what}")
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("part %s: task %s failed", self.name, task.get_name(), exc_info=task.exception())

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
        await self.telemetry.close()
        await cancel_and_wait(list(self._tasks))
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

    # -- heartbeats and the link ------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """A heartbeat every ``heartbeat_s``, on the robot's shared beat (:func:`next_beat_delay`)."""
        topic = self.topics.part_heartbeat(self.name)
        period = self.part_config.heartbeat_s
        watchdog = self.watchdog
        if watchdog is not None:  # touched here on every beat: its own task need not wake the loop too
            watchdog.touched_every(period * (1 + BEAT_SLACK))
        beat_at = time.monotonic()
        while True:
            if watchdog is not None:
                watchdog.touch()
            if self.client.is_connected:
                self._check_link()
                body = Heartbeat(uptime_s=time.monotonic() - self._started_mono)
                if self.client.publish_nowait(topic, self.encode(body), qos=0) and self._unechoed_since is None:
                    self._unechoed_since = time.monotonic()
            await asyncio.sleep(next_beat_delay(period, time.time()))
            now = time.monotonic()
            if now - beat_at > (1.5 + BEAT_SLACK) * period:
                self._unechoed_since = None  # the loop was blocked: our own stall is not the link's
            beat_at = now

    def _on_own_heartbeat(self, msg: Message) -> None:
        since = self._unechoed_since
        now = time.time()
        self._link_proven_at = now if since is None else max(self._link_proven_at,
                                                                 now - (time.monotonic() - since))
        self._unechoed_since = None
        if self.state == PartStateName.RUNNING:
            self.health.running(self.client.birth, os.getpid())
        if not self._link_ok:
            self._link_ok = True
            log.warning("part %s: the broker carries our heartbeats again (nothing restarts by itself)", self.name)
            self.event("link", "the link carries our heartbeats again (nothing restarts by itself)")

    def _check_link(self) -> None:
        """Our heartbeats go unechoed for ``link_timeout_s``: the connection looks up but carries nothing.

        Unless TCP is recovering a loss on a link that still answers (:meth:`_tcp_recovering`): a
        segment lost twice stalls the connection for longer than a second with nothing wrong with the
        link but its loss; the check then waits, up to twice ``link_timeout_s``.  A dead, blackholed or
        frozen link never shows that, and is stopped at ``link_timeout_s`` as before."""
        since = self._unechoed_since
        silent = 0.0 if since is None else time.monotonic() - since
        # the kernel is read once the echo is late (from half the timeout: the previous beat's count of
        # segments is there when the timeout comes), not on every beat of a healthy link
        recovering = self._tcp_recovering() if silent > self.link_timeout_s / 2 else False
        if silent <= self.link_timeout_s / 2:
            self._segs_in_at_beat = None
        if silent <= self.link_timeout_s:
            self._link_waiting = False
        if not self._link_ok or silent <= self.link_timeout_s:
            return
        if recovering and silent <= 2 * self.link_timeout_s:
            if not self._link_waiting:
                self._link_waiting = True
                self.link_waits += 1
                log.debug("part %s: no echo for %.2f s, but TCP is recovering a loss on a link that answers: "
                          "waiting up to %.2f s", self.name, silent, 2 * self.link_timeout_s)
            return
        self._link_ok = False
        self._link_waiting = False
        self.link_drops += 1
        self.health.not_running("disconnected", f"no echo of our heartbeats for {silent:.2f} s")
        # stop what moves (safety first); the connection itself is left to the keep-alive: dropping it on a
        # busy machine would only add reconnections to the load that delayed the echo
        log.warning("part %s: no echo of our heartbeats for %.2f s: the link carries nothing; stopping our "
                    "actuators", self.name, silent)
        self.spawn(self._stop_actuators("the link to the broker carries nothing"), "link-lost")
        self.event("link", f"no echo of our heartbeats for {silent:.2f} s: actuators stopped", "warning")

    def _tcp_recovering(self) -> bool:
        """The kernel shows a lossy link, not a dead one: the broker's host acknowledged something lately
        and either we are retransmitting what it did not get, or its data keeps arriving behind a hole
        (data segments from it since the previous beat, none readable: our echo is among them)."""
        info = self.client.tcp_info()
        segs_before, self._segs_in_at_beat = self._segs_in_at_beat, None if info is None else info.data_segs_in
        if info is None:
            return False
        fresh = max(self.link_timeout_s / 2, 2 * self.part_config.heartbeat_s)
        if info.peer_silent_s > fresh:
            return False
        arriving = segs_before is not None and info.data_segs_in is not None and info.data_segs_in > segs_before
        return info.recovering_a_loss() or arriving

    async def _stop_actuators(self, why: str) -> None:
        result = await self.host.stop_actuators(bound_s=max(0.05, self.part_config.stop_deadline_s / 2))
        if result.errors:
            log.error("part %s: stopping actuators (%s): %s", self.name, why, result.errors)

    def heard_until(self) -> float:
        """The wall-clock time up to which another part's silence is its own, not our link's.

        Our own heartbeats come back through the broker on the connection that brings us the others':
        the echo of one sent at time S means anything published before S reached us too.  Between echoes
        (one a heartbeat period apart) the link is believed for a period and a half past the last proof,
        then no longer: cut off, we would otherwise blame every part we hear nothing from for our own
        silence, before our link check (``link_timeout_s``) has noticed it."""
        return min(time.time(), self._link_proven_at + 1.5 * self.part_config.heartbeat_s)

    def _primary_reachable(self) -> bool:
        """Whether the primary can order the end of a session (we hear from it through the broker)."""
        if not self.client.is_connected or not self._link_ok:
            return False
        st = self.rpc.part_states.get(self.topology.primary)
        status = self.rpc.status
        return st is not None and st[1] == PartStateName.RUNNING and (status is None or status.state != "offline")

    async def _counters_loop(self) -> None:
        published = 0
        stats_published = -1
        while True:
            await asyncio.sleep(COUNTERS_PERIOD_S)
            if self.refusals.version != published and self.client.is_connected:
                published = self.refusals.version
                await self.publish_counters()
            version = self.call_stats.version + self.link_drops + self.link_waits + max(0, self.client.connections - 1)
            if version != stats_published and self.client.is_connected:
                stats_published = version
                await self.publish_metrics()

    def metrics_body(self) -> PartMetrics:
        """What the primary's Prometheus endpoint serves for this part (retained on ``part/<p>/metrics``)."""
        return PartMetrics(**self.call_stats.body(), uptime_s=round(time.monotonic() - self._started_mono, 3),
                           reconnects=max(0, self.client.connections - 1), link_drops=self.link_drops,
                           link_waits=self.link_waits,
                           session_stops=dict(self.sessions.stops), refused=self.refusals.total)

    async def publish_metrics(self) -> None:
        body = self.metrics_body()
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.part_metrics(self.name), self.encode(body), qos=1, retain=True,
                                      timeout=2.0)
        self.mirror(self.topics.part_metrics(self.name), body, retain=True)

    def event(self, kind: str, text: str, level: str = "info", **details: Any) -> None:
        """Tell the people watching (``monitor``, ``logs``, ``reload``) what happened to this part; not
        retained.  ``details``: structured fields beside the text (a reload's rebuilt resources...)."""
        body = {**details, "kind": kind, "text": text[:500], "level": level, "ts": time.time()}
        with contextlib.suppress(Exception):
            self.client.publish_nowait(self.topics.part_events(self.name),
                                       encode(self.sender, body, birth=self.client.birth, seq=self._seq.next()),
                                       qos=1)
        self.mirror(self.topics.part_events(self.name), body)

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
            new = load_effective(self.loaded.path, self.credentials)
        except ConfigError as exc:
            log.error("part %s: reload refused, the configuration is invalid:\n%s", self.name, exc)
            self.event("reload", f"reload refused: the configuration is invalid ({len(exc.problems)} problem(s))",
                       "error")
            return None
        if new.config.robot != self.config.robot or self.name not in new.topology.parts:
            log.error("part %s: reload refused: the new configuration has no part %s in robot %s",
                      self.name, self.name, self.config.robot)
            return None
        if new.topology.parent(self.name) != self.parent or new.topology.children(self.name) != self.children:
            log.warning("part %s: parent/children changes need a restart; reloading resources only", self.name)
        affected_all = affected_refs(self.loaded, new)
        affected = {ref.name for ref in affected_all if ref.part == self.name}
        # what the rebuild stops besides what it rebuilds (a base rebuilt for one motor stops the other)
        stopped = stopped_through(self.topology, self.name,
                                  {n for n in affected if isinstance(self.host.resources.get(n), Actuator)},
                                  affected_all, self._drives)
        new_part = new.config.part(self.name)
        rebuilt, removed = await self.host.reload(new_part, new.topology, new.config, affected)
        self.loaded, self.config, self.topology, self.part_config = new, new.config, new.topology, new_part
        self.last_reload = (rebuilt, removed)
        self.telemetry.restart()
        await self.publish_resources()
        log.info("part %s reloaded (%s): rebuilt %s, removed %s", self.name, reason, rebuilt, removed)
        also = "; ".join(f"stopped {res} (through {', '.join(by)}, rebuilt)" for res, by in stopped.items())
        if also:
            log.warning("part %s: reload %s", self.name, also)
        self.event("reload", f"reloaded ({reason}): rebuilt {', '.join(rebuilt) or 'nothing'}"
                   + (f", removed {', '.join(removed)}" if removed else "") + (f"; {also}" if also else ""),
                   "warning" if stopped else "info", rebuilt=rebuilt[:1000], removed=removed[:1000],
                   stopped=dict(list(stopped.items())[:1000]))
        for child in self.children:
            ctl = Control(cmd=ControlCommand.RELOAD, reason=reason)
            self.client.publish_nowait(self.topics.part_control(self.name, child), self.encode(ctl), qos=1)
        return rebuilt, removed

    def _drives(self, ref: ResourceRef) -> bool:
        """Is ``ref`` (as the running configuration has it) an actuator, something a stop stops?"""
        if ref.part == self.name:
            return isinstance(self.host.resources.get(ref.name), Actuator)
        try:
            model = next(r.model for r in self.config.part(ref.part).resources if r.name == ref.name)
            return issubclass(self.host.registry.get(model).kind, Actuator)
        except Exception:  # an unknown part, resource or model: not something we know to move
            return False

    # -- children's liveness -----------------------------------------------------------------------
    async def _liveness_loop(self) -> None:
        period = min(self.config.part(c).heartbeat_s for c in self.children) / 2
        while True:
            await asyncio.sleep(period)
            if self.client.is_connected and self._link_ok:  # our own isolation is not the children's silence
                self.children_liveness.check_timeouts(self.heard_until())

    def _on_child_state(self, msg: Message) -> None:
        child = self.topics.part_of(msg.topic)
        got = self.trusted(msg, PartState)
        if child is None or got is None:
            return
        self.children_liveness.on_state(child, got[0], got[1])
        if self._child_gone(child):
            # a child that died while we wait for its report: do not wait for its deadline
            self.stop_talks.child_gone(child)
            self.end_talks.child_gone(child)

    def follow_children(self) -> None:
        """From the start of a shutdown, hear the children's heartbeats: a child that is alive and working
        towards its report is waited for past its budget (``_child_alive``).  While the robot runs a parent
        needs only its children's states (their Wills); the primary supervises every part's heartbeats, so a
        parent does not pay for hearing them (nor the broker for sending them a second time).  Each online
        child starts with a fresh detection interval, as after a reconnect."""
        if self._following_children or not self.children:
            return
        self._following_children = True
        self.children_liveness.resync(time.time())

        async def subscribe() -> None:
            await asyncio.gather(*(self.client.subscribe(self.topics.part_heartbeat(c), self._on_child_heartbeat,
                                                         qos=0) for c in self.children))

        self.spawn(subscribe(), "follow-children")
        self.spawn(self._liveness_loop(), "children-liveness")

    def heartbeat_body(self, msg: Message) -> tuple[int, float | None] | None:
        """(birth, the sender's uptime when it sent it) of an authentic heartbeat, else None (counted)."""
        try:
            src, birth, body = decode_light(msg.payload)
        except ProtocolError as exc:
            self.refusals.refuse(str(exc.details.get("reason", "malformed")), msg.topic)
            return None
        if not self.topics.authentic(msg.topic, src):
            self.refusals.refuse("forged_sender", msg.topic, f"claims {src[:80]}")
            return None
        sent = body.get("uptime_s")
        return birth, float(sent) if isinstance(sent, int | float) and not isinstance(sent, bool) and \
            0 <= sent < 1e12 else None

    def _on_child_heartbeat(self, msg: Message) -> None:
        child = self.topics.part_of(msg.topic)
        got = self.heartbeat_body(msg)
        if got is not None and child is not None:
            self.children_liveness.on_heartbeat(child, got[0], sent=got[1])

    def _subtree_cap(self) -> float:
        """When this part's whole subtree must have stopped: the time its parent gave it, or (the primary,
        or a part stopped by SIGTERM) the robot's shutdown bound."""
        if self._stop_cap is None:
            self._stop_cap = time.monotonic() + max(self.config.shutdown_timeout_s - CAP_MARGIN_S,
                                                    self.topology.stop_budget(self.name))
        return self._stop_cap

    def _child_alive(self, child: str) -> bool:
        """Heard from recently enough: working towards its report, however slowly.

        "Recently" is measured against what the broker is proven to have carried to us (``heard_until``:
        the echo of our own heartbeats), not against the wall clock: a broker or a machine too busy to carry
        anybody's heartbeats in time delays ours as much as the child's, and that is not the child's
        silence.  The silence allowed is the child's link timeout (at least its detection interval): what a
        part itself tolerates of a link before it stops its actuators.  A hung child (its event loop blocked,
        its process frozen) stays silent while our own heartbeats keep coming back, and is given up once
        that silence is longer."""
        st = self.children_liveness.status(child)
        if st.last_heartbeat is None or self._child_gone(child):
            return False
        c = self.config.part(child)
        # plus its own stop deadline: in the middle of its stop a part may hold its event loop (a plugin's
        # blocking stop()) and its connection at the broker carries its reports and states first
        allowed = max(c.heartbeat_s * c.heartbeat_misses, self.config.link_timeout(child)) + c.stop_deadline_s
        if time.time() - st.last_heartbeat > allowed + self.link_timeout_s:
            # our own echoes stopped too (our link is cut, or we stopped beating): we cannot tell a busy child
            # from a hung one, and past our own link timeout the child, if it hears nothing either, has stopped
            # its actuators itself; waiting on would hold the shutdown until its overall bound
            return False
        return self.heard_until() - st.last_heartbeat <= allowed

    def _silence_of(self, child: str) -> str:
        """How long a child has been silent, and how fresh our own link is (for the log of a forced child)."""
        now = time.time()
        last = self.children_liveness.status(child).last_heartbeat
        heard = "never heard" if last is None else f"last heard {now - last:.2f} s ago"
        return f"{heard}; the broker carried our own heartbeats until {now - self.heard_until():.2f} s ago"

    def _child_gone(self, child: str) -> bool:
        """Only a Will (or a child already stopped) says a child is gone; missed heartbeats (a starved
        machine) are waited out."""
        st: PartStatus = self.children_liveness.status(child)
        return st.state in (PartStateName.OFFLINE, PartStateName.STOPPED) and st.birth != 0

    # -- the connection ------------------------------------------------------------------------------
    async def _on_connect(self, birth: int) -> None:
        self._unechoed_since = None
        self._link_proven_at = time.time()
        if not self._link_ok:
            # the broker acknowledged a new connection: the link carries again, and its next failure must be
            # noticed again (waiting for the first echo left a loss right after the reconnect unnoticed)
            self._link_ok = True
            log.warning("part %s: reconnected to the broker (nothing restarts by itself)", self.name)
        if self.client.connections > 1:  # a reconnect: announce the new birth and everything retained, at once
            await self.announce("reconnected")
            self.event("reconnect", f"reconnected (connection {self.client.connections}); what moved was stopped "
                       "when the broker was lost", "warning")

    async def _on_disconnect(self, reason: str) -> None:
        """Safety: a part that loses the broker stops its own actuators."""
        if self._closing:
            return
        log.warning("part %s lost the broker (%s): stopping its actuators", self.name, reason)
        self.health.not_running("disconnected", f"lost the broker ({reason})")
        await self._stop_actuators("broker lost")

    # -- control from the parent -------------------------------------------------------------------
    def _on_control(self, msg: Message) -> None:
        got = self.trusted(msg, Control)
        if got is None:
            return
        env, ctl = got
        if env.src != f"part/{self.parent}":  # the subscription is exact: this cannot happen on a secured broker
            self.refusals.refuse("control:not_my_parent", msg.topic, message=msg)
            return
        if ctl.cmd == ControlCommand.STOP:
            self._shutdown_id = self._shutdown_id or ctl.shutdown_id
            if self._stop_cap is None:  # the time our parent gives our whole subtree
                self._stop_cap = time.monotonic() + ctl.deadline_s
            self.request_stop(f"asked by {self.parent}" + (f": {ctl.reason}" if ctl.reason else ""))
        elif ctl.cmd == ControlCommand.RELOAD:
            self.spawn(self.reload(ctl.reason or f"asked by {self.parent}"), "reload")
        elif ctl.cmd in (ControlCommand.END_SESSION, ControlCommand.HALT) and ctl.end_id:
            self.spawn(self._answer_end(ctl), f"{ctl.cmd.value}[{ctl.end_id}]")

    async def _answer_end(self, ctl: Control) -> None:
        if ctl.cmd == ControlCommand.HALT:
            rep = await self.halt(ctl.reason, ctl.end_id, end_sessions=ctl.session == ALL_SESSIONS)
        else:
            rep = await self.end_session(ctl.session, ctl.reason, ctl.end_id, ctl.cause)
        self.client.publish_nowait(self.topics.session_report(self.name), self.encode(rep), qos=1)

    def _on_report(self, msg: Message) -> None:
        child = self.topics.part_of(msg.topic)
        got = self.trusted(msg, StopReport)
        if child is None or got is None:
            return
        if not self.stop_talks.offer(got[1].shutdown_id, child, got[1]):
            # a child that stopped on its own (SIGTERM from docker compose, leaves first): kept, but believed
            # only once the child's own retained state says it has stopped
            self._unasked_reports[child] = (time.time(), got[1])

    def _on_session_report(self, msg: Message) -> None:
        child = self.topics.part_of(msg.topic)
        got = self.trusted(msg, SessionEndReport)
        if child is None or got is None:
            return
        if not self.end_talks.offer(got[1].end_id, child, got[1]):
            self.refusals.refuse("session_report:unexpected", msg.topic, message=msg)

    # -- session ends and halts, bottom-up ---------------------------------------------------------
    async def _ask_children(self, ctl: Control) -> tuple[list[str], list[str], list[str]]:
        """Send ``ctl`` to every child and gather their reports: (stopped, errors, parts that answered)."""
        stopped: list[str] = []
        errors: list[str] = []
        parts: list[str] = []
        if not self.children:
            return stopped, errors, parts
        self.end_talks.open(ctl.end_id, self.children)
        try:
            for child in self.children:
                self.client.publish_nowait(self.topics.part_control(self.name, child), self.encode(ctl), qos=1)
            got = await self.end_talks.wait(ctl.end_id, self.topology.stop_budget, self._child_gone)
        finally:
            self.end_talks.close(ctl.end_id)
        for child, answer in got.items():
            if answer is None:
                errors.append(f"{child}: no report within {self.topology.stop_budget(child):g} s")
                continue
            rep = answer[1]
            stopped += rep.stopped
            errors += rep.errors
            parts += rep.parts
        return stopped, errors, parts

    async def end_session(self, public: str, reason: str, end_id: str, cause: str = "") -> SessionEndReport:
        """End session ``public`` in this part's subtree: children first, then here."""
        ctl = Control(cmd=ControlCommand.END_SESSION, session=public, end_id=end_id, reason=reason, cause=cause)
        stopped, errors, parts = await self._ask_children(ctl)
        mine = await self.sessions.end_local(public, reason, "stopped", cause)
        return SessionEndReport(end_id=end_id, session=public, stopped=stopped + [f"{self.name}/{r}" for r in mine],
                                errors=errors[:100], parts=[*parts, self.name])

    async def halt(self, reason: str, end_id: str, *, end_sessions: bool) -> SessionEndReport:
        """Stop every actuator of this subtree (and end every session it tracks), children first; the
        parts keep running."""
        ctl = Control(cmd=ControlCommand.HALT, session=ALL_SESSIONS if end_sessions else "", end_id=end_id,
                      reason=reason)
        stopped, errors, parts = await self._ask_children(ctl)
        if end_sessions:
            for t in list(self.sessions.tracked.values()):
                await self.sessions.end_local(t.public, reason, "halted")
        result = await self.host.stop_actuators(bound_s=max(0.05, self.part_config.stop_deadline_s / 2))
        log.warning("part %s halted (%s): stopped %s", self.name, reason, result.stopped)
        return SessionEndReport(end_id=end_id, stopped=stopped + [f"{self.name}/{r}" for r in result.stopped],
                                errors=(errors + result.errors)[:100], parts=[*parts, self.name])

    # -- bottom-up shutdown -----------------------------------------------------------------------
    async def stop_children(self, shutdown_id: str, reason: str) -> list[TimelineEntry]:
        """Ask every child to stop and wait for its report, each bounded by the child's stop budget."""
        if not self.children:
            return []
        asked: dict[str, float] = {}
        cap = self._subtree_cap()
        self.stop_talks.open(shutdown_id, self.children)
        try:
            for child in self.children:
                # each child may take the time left to the whole subtree (minus our own stop and a margin),
                # so that it too waits for its live children instead of forcing them on a busy machine
                left = cap - time.monotonic() - self.part_config.stop_deadline_s - MESSAGE_MARGIN_S
                ctl = Control(cmd=ControlCommand.STOP, reason=reason, shutdown_id=shutdown_id,
                              deadline_s=max(self.topology.stop_budget(child), left))
                self.client.publish_nowait(self.topics.part_control(self.name, child), self.encode(ctl), qos=1)
                asked[child] = time.time()  # when the request left (written to the socket), not when decided
            got = await self.stop_talks.wait(shutdown_id, self.topology.stop_budget, self._child_gone,
                                             alive=self._child_alive,
                                             cap=cap - self.part_config.stop_deadline_s - MESSAGE_MARGIN_S)
            late = [c for c in self.children if got.get(c) is None and c not in self._unasked_reports
                    and self.children_liveness.status(c).state == PartStateName.STOPPED]
            if late:  # it said "stopped" after reporting: the report may still be on its way
                grace = min(LATE_REPORT_S, max(0.0, cap - time.monotonic() - self.part_config.stop_deadline_s))
                await self.stop_talks.late(shutdown_id, late, grace)
                got.update({c: self.stop_talks.report(shutdown_id, c) for c in late})
        finally:
            self.stop_talks.close(shutdown_id)
        entries: list[TimelineEntry] = []
        for child in self.children:
            answer = got.get(child)
            if answer is None and self.children_liveness.status(child).state == PartStateName.STOPPED:
                answer = self._unasked_reports.get(child)  # it had stopped before we asked
            if answer is not None:
                reported_at, rep = answer
                entries.append(
                    TimelineEntry(
                        part=child, parent=self.name, asked_at=asked.get(child, rep.asked_at),
                        began_at=rep.began_at, stopped_at=rep.stopped_at, reported_at=reported_at,
                        resources_stopped=rep.resources_stopped, errors=rep.errors,
                    )
                )
                below = set(self.topology.descendants(child))
                entries.extend(e for e in rep.children if e.part in below)  # a child speaks only for its subtree
            elif self.children_liveness.status(child).state == PartStateName.STOPPED:
                entries.append(TimelineEntry(part=child, parent=self.name, asked_at=asked.get(child),
                                             errors=["had stopped before it was asked (no report of it)"]))
                for d in self.topology.descendants(child):  # one entry per part, whatever was lost
                    entries.append(TimelineEntry(part=d, parent=self.topology.parent(d),
                                                 errors=[f"no report of it: {child} stopped without one"]))
            else:
                gone = self._child_gone(child)
                why = "offline before it reported" if gone else (
                    f"no report within its stop budget of {self.topology.stop_budget(child):g} s"
                    f" ({self._silence_of(child)})")
                log.warning("part %s: child %s forced: %s", self.name, child, why)
                entries.append(TimelineEntry(part=child, parent=self.name, asked_at=asked.get(child),
                                             forced=True, errors=[why]))
                for d in self.topology.descendants(child):
                    entries.append(TimelineEntry(part=d, parent=self.topology.parent(d), forced=True,
                                                 errors=[f"unaccounted for: ancestor {child} was forced"]))
        return _one_entry_per_part(entries)

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
        self.follow_children()
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


def _one_entry_per_part(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """The first entry of each part: a part is in the timeline once, however many reports named it."""
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.part not in seen:
            seen.add(e.part)
            out.append(e)
    return out
