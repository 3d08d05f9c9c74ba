"""The bridge to the robot's upstream (cloud) broker, for the embedded broker (mosquitto has its own).

It behaves like mosquitto's bridge configured by ``orchestrator broker-config`` (same topics both
ways, same link-state notifications), so the robot does not care which broker it runs on:

- **out** (local -> upstream): the robot's public picture (part states and resources, telemetry,
  session events, robot status, timeline, notices, upstream state) and the replies to remote clients;
- **in** (upstream -> local): the topics of remote clients (``client/<r>/#`` for clients marked
  ``remote: true``) and the robot's signed configuration (``upstream/config``);
- **link state**: ``1``/``0`` retained on ``bridge/state``, locally (the primary applies the rule of
  ``sessions.default_management``) and upstream (the bridge's Will there says ``0``, so remote clients
  see the robot go offline when the link dies).

Whether the upstream still carries what the robot sends is the primary's question: its probe
(``robot/probe``) is bridged out and back in, by this bridge as by mosquitto's (``topic ... both``),
and a probe without an echo for 1.5 x the upstream keep-alive means the link is down, whatever the
TCP connection still claims.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.config.models import RobotConfig
from orchestrator.protocol.topics import BridgeId, Topics
from orchestrator.security.access import Access, store_for
from orchestrator.transport.client import Message, MqttClient, Will, private_client_id

log = logging.getLogger("orchestrator.bridge")

UPSTREAM_SECRET = "upstream.secret"


def out_topics(config: RobotConfig) -> list[str]:
    """Local topics copied to the upstream broker."""
    t = Topics(config.robot)
    out = [t.all_part_states(), t.all_part_resources(), t.all_telemetry(), t.all_session_events(),
           t.robot_status(), t.robot_timeline(), t.robot_notice(), t.robot_upstream()]
    out += [t.replies_to(f"client/{c.name}") for c in config.clients if c.remote]
    return out


def in_topics(config: RobotConfig) -> list[str]:
    """Upstream topics copied into the local broker."""
    t = Topics(config.robot)
    return [f"{t.of('client/' + c.name)}/#" for c in config.clients if c.remote] + [t.upstream_config()]


def both_topics(config: RobotConfig) -> list[str]:
    """Topics copied both ways: the primary's probe goes out and its echo comes back."""
    return [Topics(config.robot).robot_probe()]


def upstream_username(config: RobotConfig) -> str:
    assert config.upstream is not None
    return config.upstream.username or config.robot


class UpstreamBridge:
    def __init__(self, config: RobotConfig, config_path: Path, local_urls: list[tuple[str, int]], *,
                 credentials: str | Path | None = None) -> None:
        assert config.upstream is not None
        self.config = config
        self.topics = Topics(config.robot)
        up = config.upstream
        self.keepalive_s = up.keepalive_s
        access = Access.of(config, config_path, BridgeId(config.robot), credentials)
        self.local = MqttClient(private_client_id(f"{config.robot}.bridge.local"), local_urls,
                                keepalive=config.broker.keepalive_s, username=access.username,
                                password=access.password, tls=access.tls)
        parts = urlsplit(up.url)
        password = None if config.security.insecure else store_for(config, config_path, credentials)._read(
            UPSTREAM_SECRET, "password of the robot on its upstream broker")
        self.remote = MqttClient(private_client_id(f"{config.robot}.bridge"),
                                 [(parts.hostname or "127.0.0.1", parts.port or 1883)],
                                 keepalive=up.keepalive_s, username=upstream_username(config), password=password,
                                 will=self._will, connect_timeout=3600.0, reconnect_max_s=2.0)
        self.state = "unknown"
        self.since = time.time()
        self.forwarded_out = 0
        self.forwarded_in = 0
        self._came_in: collections.deque[bytes] = collections.deque(maxlen=64)  # echoes: never sent out again

    def _will(self, birth: int) -> Will:
        return Will(self.topics.bridge_state(), b"0", qos=1, retain=True)

    async def start(self) -> None:
        for f in out_topics(self.config):
            await self.local.subscribe(f, self._out)
        for f in in_topics(self.config):
            await self.remote.subscribe(f, self._in)
        for f in both_topics(self.config):
            await self.local.subscribe(f, self._out_both, qos=0)
            await self.remote.subscribe(f, self._in_both, qos=0)
        self.remote.on_connect(self._up)
        self.remote.on_disconnect(self._down)
        await self.local.start()
        await self._set_local("0")  # not up until the upstream answers
        await self.remote.start(wait=False)  # the upstream may be unreachable: the robot runs regardless

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.remote.publish(self.topics.bridge_state(), b"0", qos=1, retain=True, timeout=1.0)
        await self.remote.close()
        await self._set_local("0")
        await self.local.close()

    # -- forwarding ----------------------------------------------------------------------------------
    def _out(self, msg: Message) -> None:
        if self.remote.is_connected:
            self.remote.publish_nowait(msg.topic, msg.payload, qos=min(msg.qos, 1), retain=msg.retain)
            self.forwarded_out += 1

    def _in(self, msg: Message) -> None:
        self.local.publish_nowait(msg.topic, msg.payload, qos=min(msg.qos, 1), retain=msg.retain)
        self.forwarded_in += 1

    def _out_both(self, msg: Message) -> None:
        if msg.payload in self._came_in:  # what came in must not go out again (no loop)
            self._came_in.remove(msg.payload)
            return
        self._out(msg)

    def _in_both(self, msg: Message) -> None:
        self._came_in.append(msg.payload)
        self._in(msg)

    # -- link state ----------------------------------------------------------------------------------
    async def _set_local(self, value: str) -> None:
        with contextlib.suppress(Exception):
            await self.local.publish(self.topics.bridge_state(), value.encode(), qos=1, retain=True, timeout=2.0)

    async def _up(self, birth: int) -> None:
        await self.remote.publish(self.topics.bridge_state(), b"1", qos=1, retain=True, timeout=5.0)
        # the retained picture of the robot, once more: the upstream may have lost it (or never had it)
        await self._resend_retained()
        self._set_state("up")
        await self._set_local("1")

    async def _resend_retained(self) -> None:
        """Subscribing again makes the local broker send every retained message once more [MQTT-3.8.4-3]."""
        for f in out_topics(self.config):
            await self.local.unsubscribe(f)
            await self.local.subscribe(f, self._out)

    async def _down(self, reason: str) -> None:
        if self.state != "down":
            self._set_state("down", reason)
            await self._set_local("0")

    def _set_state(self, state: str, reason: str = "") -> None:
        if state != self.state:
            log.warning("upstream link %s%s", state, f" ({reason})" if reason else "")
            self.state, self.since = state, time.time()
