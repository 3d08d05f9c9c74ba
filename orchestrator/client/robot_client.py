"""``RobotClient``: the Python SDK.  Calls resources over MQTT, one broker round trip each way.

    async with RobotClient.from_config("examples/rover.yaml") as robot:
        motor = robot.resource("base/left", Motor)
        await motor.set_power(0.3)
        print(await motor.get_position())

A proxy subclasses the resource's own abstract base (``isinstance(motor, Motor)``), so code written
for a local motor runs unchanged against a remote one.  Errors come back as the same exception
types a local call raises (see :mod:`orchestrator.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.config.loader import LoadedConfig, load_config
from orchestrator.errors import BrokerUnavailable, ConfigError, ConnectionLost, ProtocolError
from orchestrator.protocol.codec import decode, encode
from orchestrator.protocol.messages import (
    Notice,
    PartResources,
    RobotStatus,
    SessionEvent,
    ShutdownRequest,
    TelemetryReading,
)
from orchestrator.protocol.topics import ClientId, Topics
from orchestrator.resources.base import Resource
from orchestrator.rpc.client import RpcClient
from orchestrator.security.access import Access
from orchestrator.transport.client import Message, MqttClient, TlsSettings, private_client_id

from .proxy import make_proxy
from .sessions import ClientSessions, Session

R = TypeVar("R", bound=Resource)
T = TypeVar("T")


class RobotClient:
    def __init__(
        self,
        robot: str,
        urls: list[tuple[str, int]],
        *,
        name: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 10.0,
        sessions: bool = True,
        primary: str | None = None,
        tls: TlsSettings | None = None,
        fail_fast: bool = False,
        subscribe_qos: int = 1,
    ) -> None:
        self.id = ClientId(robot, name or f"sdk-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        self.topics = Topics(robot, primary)
        # the identity is the broker username; the MQTT client id is unique per connection, so several
        # processes can act as the same identity without taking each other's connection over, and
        # unguessable, so that no other identity can take it (or its heartbeat connection) over either
        self.mqtt = MqttClient(private_client_id(f"{robot}.client.{self.id.name}"), urls, username=username,
                               password=password, connect_timeout=connect_timeout, tls=tls,
                               fail_fast=fail_fast, max_subscribe_qos=subscribe_qos)
        self.rpc = RpcClient(self.mqtt, self.topics, self.id.sender, default_timeout=timeout)
        self.robot_down = asyncio.Event()
        self.notices: list[Notice] = []
        self.use_sessions = sessions
        self._primary = primary
        self.sessions = ClientSessions(self)
        self.session: Session | None = None
        self.dropped = 0  # messages of a subscription (telemetry, events) that were not the part's own

    @classmethod
    def from_config(cls, config: str | Path | LoadedConfig, *, identity: str | None = None,
                    credentials: str | Path | None = None, **kwargs: Any) -> RobotClient:
        """A client of the robot a config file describes, as ``identity`` (default: its first operator),
        with that identity's password from the robot's credentials directory."""
        # a client needs the robot, its broker and its identities, not the models: no plugin needed
        loaded = config if isinstance(config, LoadedConfig) else load_config(config, check_models=False)
        cfg = loaded.config
        name = identity or kwargs.pop("name", None) or cfg.default_client()
        if name is None:
            raise ConfigError(f"{loaded.path}: the robot has no operator client identity (see 'clients')")
        if not cfg.security.insecure and name not in {c.name for c in cfg.clients}:
            raise ConfigError(f"{loaded.path}: no client identity {name!r} (clients: "
                              f"{', '.join(c.name for c in cfg.clients)})")
        access = Access.of(cfg, loaded.path, ClientId(cfg.robot, name), credentials)
        kwargs.setdefault("username", access.username)
        kwargs.setdefault("password", access.password)
        kwargs.setdefault("tls", access.tls)
        kwargs.setdefault("primary", loaded.topology.primary)
        kwargs.setdefault("subscribe_qos", cfg.broker.subscribe_qos)
        return cls(cfg.robot, kwargs.pop("urls", None) or cfg.broker.client_urls(), name=name, **kwargs)

    @classmethod
    def at(cls, robot: str, broker: str, *, identity: str = "operator", credentials: str | Path | None = None,
           password: str | None = None, **kwargs: Any) -> RobotClient:
        """A client of ``robot`` on ``broker`` (``mqtt://host:port``, comma separated for fail-over), with no
        configuration file and no plugin installed: proxies are built from the resources' APIs.

        The identity's password is ``password``, else read from the credentials directory
        (``credentials`` or ``$ORCHESTRATOR_CREDENTIALS``: the file ``client.<identity>.secret``); with
        neither, the connection is anonymous (a robot running ``security.insecure``).  An ``mqtts://`` broker
        is verified with ``ca.crt`` of that directory (unless ``tls=`` is given)."""
        from orchestrator.protocol.topics import valid_level
        from orchestrator.runtime.main import parse_urls
        from orchestrator.security.access import access_without_config, is_tls_url_list

        if not valid_level(robot) or not valid_level(identity):
            raise ConfigError(f"robot {robot[:80]!r} / identity {identity[:80]!r}: not a name")
        me = ClientId(robot, identity)
        tls_urls = is_tls_url_list(broker)
        if password is None or tls_urls:
            acc = access_without_config(me, credentials, tls_urls=tls_urls and "tls" not in kwargs)
            if acc.tls is not None:
                kwargs.setdefault("tls", acc.tls)
            password = acc.password if password is None else password
        if password is not None:
            kwargs.setdefault("username", me.username)
            kwargs.setdefault("password", password)
        try:
            urls = parse_urls(broker)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(robot, urls, name=identity, **kwargs)

    async def __aenter__(self) -> RobotClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self.rpc.start()
        await self.mqtt.subscribe(self.topics.robot_notice(), self._on_notice)
        await self.sessions.listen()
        self.sessions.on_end.append(self._session_ended)
        try:
            await self.mqtt.start()
        except BrokerUnavailable as exc:
            raise BrokerUnavailable(f"{exc}{self._refused_hint(str(exc))}") from None
        if self.use_sessions:
            try:
                await self.renew_session()
            except BaseException:
                await self.mqtt.close()
                raise

    async def renew_session(self, window_s: float | None = None) -> Session:
        """Open a new session and make the calls of this client in it (after the robot ended the last)."""
        old = self.session
        if not self.mqtt.is_connected:  # the robot closes a client's connections when it ends its session
            try:
                await asyncio.wait_for(self.mqtt.connected.wait(), self.mqtt.connect_timeout)
            except TimeoutError:
                raise ConnectionLost("not reconnected to the broker: cannot open a new session") from None
        self.session = await self.sessions.open(window_s)
        self.rpc.session = self.session.id
        self.rpc.session_ended = None
        if old is not None and old.alive:
            await asyncio.to_thread(old.close)
        return self.session

    def on_session_end(self, callback: Any) -> None:
        """``callback(session, event)`` when the robot ends one of this client's sessions (event.reason: why)."""
        self.sessions.on_end.append(callback)

    def _session_ended(self, session: Session, event: Any) -> None:
        if self.session is session:
            self.rpc.session_ended = session.ended

    def _refused_hint(self, error: str) -> str:
        """What to check when the broker refused our login (a newcomer's first error on a secured robot)."""
        if "not authori" not in error.lower() and "bad user name" not in error.lower():
            return ""
        if self.mqtt.username is None:
            return (f" (connected anonymously, which only a robot with security.insecure admits: give "
                    f"identity= and credentials=, the directory holding client.{self.id.name}.secret, or password=)")
        return (f" (as {self.mqtt.username}: is the robot named {self.id.robot!r} and is this identity's "
                f"secret the one in its credentials directory?)")

    async def close(self) -> None:
        """Close the session (the robot stops what it owns) and disconnect.  Idempotent."""
        await self.sessions.close_all()
        await self.mqtt.close()

    async def primary_name(self, timeout: float = 5.0) -> str:
        """The primary's name (given, or read from the retained robot status)."""
        if self._primary is None:
            async with self.mqtt.messages(self.topics.robot_status()) as stream:
                msg = await stream.get(timeout=timeout)
            env = decode(msg.payload)
            if not env.src.startswith("part/") or not self.topics.authentic(msg.topic, env.src):
                raise ProtocolError("the retained robot status was not published by a part")
            self._primary = env.parse(RobotStatus).primary
        return self._primary

    def _on_notice(self, msg: Message) -> None:
        with contextlib.suppress(ProtocolError):
            env = decode(msg.payload)
            if not self.topics.authentic(msg.topic, env.src) or msg.retain:
                return  # only the primary publishes notices; a retained one is from an earlier run
            n = env.parse(Notice)
            self.notices.append(n)
            if n.kind == "down":
                self.robot_down.set()

    # -- calls --------------------------------------------------------------------------------------
    def resource(self, path: str, kind: type[R], *, timeout: float | None = None) -> R:
        """A proxy for ``PART/RESOURCE`` implementing ``kind`` (Motor, Base, Sensor, ...)."""
        part, _, name = path.partition("/")
        if not part or not name:
            raise ValueError(f"{path!r}: expected PART/RESOURCE")
        return make_proxy(kind, self.rpc, part, name, timeout)

    async def discover(self, path: str, *, timeout: float | None = None, settle_s: float = 2.0) -> Resource:
        """A proxy for ``PART/RESOURCE`` built from what its part lists (its API and methods): no plugin
        and no kind needed.  A standard API (motor, base, servo, gripper, sensor) gives that base's
        proxy (``isinstance(p, Motor)``); any other, a proxy with the methods the part lists."""
        from orchestrator.errors import UnknownResource
        from orchestrator.resources.base import KINDS
        from orchestrator.resources.types import API

        from .proxy import listed_proxy

        part, _, name = path.partition("/")
        if not part or not name:
            raise ValueError(f"{path!r}: expected PART/RESOURCE")
        async with self.mqtt.messages(self.topics.part_resources(part)) as stream:
            try:
                msg = await stream.get(timeout=settle_s)
            except TimeoutError:
                raise UnknownResource(f"{path}: part {part!r} lists no resources (is it running?)",
                                      resource=path) from None
        entry = next((r for r in self._listing(msg) if r["name"] == name), None)
        if entry is None:
            raise UnknownResource(f"{path}: part {part!r} has no resource {name!r}", resource=path)
        api = entry.get("api")
        if api:
            parsed = API.parse(api)
            kind = KINDS.get(parsed.subtype) if (parsed.namespace, parsed.type) == ("orc", "component") else None
            if kind is not None and parsed.subtype != "generic":  # generic: whatever methods it lists
                return make_proxy(kind, self.rpc, part, name, timeout)
        return listed_proxy(entry.get("methods") or [], self.rpc, part, name, timeout, api or "")

    @contextlib.asynccontextmanager
    async def telemetry(self, path: str = "+/+") -> AsyncIterator[AsyncIterator[tuple[str, dict[str, Any]]]]:
        """The readings a part publishes for ``PART/RESOURCE`` (``+`` for any), as an async iterator of
        (``PART/RESOURCE``, readings)::

            async with robot.telemetry("drive/imu") as readings:
                async for source, values in readings: ...

        Only what the part itself published is yielded; anything else is dropped and counted in
        ``dropped``.  Raises ConnectionLost if the link drops."""
        part, _, name = path.partition("/")
        topic = self.topics.telemetry(part or "+", name or "+")

        def reading(owner: str, env: Any, msg: Message) -> tuple[str, dict[str, Any]]:
            body = env.parse(TelemetryReading)
            return f"{owner}/{body.resource}", body.readings

        async with self.mqtt.messages(topic, qos=0) as stream:
            yield self._from_parts(stream, reading)

    @contextlib.asynccontextmanager
    async def events(self, part: str = "+") -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """What parts report as it happens, as an async iterator of dicts: the part's own events
        (``kind`` link_lost, link_back, reconnect, reload...) and session events (``kind`` opened,
        owned, expired, closed, stopped, ending, ended, with ``session`` and ``resources``), each with
        ``part`` and ``source`` (``part`` or ``sessions``).  Only what the part itself published is yielded."""
        filters = (self.topics.part_events(part), self.topics.session_events(part))

        def event(owner: str, env: Any, msg: Message) -> dict[str, Any]:
            if msg.topic.endswith("/sessions/events"):
                out = {**env.parse(SessionEvent).model_dump(mode="json"), "source": "sessions"}
            else:
                body = env.body if isinstance(env.body, dict) else {}
                out = {k: body.get(k) for k in ("kind", "text", "level", "ts")}
                out["source"] = "part"
                if not isinstance(out["kind"], str):
                    raise ProtocolError("an event without a kind")
            return {**out, "part": owner}

        async with self.mqtt.messages(*filters) as stream:
            yield self._from_parts(stream, event)

    async def _from_parts(self, stream: AsyncIterator[Message], parse: Callable[[str, Any, Message], T]) \
            -> AsyncIterator[T]:
        """``parse(part, envelope, message)`` of each message the part of its topic published itself;
        any other message, or one ``parse`` refuses (ProtocolError), is dropped and counted."""
        async for msg in stream:
            owner = self.topics.part_of(msg.topic)
            try:
                env = decode(msg.payload)
                if owner is None or not self.topics.authentic(msg.topic, env.src):
                    raise ProtocolError("not published by the part")
                item = parse(owner, env, msg)
            except ProtocolError:
                self.dropped += 1
                continue
            yield item

    async def call(self, path: str, method: str, args: dict[str, Any] | None = None, *,
                   timeout: float | None = None) -> Any:
        part, _, name = path.partition("/")
        return await self.rpc.call(part, name, method, args or {}, timeout=timeout)

    async def resources(self, settle_s: float = 0.3) -> dict[str, list[dict[str, Any]]]:
        """What every part hosts, from the retained ``part/+/resources`` topics.

        A listing that cannot be read (malformed, or not published by the part itself) is one row of
        status ``invalid`` saying why: a hostile retained message costs a row, never the whole listing."""
        out: dict[str, list[dict[str, Any]]] = {}
        async with self.mqtt.messages(self.topics.all_part_resources()) as stream:
            while len(out) < 10_000:
                try:
                    m = await stream.get(timeout=settle_s)
                except TimeoutError:
                    break
                part = self.topics.part_of(m.topic)
                if part is not None:
                    out[part] = self._listing(m)
        return out

    def _listing(self, msg: Message) -> list[dict[str, Any]]:
        try:
            env = decode(msg.payload)
            if not self.topics.authentic(msg.topic, env.src):
                raise ProtocolError(f"published by {env.src[:80]!r}, not by the part")
            return [r.model_dump(mode="json") for r in env.parse(PartResources).resources]
        except ProtocolError as exc:
            return [{"name": "-", "model": "-", "status": "invalid",
                     "reason": f"unreadable resource listing: {exc.message[:200]}"}]

    async def shutdown_robot(self, reason: str = "requested by a client") -> None:
        await self.mqtt.publish(self.topics.client_shutdown(self.id.name),
                                encode(self.id.sender, ShutdownRequest(reason=reason)), qos=1, timeout=5.0)
