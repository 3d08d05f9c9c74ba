"""The generated compose file run for real on the Docker engine: the example rover comes up healthy, its web
panel is served on the host and its broker's WebSocket port takes the client's credential (paho, as the
browser does) and refuses anonymous clients, a client on the host drives its motors through the published
port, a frozen (`docker pause`) sub-part is marked offline and comes back after `docker unpause`, `docker
compose stop` and `down` stop it bottom-up, proven from the wire, and `up` again republishes the retained
state.  Images come from tests/dockerlab.py (built when missing, never skipped)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from brokers import free_port
from dockerlab import ROOT, ComposeProject, docker
from test_mosquitto_websocket import WsClient

from orchestrator.config import load_config
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import PartResources, PartState, RobotStatus, StopReport
from orchestrator.protocol.topics import ClientId, Topics
from orchestrator.security.access import Access
from orchestrator.transport.client import Message, MqttClient
from orchestrator.web.server import STATIC_DIR, fetch_page_config

MOTORS = {"base": ["left", "right"], "arm": ["shoulder", "elbow"]}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def rover_project(directory: Path) -> Path:
    """The example rover as a user deploys it: its config, its credentials, `orchestrator compose`."""
    (directory / "examples").mkdir(parents=True)
    cfg = directory / "examples" / "rover.yaml"
    shutil.copy(ROOT / "examples" / "rover.yaml", cfg)
    res = cli("credentials", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr
    res = cli("compose", str(cfg), "-o", str(directory / "compose.yaml"), "--chown-secrets")
    assert res.returncode == 0, res.stdout + res.stderr
    return cfg


def rover_ports(compose: ComposeProject) -> tuple[int, int, int]:
    """Free host ports for the rover's broker (MQTT, WebSocket) and its web panel: (mqtt, ws, web)."""
    distinct: list[int] = []
    while len(distinct) < 3:  # the OS may hand out the same free port twice in a row
        if (p := free_port()) not in distinct:
            distinct.append(p)
    ports = distinct[0], distinct[1], distinct[2]
    compose.extra_env.update(ORCHESTRATOR_BROKER_PORT=str(ports[0]), ORCHESTRATOR_BROKER_WS_PORT=str(ports[1]),
                             ORCHESTRATOR_WEB_PORT=str(ports[2]))
    return ports


def check_the_web_panel(cfg: Path, ws_port: int, web_port: int) -> None:
    """The `web` service's page from the host, told the broker's published WebSocket port; that port refuses
    anonymous clients and takes the operator's credential, with the operator's topic rights."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == (STATIC_DIR / "index.html").read_bytes()
    page = fetch_page_config(f"http://127.0.0.1:{web_port}/", 10)
    assert page == {"robot": "rover", "websocket_url": None, "websocket_port": ws_port, "client": "operator"}, page
    anonymous = WsClient(ws_port)
    try:
        assert not anonymous.connect(), "the broker's WebSocket listener took an anonymous client"
    finally:
        anonymous.close()
    loaded = load_config(cfg)
    access = Access.of(loaded.config, loaded.path, ClientId("rover", "operator"))
    operator = WsClient(ws_port, access.username, access.password)
    try:
        assert operator.connect(), "the operator's credential was refused over WebSocket"
        state = Topics("rover").part_state("main")
        operator.subscribe(state)  # retained: the primary's state arrives at once
        with operator.arrived:
            assert operator.arrived.wait_for(lambda: any(t == state for t, _ in operator.got), 10), operator.got
    finally:
        operator.close()


class WireObserver:
    """Every part state and stop report, in the order the broker delivers them (as the launcher identity,
    the one that may read the reports)."""

    def __init__(self, cfg: Path, port: int) -> None:
        loaded = load_config(cfg)
        self.topics = Topics(loaded.config.robot, loaded.topology.primary)
        access = Access.of(loaded.config, loaded.path, ClientId(loaded.config.robot, "up"))
        self.client = MqttClient("rover.wire-observer", [("127.0.0.1", port)], connect_timeout=20,
                                 username=access.username, password=access.password)
        self.events: list[tuple[str, str, Any]] = []  # (kind, part, body)

    def _on(self, msg: Message) -> None:
        part = self.topics.part_of(msg.topic)
        env = decode(msg.payload)
        if msg.topic == self.topics.robot_status():
            self.events.append(("status", "", env.parse(RobotStatus)))
        if part is None:
            return
        if msg.topic == self.topics.part_resources(part):
            self.events.append(("resources", part, sorted(r.name for r in env.parse(PartResources).resources)))
        elif msg.topic == self.topics.part_report(part):
            self.events.append(("report", part, env.parse(StopReport)))
        elif msg.topic == self.topics.part_state(part):
            self.events.append(("state", part, env.parse(PartState).state.value))

    async def __aenter__(self) -> WireObserver:
        await self.client.subscribe(self.topics.all_part_states(), self._on)
        await self.client.subscribe(self.topics.all_part_reports(), self._on)
        await self.client.subscribe(self.topics.robot_status(), self._on)
        await self.client.subscribe(self.topics.all_part_resources(), self._on)
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    def first(self, kind: str, part: str, value: str | None = None, after: int = 0) -> int | None:
        for i, (k, p, body) in enumerate(self.events):
            if i >= after and k == kind and p == part and (value is None or body == value):
                return i
        return None

    async def until(self, what: str, cond: Any, timeout: float) -> None:
        start = time.monotonic()
        while not cond():
            assert time.monotonic() - start < timeout, (what, self.events[-30:])
            await asyncio.sleep(0.1)  # polling the observer's list: the events come from its own callbacks

    def primary_says(self, part: str, online: bool, after: int) -> bool:
        return any(k == "status" and part in b.parts and b.parts[part].online is online
                   for k, _, b in self.events[after:])


def assert_bottom_up(wire: WireObserver, parts: list[str], parent_of: Any, mark: int) -> None:
    """Proven from the wire: every part's stop report precedes its parent's stop (its first "stopping"),
    has no error and lists the motors the part hosts."""
    for part in parts:
        parent = parent_of(part)
        stopping = wire.first("state", part, "stopping", mark)
        stopped = wire.first("state", part, "stopped", mark)
        assert stopping is not None and stopped is not None and stopping < stopped, (part, wire.events[mark:])
        if parent is None:
            continue
        report = wire.first("report", part, None, mark)
        parent_stopping = wire.first("state", parent, "stopping", mark)
        assert report is not None and parent_stopping is not None, (part, wire.events[mark:])
        assert report < parent_stopping, (part, parent, wire.events[mark:])
        body = wire.events[report][2]
        assert not body.errors, body
        # every actuator stopped, said by the part that hosts it
        assert set(MOTORS.get(part, [])) <= set(body.resources_stopped), body


@pytest.mark.timeout(360)
async def test_compose_stack_comes_up_healthy_drives_motors_and_stops_bottom_up(compose: ComposeProject,
                                                                               tmp_path: Path) -> None:
    cfg = rover_project(tmp_path)
    topo = load_config(cfg).topology
    port, ws_port, web_port = rover_ports(compose)
    started = time.monotonic()
    await asyncio.to_thread(compose, tmp_path, "up", "--detach", "--wait", "--wait-timeout", "150", timeout=200)
    up_s = time.monotonic() - started
    ps = [json.loads(line) for line in compose(tmp_path, "ps", "--format", "json").stdout.splitlines() if line]
    assert {p["Service"] for p in ps} == {"broker", "web", *topo.parts}
    assert all(p["Health"] == "healthy" for p in ps), ps
    await asyncio.to_thread(check_the_web_panel, cfg, ws_port, web_port)
    broker = f"mqtt://127.0.0.1:{port}"
    async with WireObserver(cfg, port) as wire:
        for part, motors in MOTORS.items():
            for motor in motors:
                res = await asyncio.to_thread(cli, "call", f"{part}/{motor}", "set_power", "--config", str(cfg),
                                              "--broker", broker, "--args", '{"power": 0.4}')
                assert res.returncode == 0, res.stdout + res.stderr
                res = await asyncio.to_thread(cli, "call", f"{part}/{motor}", "is_moving", "--config", str(cfg),
                                              "--broker", broker)
                assert res.stdout.strip() == "true", res.stdout + res.stderr
        # docker pause: arm is frozen with its motors running; it cannot stop them itself (see docs/deploy.md)
        arm = compose(tmp_path, "ps", "--quiet", "arm").stdout.strip()
        mark = len(wire.events)
        docker("pause", arm)
        paused = time.monotonic()
        await wire.until("primary marks the frozen arm offline", lambda: wire.primary_says("arm", False, mark), 30)
        frozen_s = time.monotonic() - paused
        docker("unpause", arm)
        back = len(wire.events)
        await wire.until("primary marks arm online", lambda: wire.primary_says("arm", True, back), 60)
        for motor in MOTORS["arm"]:
            res = await asyncio.to_thread(cli, "call", f"arm/{motor}", "is_moving", "--config", str(cfg),
                                          "--broker", broker)
            # thawed, it answers calls again; its motors kept their last command (nothing stopped them: the
            # broker had not dropped its connection, and a call outside a session binds no watchdog)
            assert res.returncode == 0 and res.stdout.strip() in ("true", "false"), res.stdout + res.stderr
        mark = len(wire.events)
        await asyncio.to_thread(compose, tmp_path, "stop", timeout=120)
        await asyncio.sleep(0.5)  # the observer's last deliveries (the broker stopped after every part)
    assert_bottom_up(wire, list(topo.parts), topo.parent, mark)
    # every container exited on its own (0), none killed at the end of its grace period
    for p in ps:
        state = json.loads(docker("inspect", p["Name"]).stdout)[0]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, (p["Name"], state)
    # `up` again: the broker has no persistence (persistence false in the generated mosquitto.conf), every
    # part publishes its retained state and resource listing again; a late subscriber sees all of it
    await asyncio.to_thread(compose, tmp_path, "up", "--detach", "--wait", "--wait-timeout", "150", timeout=200)
    listing = {part: sorted(r.name for r in load_config(cfg).config.part(part).resources) for part in topo.parts}
    async with WireObserver(cfg, port) as wire:
        await wire.until("retained states and listings", lambda: all(
            wire.first("state", p, "running") is not None and wire.first("resources", p, listing[p]) is not None
            for p in topo.parts), 30)
        await wire.until("robot status all online", lambda: all(wire.primary_says(p, True, 0) for p in topo.parts
                                                                if p != topo.primary), 30)
        mark = len(wire.events)
        await asyncio.to_thread(compose, tmp_path, "down", timeout=120)
        await asyncio.sleep(0.5)
    assert_bottom_up(wire, list(topo.parts), topo.parent, mark)
    assert not compose.leftovers()["containers"]
    assert frozen_s < 15
    assert up_s < 150


@pytest.mark.timeout(240)
async def test_network_disconnect_of_a_sub_part_stops_its_motor_and_marks_it_offline(compose: ComposeProject,
                                                                                     tmp_path: Path) -> None:
    cfg = rover_project(tmp_path)
    port, _, _ = rover_ports(compose)
    await asyncio.to_thread(compose, tmp_path, "up", "--detach", "--wait", "--wait-timeout", "150", timeout=200)
    broker = f"mqtt://127.0.0.1:{port}"
    base = compose(tmp_path, "ps", "--quiet", "base").stdout.strip()
    network = f"{compose.name}_default"

    async def call(method: str, args: str = "{}") -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(cli, "call", "base/left", method, "--config", str(cfg), "--broker", broker,
                                       "--args", args)

    async with WireObserver(cfg, port) as wire:
        res = await call("set_power", '{"power": 0.5}')
        assert res.returncode == 0, res.stdout + res.stderr
        assert (await call("is_moving")).stdout.strip() == "true"
        mark = len(wire.events)
        docker("network", "disconnect", network, base)
        cut = time.monotonic()
        # the broker drops the silent connection and publishes base's Last Will: offline
        while wire.first("state", "base", "offline", mark) is None:
            assert time.monotonic() - cut < 30, wire.events[mark:]
            await asyncio.sleep(0.1)  # polling the observer's list: the events come from its own callbacks
        offline_s = time.monotonic() - cut

        def primary_says_offline() -> bool:
            return any(k == "status" and "base" in b.parts and not b.parts["base"].online
                       for k, _, b in wire.events[mark:])

        while not primary_says_offline():  # the primary's robot status, not only the broker's Will
            assert time.monotonic() - cut < 30, [e for e in wire.events[mark:] if e[0] == "status"]
            await asyncio.sleep(0.1)
        docker("network", "connect", network, base)
        back = len(wire.events)
        while wire.first("state", "base", "running", back) is None:
            assert time.monotonic() - cut < 60, wire.events[back:]
            await asyncio.sleep(0.1)
        # the part stopped its motor while cut off (nothing drove it since): still stopped on its return
        res = await call("is_moving")
        assert res.returncode == 0 and res.stdout.strip() == "false", res.stdout + res.stderr
    assert offline_s < 15


@pytest.mark.timeout(240)
async def test_a_crashed_part_is_restarted_by_its_policy(compose: ComposeProject, tmp_path: Path) -> None:
    # `docker kill` is a manual stop for docker (no restart); a crash is the process dying under it: SIGKILL
    # from the host to the container's main process, exit 137
    cfg = rover_project(tmp_path)
    port, _, _ = rover_ports(compose)
    await asyncio.to_thread(compose, tmp_path, "up", "--detach", "--wait", "--wait-timeout", "150", timeout=200)
    camera = compose(tmp_path, "ps", "--quiet", "camera").stdout.strip()

    def inspect() -> dict[str, Any]:
        info: dict[str, Any] = json.loads(docker("inspect", camera).stdout)[0]
        return info

    assert inspect()["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    async with WireObserver(cfg, port) as wire:
        mark = len(wire.events)
        pid = inspect()["State"]["Pid"]
        assert pid > 0
        os.kill(pid, signal.SIGKILL)
        crashed = time.monotonic()
        while wire.first("state", "camera", "running", (wire.first("state", "camera", "offline", mark) or
                                                         len(wire.events))) is None:
            assert time.monotonic() - crashed < 60, wire.events[mark:]
            await asyncio.sleep(0.1)  # polling the observer's list: the events come from its own callbacks
    info = inspect()
    assert info["RestartCount"] == 1 and info["State"]["Status"] == "running", info["State"]
    assert info["State"]["Pid"] != pid


@pytest.mark.timeout(240)
async def test_compose_stack_with_broker_tls_parts_connect_over_tls(compose: ComposeProject, tmp_path: Path) -> None:
    # broker.tls: the generated file gives the broker a TLS listener (certificates as secrets) and the parts
    # an mqtts:// URL; healthy parts are parts connected over TLS (the health check connects the same way)
    (tmp_path / "examples").mkdir()
    cfg = tmp_path / "examples" / "tlsbot.yaml"
    cfg.write_text(yaml.safe_dump({
        "robot": "tlsbot",
        "broker": {"urls": ["mqtts://broker:8883"], "tls": {"ca_file": "ca.crt"}},
        "parts": [{"name": "hub"},
                  {"name": "wheels", "parent": "hub", "resources": [{"name": "left", "model": "orc:sim:motor"}]}],
    }))
    for args in (("credentials", str(cfg)), ("certs", str(cfg), "--host", "broker", "--host", "127.0.0.1"),
                 ("compose", str(cfg), "-o", str(tmp_path / "compose.yaml"), "--chown-secrets")):
        res = cli(*args)
        assert res.returncode == 0, res.stdout + res.stderr
    port = free_port()
    compose.extra_env["ORCHESTRATOR_BROKER_TLS_PORT"] = str(port)
    await asyncio.to_thread(compose, tmp_path, "up", "--detach", "--wait", "--wait-timeout", "150", timeout=200)
    ps = [json.loads(line) for line in compose(tmp_path, "ps", "--format", "json").stdout.splitlines() if line]
    assert {p["Service"] for p in ps} == {"broker", "hub", "wheels"}
    assert all(p["Health"] == "healthy" for p in ps), ps
    broker = f"mqtts://127.0.0.1:{port}"  # a client on the host, over TLS, verifying the broker
    res = await asyncio.to_thread(cli, "call", "wheels/left", "set_power", "--config", str(cfg), "--broker", broker,
                                  "--args", '{"power": 0.3}')
    assert res.returncode == 0, res.stdout + res.stderr
    res = await asyncio.to_thread(cli, "call", "wheels/left", "is_moving", "--config", str(cfg), "--broker", broker)
    assert res.stdout.strip() == "true", res.stdout + res.stderr
