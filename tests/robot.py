"""Helpers for tests that run whole robots: configs, a wire watcher, `orchestrator up` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from brokers import free_port, make_credentials, start_robot_broker

from orchestrator.config import LoadedConfig, load_config
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import PartState, RobotStatus, Timeline
from orchestrator.protocol.topics import ClientId, Identity, Topics
from orchestrator.security.access import Access
from orchestrator.transport.client import Message, MqttClient

# every test robot has an operator (the CLI and SDK default), a second operator and a read-only observer
CLIENTS = [{"name": "operator"}, {"name": "other"}, {"name": "watcher", "role": "viewer"}]


def unique_robot() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def three_level_parts(**overrides: Any) -> list[dict[str, Any]]:
    """main -> (base -> odo), (arm), (cam): three levels, motors and sensors."""
    parts: list[dict[str, Any]] = [
        {"name": "main", "heartbeat_s": 0.05, "stop_deadline_s": 1.0,
         "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
        {"name": "base", "parent": "main", "heartbeat_s": 0.05, "stop_deadline_s": 1.0,
         "resources": [{"name": "left", "model": "orc:sim:motor"}, {"name": "right", "model": "orc:sim:motor"}]},
        {"name": "odo", "parent": "base", "heartbeat_s": 0.05, "stop_deadline_s": 1.0,
         "resources": [{"name": "odometer", "model": "orc:sim:sensor"}]},
        {"name": "arm", "parent": "main", "heartbeat_s": 0.05, "stop_deadline_s": 1.0,
         "restart": {"policy": "on-failure", "max_restarts": 2, "window_s": 60, "backoff_s": 0.05},
         "resources": [{"name": "shoulder", "model": "orc:sim:motor"},
                       {"name": "elbow", "model": "orc:sim:motor", "depends_on": ["shoulder"]}]},
        {"name": "cam", "parent": "main", "heartbeat_s": 0.05, "stop_deadline_s": 1.0,
         "resources": [{"name": "imager", "model": "orc:sim:sensor"}]},
    ]
    for p in parts:
        p.update(overrides.get(p["name"], {}))
    return parts


def write_config(path: Path, robot: str, broker: dict[str, Any], parts: list[dict[str, Any]],
                 **top: Any) -> Path:
    path.write_text(yaml.safe_dump({"robot": robot, "broker": broker, "parts": parts, **top}, sort_keys=False))
    return path


@dataclass
class RobotSetup:
    cfg: Path
    loaded: LoadedConfig
    where: tuple[str, int]

    @property
    def robot(self) -> str:
        return self.loaded.config.robot

    @property
    def url(self) -> str:
        return f"mqtt://{self.where[0]}:{self.where[1]}"

    def access(self, kind: str, name: str) -> Access:
        return Access.of(self.loaded.config, self.loaded.path, Identity(self.robot, kind, name))

    def watcher(self) -> Watcher:
        return Watcher(self.robot, self.where, self.loaded)


@contextlib.contextmanager
def robot_setup(kind: str, path: Path, parts: list[dict[str, Any]], *, keepalive_s: int = 2,
                **top: Any) -> Iterator[RobotSetup]:
    """A robot config at ``path`` with its credentials, for `orchestrator up`: "amqtt" means `up` runs the
    embedded broker itself (on a free port); "mosquitto" starts one configured for this robot (its
    password file and topic rights) and points the config at it."""
    port = free_port()
    top.setdefault("clients", CLIENTS)
    if kind == "amqtt":
        broker: dict[str, Any] = {"embedded": {"host": "127.0.0.1", "port": port}, "keepalive_s": keepalive_s}
    elif kind == "mosquitto":
        broker = {"urls": [f"mqtt://127.0.0.1:{port}"], "keepalive_s": keepalive_s}
    else:
        raise ValueError(kind)
    if "broker_tls" in top:  # TLS: the embedded broker's TLS listener on another free port
        broker["tls"] = top.pop("broker_tls")
        if kind == "amqtt":
            broker["embedded"]["tls_port"] = free_port()
    cfg = write_config(path, unique_robot(), broker, parts, **top)
    loaded = load_config(cfg)
    if kind == "amqtt":
        store = make_credentials(loaded)
        if loaded.config.broker.tls is not None:
            from orchestrator.security.tls import make_dev_certs

            make_dev_certs(store.directory, ["127.0.0.1", "localhost"], robot=loaded.config.robot)
        yield RobotSetup(cfg, loaded, ("127.0.0.1", port))
        return
    with start_robot_broker(kind, loaded, port=port) as info:
        yield RobotSetup(cfg, loaded, (info.host, info.port))


@dataclass
class Watcher:
    """Watches a robot's topics like any MQTT observer would, and lets tests await conditions."""

    robot: str
    where: tuple[str, int]
    loaded: LoadedConfig | None = None  # given: watch as the robot's viewer identity "watcher"
    states: dict[str, tuple[int, PartState]] = field(default_factory=dict)
    births: dict[str, set[int]] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)
    status: RobotStatus | None = None
    status_at: float = 0.0
    timeline: Timeline | None = None
    log: list[tuple[float, str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.topics = Topics(self.robot)
        self.changed = asyncio.Event()
        user = password = None
        if self.loaded is not None:
            access = Access.of(self.loaded.config, self.loaded.path, ClientId(self.robot, "watcher"))
            user, password = access.username, access.password
        self.client = MqttClient(f"{self.robot}.watcher.{uuid.uuid4().hex[:6]}", [self.where], connect_timeout=15,
                                 username=user, password=password)

    async def __aenter__(self) -> Watcher:
        t = self.topics
        await self.client.subscribe(t.all_part_states(), self._on_state)
        await self.client.subscribe(t.robot_status(), self._on_status)
        await self.client.subscribe(t.robot_timeline(), self._on_timeline)
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    def _on_state(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        env = decode(msg.payload)
        st = env.parse(PartState)
        assert part is not None
        self.births.setdefault(part, set()).add(env.birth)
        if st.pid:
            self.pids.add(st.pid)
        prev = self.states.get(part)
        if prev is None or env.birth >= prev[0]:
            self.states[part] = (env.birth, st)
        self.log.append((time.time(), part, st.state.value))
        self.changed.set()

    def _on_status(self, msg: Message) -> None:
        self.status = decode(msg.payload).parse(RobotStatus)
        self.status_at = time.time()
        self.changed.set()

    def _on_timeline(self, msg: Message) -> None:
        self.timeline = decode(msg.payload).parse(Timeline)
        self.changed.set()

    def state(self, part: str) -> str | None:
        s = self.states.get(part)
        return s[1].state.value if s else None

    async def until(self, cond: Callable[[], bool], timeout: float, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; states="
                                     f"{ {p: s[1].state.value for p, s in self.states.items()} }")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def all_running(self, parts: list[str], timeout: float = 30.0) -> None:
        await self.until(lambda: all(self.state(p) == "running" for p in parts), timeout, "all parts running")


class Up:
    """`orchestrator up CONFIG` as a real child process."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.timeline_path = tmp / "timeline.json"
        self.out_path = tmp / "up.out"
        self._out = self.out_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "up", str(config), "--timeline-json", str(self.timeline_path)],
            stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
        )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"`up` did not exit within {timeout} s:\n{self.output()}")
            await asyncio.sleep(0.02)  # polling a child's exit: no event to await here
        return self.proc.returncode

    def timeline(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.timeline_path.read_text())
        return data

    def close(self) -> None:
        """Stop `up` if the test did not: SIGTERM (the robot stops bottom-up), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_part_process(cfg: Path, part: str, urls: str, *, log: Any = None,
                       env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`orchestrator part` as its own process, the way a container or a node of a cluster runs it (``log``: a
    binary file for its output, else it is discarded; ``env``: added to this process' environment)."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "part", "-c", str(cfg), "--name", part,
                             "--broker", urls], stdout=log if log is not None else subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each (in the order given: leaves first), then a bounded wait; SIGKILL to what is left."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
