"""The primary part: supervises every sub-part, publishes the robot status and the shutdown timeline.

It tracks every part's liveness from births, Wills and heartbeats (a kill -9 is seen through the
Will within milliseconds, a frozen or cut-off part after ``heartbeat_s * heartbeat_misses``),
publishes a retained robot status on every change, and on SIGINT, SIGTERM or a shutdown request
over MQTT runs the bottom-up shutdown, tells clients the robot is going down, publishes the
timeline, and exits last.

- The robot status goes out on a connection of its own whose Will says ``offline``: when the
  primary is unreachable, the retained status says so instead of a stale "running".
- When the primary's own link comes back, its view of the others is rebuilt from what it hears
  (``resyncing``) instead of announcing that every part went silent while it was away.
- It ends sessions robot-wide, bottom-up (expired anywhere, closed, ended by hand), then closes the
  owner's connections on the embedded broker.
- With an upstream (cloud) broker it follows the bridge's link state; losing it ends every session
  and stops every actuator (default management), or changes nothing (``default_management: false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.config.models import LAUNCHER_CLIENT, ClientRole
from orchestrator.protocol.codec import encode
from orchestrator.protocol.messages import (
    AdminDisconnect,
    Heartbeat,
    Notice,
    PartState,
    PartStateName,
    PartStatus,
    ReloadRequest,
    RobotStatus,
    ShutdownRequest,
    Timeline,
    TimelineEntry,
    UpstreamState,
)
from orchestrator.protocol.topics import ClientId
from orchestrator.runtime.liveness import Liveness
from orchestrator.runtime.metrics import MetricsEndpoint
from orchestrator.runtime.monitoring import home_assistant_discovery
from orchestrator.runtime.part import ALL_SESSIONS, Part
from orchestrator.sessions.tokens import short
from orchestrator.transport.client import Message, MqttClient, Will, private_client_id

log = logging.getLogger("orchestrator.primary")

R = TypeVar("R", bound=BaseModel)

STATUS_MIN_INTERVAL_S = 0.05
PULSE_S = 1.0
WATCH_BATCH_S = 0.05  # the supervision connection is read at most this often (a few heartbeats per read)
MAX_UNKNOWN_ENDS = 16  # robot-wide ends of sessions the primary does not know, under way at once


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
        self._resync_until = 0.0
        self.timeline: Timeline | None = None
        self._shutdown_started_at: float | None = None
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._unknown_ending: set[str] = set()  # robot-wide ends under way of sessions this primary did not know
        self.sessions.end_robot_wide = self.end_robot_wide
        self.session_service.on_open = self._remember_connections
        self._connections: dict[str, tuple[str, list[str]]] = {}  # session public id -> (owner, MQTT client ids)
        self.upstream = "none" if self.config.upstream is None else "unknown"
        self._upstream_since = time.time()
        self._upstream_reason = "no word from the bridge yet"
        self._bridge_connected: bool | None = None
        self._probes: dict[int, int] = {}
        self._probe_echoed = time.monotonic()
        self.metrics: MetricsEndpoint | None = None
        # the robot status travels on a connection of its own, whose Will covers it
        self.status_link = MqttClient(
            private_client_id(f"{self.config.robot}.part.{self.name}.status"), self.urls,
            keepalive=self.config.broker.keepalive_s,
            max_subscribe_qos=self.config.broker.subscribe_qos,
            username=self.access.username, password=self.access.password, tls=self.access.tls,
            will=self._status_will,
        )
        # every part's heartbeats arrive on a connection of their own, read in batches: supervising 50 parts
        # costs a few wake-ups a second, and calls to the primary's own resources keep their latency
        self.watch = MqttClient(
            private_client_id(f"{self.config.robot}.part.{self.name}.watch"), self.urls,
            keepalive=self.config.broker.keepalive_s,
            max_subscribe_qos=self.config.broker.subscribe_qos,
            username=self.access.username, password=self.access.password, tls=self.access.tls,
            batch_reads_s=WATCH_BATCH_S,
        )
        self.watch.on_connect(self._on_watch_connect)
        self.watch.after_batch = self._supervise  # judge the silences right after reading what arrived
        self._supervisor: asyncio.TimerHandle | None = None
        self._supervise_period = min([self.config.part(p).heartbeat_s for p in self.topology.parts] + [0.5]) / 2
        self._watch_proven_at = time.time()  # our own heartbeats echoed on the supervision connection up to then

    def _status_will(self, birth: int) -> Will:
        body = RobotStatus(robot=self.config.robot, primary=self.name, state="offline", upstream=self.upstream,
                           at=time.time(), reason="the primary is unreachable (Last Will of its status link)")
        return Will(self.topics.robot_status(), encode(self.sender, body, birth=birth))

    async def _subscribe(self) -> None:
        t = self.topics
        await super()._subscribe()
        # one wildcard per kind, not one subscription per part (amqtt matching is linear in subscriptions)
        await self.client.subscribe(t.all_part_states(), self._on_any_state)
        await self.watch.subscribe(t.all_part_heartbeats(), self._on_any_heartbeat, qos=0)
        await self.client.subscribe(t.all_client_shutdowns(), self._on_shutdown_request)
        await self.client.subscribe(t.all_client_reloads(), self._on_reload_request)
        if self.config.upstream is not None:
            await self.client.subscribe(t.bridge_state(), self._on_bridge_state)
            await self.client.subscribe(t.robot_probe(), self._on_probe, qos=0)
            if self.config.upstream.signed_config:
                await self.client.subscribe(t.upstream_config(), self._on_signed_config)

    async def start(self) -> None:
        await self.status_link.start()
        await self.watch.start(wait=False)  # until it connects, nobody is judged on heartbeats (heard_until)
        await super().start()
        mon = self.config.monitoring
        if mon.metrics is not None:
            self.metrics = MetricsEndpoint(self, mon.metrics.host, mon.metrics.port)
            await self.metrics.start()
        if mon.home_assistant:
            for topic, payload in home_assistant_discovery(self):
                self.client.publish_nowait(topic, payload, qos=1, retain=True)
        self.spawn(self._status_loop(), "status")
        self.spawn(self._pulse_loop(), "liveness-report")
        self._supervise()
        if self.config.upstream is not None:
            self.spawn(self._probe_loop(), "upstream-probe")
        self._status_dirty.set()

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        if self.metrics is not None:
            self.metrics.close()
        await super().close()
        await self.watch.close()
        await self.status_link.close()

    # -- supervision ------------------------------------------------------------------------------
    def _on_any_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        if part is None or part == self.name or part not in self.liveness:
            return
        got = self.trusted(msg, PartState)
        if got is None:
            return
        self.liveness.on_state(part, got[0], got[1])  # (its children's own subscriptions feed children_liveness)

    def _on_any_heartbeat(self, msg: Message) -> None:
        """Every part's heartbeat, read in batches on the supervision connection (``watch``)."""
        part = self.topics.part_of(msg.topic)
        if part is None:
            return
        got = self.heartbeat_body(msg)
        if got is None:
            return
        birth, sent = got
        if part == self.name:
            if birth == self.client.birth and sent is not None:
                # our own heartbeat, sent at `sent` (our uptime): what was published before then reached us
                ago = time.monotonic() - (self._started_mono + sent)
                self._watch_proven_at = max(self._watch_proven_at, time.time() - max(0.0, ago))
            return
        if part not in self.liveness:
            return
        self.liveness.on_heartbeat(part, birth, sent=sent)
        if part in self.children_liveness:
            self.children_liveness.on_heartbeat(part, birth, sent=sent)

    async def _on_watch_connect(self, birth: int) -> None:
        if self.watch.connections > 1:  # we heard nobody's heartbeats while it was down: that says nothing
            now = time.time()
            self.liveness.resync(now)
            self.children_liveness.resync(now)

    def follow_children(self) -> None:
        """The primary hears its children's heartbeats all along (on ``watch``)."""

    def followed_parts(self) -> set[str] | None:
        """The primary reads every part's state."""
        return None

    def heard_until(self) -> float:
        """As :meth:`Part.heard_until`, and no later than what the supervision connection proves: the
        echo of our own heartbeats on it, plus a period and a half."""
        return min(super().heard_until(), self._watch_proven_at + 1.5 * self.part_config.heartbeat_s)

    def _supervise(self) -> None:
        """Judge every part's silence: after each batch of heartbeats read (``watch``), and at least every
        half of the shortest heartbeat period (a timer re-armed here: no wake-up of its own while
        heartbeats arrive)."""
        if self._supervisor is not None:
            self._supervisor.cancel()
        self._supervisor = None
        if self._closing:
            return
        self._supervisor = asyncio.get_running_loop().call_later(self._supervise_period, self._supervise)
        if not (self.client.is_connected and self._link_ok and self.watch.is_connected):
            return  # we hear nobody while we are cut off: that says nothing about them
        heard = self.heard_until()  # silence after that may be our own link's
        for part in self.liveness.check_timeouts(heard):
            log.warning("primary: %s missed its heartbeats: offline", part)
        self.children_liveness.check_timeouts(heard)
        if self._resync_until and time.monotonic() >= self._resync_until:
            self._resync_until = 0.0
            self._status_dirty.set()

    def _on_change(self, part: str, new: PartStatus, old: PartStatus | None) -> None:
        if old is not None and old.online and not new.online:
            log.warning("primary: part %s offline (%s)", part, new.reason or new.state)
        self._status_dirty.set()

    def robot_status(self) -> RobotStatus:
        parts = self.liveness.snapshot()
        parts[self.name] = PartStatus(state=self.state, online=True, birth=self.client.birth, since=time.time(),
                                      pid=None)
        state = self._robot_state
        if state in ("starting", "running", "degraded", "resyncing"):
            if self._resync_until:
                state = "resyncing"
            elif all(p.online and p.state == PartStateName.RUNNING for p in parts.values()):
                state = "running"
            elif any(p.birth and not p.online for p in parts.values()):
                state = "degraded"
            else:
                state = "starting"
            self._robot_state = state
        return RobotStatus(robot=self.config.robot, primary=self.name, state=state, parts=parts,
                           upstream=self.upstream, at=time.time())

    async def _pulse_loop(self) -> None:
        """``robot/liveness`` every PULSE_S: the heartbeat age and jitter of every part, for the people watching
        (the retained status changes only when a part comes or goes)."""
        while True:
            await asyncio.sleep(PULSE_S)
            if self.client.is_connected:
                # a plain dict of LivenessReport's shape (built every second: no pydantic on the way out)
                body = {"at": time.time(), "parts": self.liveness.pulse_dict()}
                self.client.publish_nowait(self.topics.robot_liveness(),
                                           encode(self.sender, body, birth=self.client.birth, seq=self._seq.next()),
                                           qos=0)
                self.mirror(self.topics.robot_liveness(), body)

    async def _status_loop(self) -> None:
        """Publish the status after every change, at most every STATUS_MIN_INTERVAL_S: changes that come
        together (50 parts stopping) make one publication, not fifty."""
        while True:
            await self._status_dirty.wait()
            await asyncio.sleep(STATUS_MIN_INTERVAL_S)
            self._status_dirty.clear()
            await self.publish_status()

    async def publish_status(self) -> None:
        if not self.client.is_connected:
            return  # published again on reconnect; a view from while we were cut off would be stale
        body = self.robot_status()
        with contextlib.suppress(Exception):
            await self.status_link.publish(self.topics.robot_status(), self.encode(body), qos=1,
                                           retain=True, timeout=2.0)
        self.mirror(self.topics.robot_status(), body, retain=True)

    async def publish_state(self, state: PartStateName, reason: str | None = None) -> None:
        await super().publish_state(state, reason)
        self._status_dirty.set()

    async def _on_connect(self, birth: int) -> None:
        if self.client.connections > 1:
            # back from an outage: rebuild the view from what we hear now instead of announcing that every
            # part went silent while we were away (they may all be fine)
            self.liveness.resync(time.time())
            self.children_liveness.resync(time.time())
            longest = max((self.config.part(p).heartbeat_s * self.config.part(p).heartbeat_misses
                           for p in self.topology.parts), default=1.0)
            self._resync_until = time.monotonic() + longest
            await self._publish_upstream()
            if self.timeline is not None:
                with contextlib.suppress(Exception):
                    await self.client.publish(self.topics.robot_timeline(), self.encode(self.timeline), qos=1,
                                              retain=True, timeout=2.0)
        await super()._on_connect(birth)
        self._status_dirty.set()

    # -- requests from clients --------------------------------------------------------------------
    def _client_request(self, msg: Message, model: type[R]) -> tuple[str, R] | None:
        """A request published by an operator (or `up`) on its own topic; None (counted) otherwise."""
        client = self.topics.client_of(msg.topic)
        if msg.retain:  # kept by the broker from an earlier run: it would shut the robot down at every start
            self.refusals.refuse("request:retained", msg.topic, message=msg)
            return None
        got = self.trusted(msg, model)
        if client is None or got is None:
            return None
        roles = {c.name: c.role for c in self.config.clients}
        if not self.config.security.insecure and client != LAUNCHER_CLIENT and roles.get(client) != \
                ClientRole.OPERATOR:
            self.refusals.refuse("request:not_an_operator", msg.topic, message=msg)
            return None
        return client, got[1]

    def _on_shutdown_request(self, msg: Message) -> None:
        got = self._client_request(msg, ShutdownRequest)
        if got is not None:
            log.info("primary: shutdown requested by client %s: %s", got[0], got[1].reason)
            self.request_stop(f"requested by client {got[0]}: {got[1].reason}")

    def _on_reload_request(self, msg: Message) -> None:
        got = self._client_request(msg, ReloadRequest)
        if got is not None:
            self.spawn(self.reload(f"requested by client {got[0]}: {got[1].reason}"), "reload")

    # -- sessions end robot-wide ------------------------------------------------------------------
    def _remember_connections(self, public: str, owner: str, client_ids: list[str]) -> None:
        self._connections[public] = (owner, client_ids[:16])
        while len(self._connections) > 10_000:
            self._connections.pop(next(iter(self._connections)))

    def end_robot_wide(self, public: str, reason: str, kind: str) -> None:
        """End session ``public`` everywhere, bottom-up (idempotent): sub-parts stop what it owned and
        report; then the primary stops its own, says ``ended``, and closes the owner's connections.

        A session the primary knows (it opened it, or tracks it) is always ended.  One it does not know
        (opened before a restart of the primary) is ended robot-wide only while fewer than
        :data:`MAX_UNKNOWN_ENDS` such ends are under way: each costs a conversation with every part, and a
        flood of made-up session ids (a part's leaked credential) must not cost the robot its primary.
        The parts that track such a session end it themselves anyway, at the end of their grace."""
        if public in self._ending or public == ALL_SESSIONS:
            return
        if self.sessions.find(public) is None and public not in self._connections:
            if len(self._unknown_ending) >= MAX_UNKNOWN_ENDS:
                self.refusals.refuse("session_end:too_many_unknown", detail=f"session {public[:8]}")
                return
            self._unknown_ending.add(public)
        self._ending[public] = self.spawn(self._end_robot_wide(public, reason, kind), f"end-session[{short(public)}]")

    async def _end_robot_wide(self, public: str, reason: str, kind: str) -> None:
        try:
            t = self.sessions.find(public)
            owner = t.owner if t else self._connections.get(public, ("", []))[0]
            why = f"{kind}: {reason}" if kind not in reason else reason
            # the decision first (expired, closed, ended by hand), then each part's "stopped", then "ended"
            self.sessions._event(kind, t, [], reason=why, public=public, owner=owner)
            rep = await self.end_session(public, why, uuid.uuid4().hex[:12], kind)
            self.sessions._event("ended", t, rep.stopped, detail="; ".join(rep.errors)[:2000], reason=why,
                                 public=public, owner=owner)
            await self._disconnect_owner(public, why)
        finally:
            self._unknown_ending.discard(public)
        await asyncio.sleep(60)  # remember it a while: late reports of the same end start nothing new
        self._ending.pop(public, None)

    async def _disconnect_owner(self, public: str, reason: str) -> None:
        owner, client_ids = self._connections.pop(public, ("", []))
        kind, _, name = owner.partition("/")
        if kind != "client" or not client_ids:
            return
        body = AdminDisconnect(username=ClientId(self.config.robot, name).username, client_ids=client_ids,
                               reason=reason[:500])
        with contextlib.suppress(Exception):
            await self.status_link.publish(self.topics.robot_admin("disconnect"), self.encode(body), qos=1,
                                           timeout=2.0)

    # -- the upstream link ------------------------------------------------------------------------
    def _on_bridge_state(self, msg: Message) -> None:
        """``1``/``0`` from mosquitto's bridge notifications (or ours): raw, not an envelope.  A ``0`` (the
        bridge's connection failed) is believed at once; ``1`` waits for the probe's echo."""
        raw = msg.payload.strip()
        if raw not in (b"0", b"1"):
            self.refusals.refuse("bridge:bad_state", msg.topic, message=msg)
            return
        self._bridge_connected = raw == b"1"
        if not self._bridge_connected:
            self._set_upstream("down", "the bridge's connection to the upstream failed")

    def _on_probe(self, msg: Message) -> None:
        """Each probe arrives twice while the link works: from the local broker, then back from the upstream."""
        got = self.trusted(msg, Heartbeat)
        if got is None:
            return
        n = int(got[1].uptime_s)
        seen = self._probes.get(n, 0) + 1
        self._probes[n] = seen
        if seen >= 2:
            self._probe_echoed = time.monotonic()
            if self._bridge_connected is not False:
                self._set_upstream("up", "the upstream echoes the robot's probe")

    async def _probe_loop(self) -> None:
        assert self.config.upstream is not None
        keepalive = self.config.upstream.keepalive_s
        period = max(0.1, keepalive / 4)
        n = 0
        while True:
            await asyncio.sleep(period)
            if not self.client.is_connected:
                continue
            n += 1
            self._probes = {k: v for k, v in self._probes.items() if k > n - 64}
            # the counter rides in a Heartbeat body (a bounded float): nothing secret, nothing large
            self.client.publish_nowait(self.topics.robot_probe(), self.encode(Heartbeat(uptime_s=float(n))), qos=0)
            silent = time.monotonic() - self._probe_echoed
            if silent > 1.5 * keepalive and self.upstream == "up":
                self._set_upstream("down", f"no echo of the robot's probe through the upstream for {silent:.1f} s")

    def _set_upstream(self, new: str, reason: str) -> None:
        if new == self.upstream:
            return
        was, self.upstream, self._upstream_since = self.upstream, new, time.time()
        self._upstream_reason = reason
        rule = ""
        if new == "down" and was == "up":  # a loss: the link was up (a link never up yet loses nothing)
            if self.config.sessions.default_management:
                rule = "stopped"
                log.warning("primary: the upstream link is down: ending every session and stopping every actuator")
                self.spawn(self.halt_robot("the upstream (cloud) link is down"), "upstream-halt")
            else:
                rule = "nothing"
                log.warning("primary: the upstream link is down; default management is off: the robot keeps "
                            "working on its local network")
        elif new == "up":
            log.info("primary: the upstream link is up again (nothing starts moving by itself)")
        self.spawn(self._publish_upstream(rule), "upstream-state")
        self._status_dirty.set()

    async def _publish_upstream(self, rule: str = "") -> None:
        if self.config.upstream is None:
            return
        body = UpstreamState(state=self.upstream, since=self._upstream_since, rule=rule,
                             reason=self._upstream_reason)
        with contextlib.suppress(Exception):
            await self.client.publish(self.topics.robot_upstream(), self.encode(body), qos=1, retain=True,
                                      timeout=2.0)
        self.mirror(self.topics.robot_upstream(), body, retain=True)

    async def halt_robot(self, reason: str) -> None:
        """End every session and stop every actuator of the robot, bottom-up; every part keeps running."""
        rep = await self.halt(reason, uuid.uuid4().hex[:12], end_sessions=True)
        for public in list(self._connections):
            await self._disconnect_owner(public, reason)
        log.warning("primary: robot halted (%s): stopped %s%s", reason, rep.stopped,
                    f"; errors: {rep.errors}" if rep.errors else "")

    # -- the fleet's signed configuration -------------------------------------------------------------
    def _on_signed_config(self, msg: Message) -> None:
        """A configuration from the upstream: believed only with the fleet's signature, for this robot,
        newer than the one we have; validated like a file, cached beside it, then the robot reloads."""
        from orchestrator.config.loader import parse_config
        from orchestrator.errors import ConfigError
        from orchestrator.resources.registry import check_models, with_plugin_dependencies
        from orchestrator.security.access import store_for
        from orchestrator.security.signed import (
            FLEET_PUBLIC_KEY,
            SignatureInvalid,
            SignedConfig,
            cache_paths,
            read_cache,
            verify,
            write_cache,
        )

        if not msg.payload:
            return  # a cleared retained message
        try:
            public = store_for(self.config, self.loaded.path, self.credentials).path(FLEET_PUBLIC_KEY).read_bytes()
            signed = SignedConfig.from_json(msg.payload)
            verify(signed, public, self.config.robot)
        except (OSError, SignatureInvalid) as exc:
            self.refusals.refuse("config:not_believed", msg.topic, str(exc)[:200])
            return
        have = read_cache(self.loaded.path, public, self.config.robot)
        if have is not None and signed.serial <= have.serial:
            if signed.serial < have.serial:
                self.refusals.refuse("config:older", msg.topic, f"serial {signed.serial} < {have.serial}")
            return
        try:
            parse_config(signed.config, str(cache_paths(self.loaded.path)[0]), model_check=check_models,
                         enrich=with_plugin_dependencies)
        except ConfigError as exc:
            self.refusals.refuse("config:invalid", msg.topic, str(exc)[:200])
            return
        write_cache(self.loaded.path, signed)
        log.warning("primary: the fleet's configuration serial %d is cached; reloading the robot", signed.serial)
        self.spawn(self.reload(f"the fleet's configuration serial {signed.serial}"), "signed-config-reload")

    # -- shutdown ---------------------------------------------------------------------------------
    async def shutdown(self, reason: str) -> TimelineEntry:
        if self._shutdown_started_at is None:
            self._shutdown_started_at = self._asked_at or time.time()
            self._shutdown_id = self._shutdown_id or uuid.uuid4().hex[:12]
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
        self.mirror(self.topics.robot_timeline(), self.timeline, retain=True)
        await self.publish_status()
