"""A robot bridged to an upstream (fleet) broker through a fault proxy, for the upstream and offline tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers import free_port, start_mosquitto
from faultproxy import FaultProxy
from robot import CLIENTS, RobotSetup, Up, robot_setup

from orchestrator.client import RobotClient
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import UpstreamState
from orchestrator.transport.client import MqttClient

KEEPALIVE = 1
FLEET_USER, FLEET_PASSWORD = "fleet-ops", "fleet-ops-password"  # who publishes signed configurations upstream
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
def cloud_robot(kind: str, tmp: Path, parts: list[dict[str, Any]] | None = None, *, upstream: dict[str, Any] | None
                = None, start: bool = True, **top: Any) -> Iterator[Cloud]:
    """A robot whose upstream link goes through a fault proxy to an upstream mosquitto (the fleet broker)."""
    up_port = free_port()
    with FaultProxy(("127.0.0.1", up_port)) as proxy:
        host, port = proxy.address
        clients = [*CLIENTS, {"name": "alice", "remote": True}]
        link = {"url": f"mqtt://{host}:{port}", "keepalive_s": KEEPALIVE, **(upstream or {})}
        with robot_setup(kind, tmp / "robot.yaml", parts or PARTS, upstream=link, clients=clients, **top) as setup:
            robot = setup.robot
            secret = (setup.loaded.path.parent / ".orchestrator" / robot / "credentials" / "upstream.secret")
            alice = setup.access("client", "alice")
            assert alice.username is not None and alice.password is not None
            passwords = {robot: secret.read_text().strip(), alice.username: alice.password, FLEET_USER: FLEET_PASSWORD}
            with start_mosquitto(up_port, passwords=passwords):
                cloud = Cloud(setup, proxy, ("127.0.0.1", up_port), Up(setup.cfg, tmp) if start else None)
                try:
                    yield cloud
                finally:  # whatever `up` the test ended with (it may start its own)
                    if cloud.up is not None:
                        cloud.up.close()


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


