"""Robots whose parts run inside the test's event loop (fast), on a real broker that enforces the
robot's identities and topic rights (as `orchestrator up` or a deployed mosquitto would)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers import BrokerInfo, start_robot_broker
from robot import unique_robot, write_config

from orchestrator.client import RobotClient
from orchestrator.config import LoadedConfig, load_config
from orchestrator.runtime.main import make_part
from orchestrator.runtime.part import Part

# every test robot has an operator (the CLI and SDK default), a second operator and a read-only observer
CLIENTS = [{"name": "operator"}, {"name": "other"}, {"name": "watcher", "role": "viewer"}]


@dataclass
class InprocRobot:
    loaded: LoadedConfig
    parts: dict[str, Part]
    broker: BrokerInfo

    @property
    def where(self) -> tuple[str, int]:
        return (self.broker.host, self.broker.port)

    def client(self, identity: str | None = None, **kw: Any) -> RobotClient:
        return RobotClient.from_config(self.loaded, identity=identity, **kw)

    def __iter__(self) -> Any:  # `loaded, parts = robot` as the older tuple
        return iter((self.loaded, self.parts))


def robot_config(tmp: Path, parts: list[dict[str, Any]], where: tuple[str, int] | None = None,
                 broker_keepalive_s: int = 2, **top: Any) -> LoadedConfig:
    robot = unique_robot()
    top.setdefault("clients", CLIENTS)
    tls = top.get("broker_tls") is not None
    scheme = "mqtts" if tls else "mqtt"
    url = f"{scheme}://{where[0]}:{where[1]}" if where else f"{scheme}://127.0.0.1:1"
    broker: dict[str, Any] = {"urls": [url], "keepalive_s": broker_keepalive_s}
    if tls:
        broker["tls"] = top.pop("broker_tls")
    cfg = write_config(tmp / f"{robot}.yaml", robot, broker, parts, **top)
    return load_config(cfg)


@contextlib.asynccontextmanager
async def running_robot(tmp: Path, kind: str, parts: list[dict[str, Any]], *, start: bool = True,
                        **top: Any) -> AsyncIterator[InprocRobot]:
    """Start a broker of ``kind`` for a new robot made of ``parts``, then (``start``) every part in start
    order inside this event loop; stop them in stop order at the end."""
    draft = robot_config(tmp, parts, **top)
    with start_robot_broker(kind, draft) as info:
        # the broker's port is known only now: rewrite the broker section, keep the robot (and credentials)
        path = Path(draft.path)
        placeholder = "mqtts://127.0.0.1:1" if info.tls else "mqtt://127.0.0.1:1"
        path.write_text(path.read_text().replace(placeholder, info.url))  # noqa: ASYNC240 - tiny file
        loaded = load_config(draft.path)
        started: dict[str, Part] = {}
        try:
            if start:
                for name in loaded.topology.start_order():
                    p = make_part(loaded, name)
                    await p.start()
                    started[name] = p
            yield InprocRobot(loaded, started, info)
        finally:
            for name in loaded.topology.stop_order():
                if name in started:
                    await asyncio.wait_for(started[name].close(), 10)


@contextlib.asynccontextmanager
async def client_for(loaded: LoadedConfig, **kw: Any) -> AsyncIterator[RobotClient]:
    async with RobotClient.from_config(loaded, **kw) as c:
        yield c
