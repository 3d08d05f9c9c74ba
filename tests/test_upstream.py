"""The upstream (cloud) link: a robot bridged to an upstream broker, on the embedded broker (our bridge in
`up`) and on mosquitto (its own bridge, configured as `orchestrator broker-config` writes it).

The link runs through a fault proxy, so a test can make it silent (stall: half-open, as a dead
uplink) and bring it back.  Default management: losing the link ends every session and stops every
actuator, and nothing starts again on return.  ``default_management: false``: a local client keeps
driving the robot for as long as the link is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from brokers import free_port, start_mosquitto
from faultproxy import FaultProxy
from robot import CLIENTS, RobotSetup, Up, robot_setup

from orchestrator import Motor, SessionExpired
from orchestrator.client import RobotClient
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import UpstreamState
from orchestrator.transport.client import MqttClient

KINDS = ["amqtt", "mosquitto"]
KEEPALIVE = 1
PARTS: list[dict[str, Any]] = [
    {"name": "main", "heartbeat_s": 0.1, "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
    {"name": "base", "parent": "main", "heartbeat_s": 0.1, "resources": [{"name": "left", "model": "orc:sim:motor"}]},
]


@dataclass
class Cloud:
    setup: RobotSetup
    proxy: FaultProxy
    upstream: tuple[str, int]
    up: Up | None


@contextlib.contextmanager
def cloud_robot(kind: str, tmp: Path, **top: Any) -> Iterator[Cloud]:
    """A robot whose upstream link goes through a fault proxy to an upstream mosquitto (the fleet broker)."""
    up_port = free_port()
    with FaultProxy(("127.0.0.1", up_port)) as proxy:
        host, port = proxy.address
        clients = [*CLIENTS, {"name": "alice", "remote": True}]
        upstream = {"url": f"mqtt://{host}:{port}", "keepalive_s": KEEPALIVE}
        with robot_setup(kind, tmp / "robot.yaml", PARTS, upstream=upstream, clients=clients, **top) as setup:
            robot = setup.robot
            secret = (setup.loaded.path.parent / ".orchestrator" / robot / "credentials" / "upstream.secret")
            alice = setup.access("client", "alice")
            assert alice.username is not None and alice.password is not None
            passwords = {robot: secret.read_text().strip(), alice.username: alice.password}
            with start_mosquitto(up_port, passwords=passwords):
                up = Up(setup.cfg, tmp)
                try:
                    yield Cloud(setup, proxy, ("127.0.0.1", up_port), up)
                finally:
                    up.close()


class LinkWatch:
    """The robot's retained upstream state, as a local observer sees it."""

    def __init__(self, setup: RobotSetup) -> None:
        access = setup.access("client", "watcher")
        self.client = MqttClient(f"{setup.robot}.linkwatch", [setup.where], username=access.username,
                                 password=access.password, connect_timeout=15)
        self.topic = setup.watcher().topics.robot_upstream()
        self.state: UpstreamState | None = None
        self.changed = asyncio.Event()

    def _on(self, msg: Any) -> None:
        self.state = decode(msg.payload).parse(UpstreamState)
        self.changed.set()

    async def __aenter__(self) -> LinkWatch:
        await self.client.subscribe(self.topic, self._on)
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def until(self, state: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.state is None or self.state.state != state:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"upstream never became {state!r} (now {self.state})"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return time.monotonic()


async def until(cond: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)  # polling a remote state through calls: no event to await
    return time.monotonic()


@contextlib.asynccontextmanager
async def operator(cloud: Cloud, **kw: Any) -> AsyncIterator[RobotClient]:
    async with RobotClient.from_config(cloud.setup.loaded, urls=[cloud.setup.where], connect_timeout=15,
                                       **kw) as client:
        yield client


async def running(cloud: Cloud) -> None:
    async with cloud.setup.watcher() as w:
        await w.all_running([p["name"] for p in PARTS])


# the bound on noticing a silent uplink: 1.5 x the bridge keep-alive (our bridge's echo; mosquitto's
# keep-alive check), plus the primary's reaction and the stop, plus a margin for a busy machine
LOSS_BOUND_S = 1.5 * KEEPALIVE + 3.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_losing_the_upstream_ends_every_session_and_stops_every_actuator(tmp_path: Path, kind: str) -> None:
    with cloud_robot(kind, tmp_path) as cloud:
        await running(cloud)
        async with LinkWatch(cloud.setup) as link, operator(cloud) as client:
            await link.until("up", 30)
            motor = client.resource("base/left", Motor)
            await motor.set_power(0.5)
            assert await motor.is_moving()
            cloud.proxy.stall()  # the uplink goes silent (half-open), as a dead cable or a lost modem
            t0 = time.monotonic()
            t_down = await link.until("down", LOSS_BOUND_S + 5)
            assert link.state is not None and link.state.rule == "stopped"
            async with operator(cloud, sessions=False, identity="other") as other:
                stopped = await until(lambda: _not(other.resource("base/left", Motor).is_moving()), 5,
                                      "the motor to stop after the upstream loss")
                assert stopped - t0 < LOSS_BOUND_S + 1.0, f"stopped {stopped - t0:.2f} s after the link died"
                # the session ended robot-wide: the SDK was told, and the next call in it says so
                await until(lambda: _true(client.session is not None and client.session.ended is not None), 5,
                            "the SDK to learn its session ended")
                with pytest.raises(SessionExpired):
                    await motor.set_power(0.2)
                # the parts keep running and talking to each other locally
                assert await other.call("main/health", "get_readings") is not None
                # the link comes back: noticed, published, and nothing starts moving by itself
                cloud.proxy.resume()
                await link.until("up", 30)
                assert not await other.resource("base/left", Motor).is_moving()
            await client.renew_session()  # a new session drives the robot again
            await motor.set_power(0.3)
            assert await motor.is_moving()
            assert t_down - t0 < LOSS_BOUND_S + 2.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_with_default_management_off_a_local_client_keeps_driving_without_the_upstream(
        tmp_path: Path, kind: str) -> None:
    with cloud_robot(kind, tmp_path, sessions={"default_management": False}) as cloud:
        await running(cloud)
        async with LinkWatch(cloud.setup) as link, operator(cloud) as client:
            await link.until("up", 30)
            motor = client.resource("base/left", Motor)
            await motor.set_power(0.5)
            cloud.proxy.stall()
            await link.until("down", LOSS_BOUND_S + 5)
            assert link.state is not None and link.state.rule == "nothing"
            end = time.monotonic() + 3.0  # as long as the link is down, the local client drives on
            while time.monotonic() < end:
                assert await motor.is_moving(), "the motor stopped although default management is off"
                await motor.set_power(0.5)
                await asyncio.sleep(0.1)
            assert client.session is not None and client.session.alive
            cloud.proxy.resume()
            await link.until("up", 30)
            assert await motor.is_moving()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_a_remote_client_drives_through_the_upstream_and_sees_the_robot_go_offline(
        tmp_path: Path, kind: str) -> None:
    with cloud_robot(kind, tmp_path) as cloud:
        await running(cloud)
        async with LinkWatch(cloud.setup) as link:
            await link.until("up", 30)
            async with RobotClient.from_config(cloud.setup.loaded, identity="alice", urls=[cloud.upstream],
                                               connect_timeout=15) as remote:
                motor = remote.resource("base/left", Motor)
                await motor.set_power(0.4)  # through the upstream broker and the bridge, both ways
                assert await motor.get_power() == 0.4
                # on the upstream side the robot's availability is the bridge's link state (its Will there)
                seen: list[bytes] = []
                got = asyncio.Event()

                def on_state(msg: Any) -> None:
                    seen.append(msg.payload)
                    got.set()

                await remote.mqtt.subscribe(remote.topics.bridge_state(), on_state)
                while not seen or seen[-1] != b"1":
                    got.clear()
                    await asyncio.wait_for(got.wait(), 10)
                cloud.proxy.stall()
                deadline = time.monotonic() + 15  # the upstream broker's own keep-alive check of the bridge
                while seen[-1] != b"0":
                    got.clear()
                    await asyncio.wait_for(got.wait(), max(0.1, deadline - time.monotonic()))
                cloud.proxy.resume()


async def _not(aw: Any) -> bool:
    return not await aw


async def _true(v: bool) -> bool:
    return v
