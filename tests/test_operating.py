"""Operating a robot (issue 12): readable JSON topics, the Prometheus endpoint, part logs, `echo`,
`monitor --json`, and `monitor` driven in a pseudo-terminal as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pexpect
import pyte
import pytest
from brokers import free_port
from inproc import client_for, running_robot
from robot import Up, robot_setup

from orchestrator.protocol.codec import encode
from orchestrator.protocol.messages import PartState, PartStateName
from orchestrator.protocol.topics import Identity, Topics
from orchestrator.security.access import Access

PARTS = [
    {"name": "main", "heartbeat_s": 0.2, "resources": [
        {"name": "probe", "model": "orc:sim:sensor", "attributes": {"readings": ["t"]},
         "telemetry": {"period_s": 0.2}}]},
    {"name": "drive", "parent": "main", "heartbeat_s": 0.2, "heartbeat_misses": 3,
     "resources": [{"name": "m1", "model": "orc:sim:motor"}]},
]


def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


class Plain:
    """A plain paho client with the robot's viewer credentials: what mosquitto_sub or Node-RED would be."""

    def __init__(self, where: tuple[str, int], access: Access) -> None:
        self.got: dict[str, bytes] = {}
        self.seen: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"plain-{os.getpid()}-{id(self)}")
        if access.username:
            self.c.username_pw_set(access.username, access.password)
        self.c.on_message = lambda _c, _u, m: self.loop.call_soon_threadsafe(self._got, m.topic, m.payload)
        self.c.connect(where[0], where[1], 10)
        self.c.loop_start()

    def _got(self, topic: str, payload: bytes) -> None:
        self.got[topic] = payload
        self.seen.append((topic, payload))
        self.changed.set()

    def subscribe(self, f: str) -> None:
        self.c.subscribe(f, 1)

    async def until(self, cond: Any, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond():
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {what}; got {sorted(self.got)}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def json(self, topic: str) -> Any:
        return json.loads(self.got[topic])

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def viewer(loaded: Any) -> Access:
    return Access.of(loaded.config, loaded.path, Identity(loaded.config.robot, "client", "watcher"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_a_plain_mqtt_client_reads_the_robot_as_json(tmp_path: Path, kind: str) -> None:
    async with running_robot(tmp_path, kind, PARTS) as robot:
        t = Topics(robot.loaded.config.robot)
        plain = Plain(robot.where, viewer(robot.loaded))
        try:
            plain.subscribe(f"{t.root}/part/+/json/#")
            plain.subscribe(f"{t.root}/robot/json/#")
            state = t.json(t.part_state("drive"))
            status = t.json(t.robot_status())
            telemetry = t.json(t.telemetry("main", "probe"))
            await plain.until(lambda: {state, status, telemetry} <= set(plain.got), 10, "the JSON mirror")
            assert plain.json(state)["state"] == "running"
            assert plain.json(state)["parent"] == "main"
            assert plain.json(status)["parts"]["drive"]["online"] is True
            assert "t" in plain.json(telemetry)["readings"]
            res = t.json(t.part_resources("drive"))
            await plain.until(lambda: res in plain.got, 5, "the resources in JSON")
            assert [r["name"] for r in plain.json(res)["resources"]] == ["m1"]
            # a session event, mirrored as it happens
            events = t.json(t.session_events("drive"))
            async with client_for(robot.loaded) as client:
                await client.call("drive/m1", "set_power", {"power": 0.2})
            await plain.until(lambda: events in plain.got, 10, "a session event in JSON")
            assert plain.json(events)["kind"] in ("opened", "owned", "closed", "ended", "stopped")
        finally:
            plain.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_home_assistant_discovery_is_readable_by_a_viewer_and_points_at_live_json(tmp_path: Path,
                                                                                        kind: str) -> None:
    # what Home Assistant does with a viewer identity: read the discovery configs, then the topics they name
    async with running_robot(tmp_path, kind, PARTS, monitoring={"home_assistant": True}) as robot:
        robot_name = robot.loaded.config.robot
        t = Topics(robot_name)
        plain = Plain(robot.where, viewer(robot.loaded))
        try:
            plain.subscribe(f"homeassistant/+/{robot_name}/#")
            running = f"homeassistant/binary_sensor/{robot_name}/running/config"
            probe = f"homeassistant/sensor/{robot_name}/main_probe_t/config"
            await plain.until(lambda: {running, probe} <= set(plain.got), 10, "the discovery configs (retained)")
            assert plain.json(running)["state_topic"] == t.json(t.robot_status())
            sensor = plain.json(probe)
            assert sensor["state_topic"] == t.json(t.telemetry("main", "probe"))
            assert sensor["value_template"] == "{{ value_json.readings['t'] }}"
            assert sensor["availability"][0]["topic"] == t.json(t.robot_status())
            plain.subscribe(sensor["state_topic"])
            plain.subscribe(t.json(t.robot_status()))
            await plain.until(lambda: {sensor["state_topic"], t.json(t.robot_status())} <= set(plain.got), 10,
                              "the topics the discovery names")
            assert isinstance(plain.json(sensor["state_topic"])["readings"]["t"], (int, float))
            assert plain.json(t.json(t.robot_status()))["state"] == "running"
        finally:
            plain.close()


@pytest.mark.timeout(60)
async def test_the_json_mirror_can_be_switched_off(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "mosquitto", PARTS, monitoring={"json_mirror": False}) as robot:
        assert all(p.mirror.published == 0 for p in robot.parts.values())
        await robot.parts["drive"].publish_state(PartStateName.RUNNING)
        assert robot.parts["drive"].mirror.published == 0


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


@pytest.mark.timeout(90)
async def test_prometheus_metrics_of_a_running_robot_move(tmp_path: Path) -> None:
    port = free_port()
    async with running_robot(tmp_path, "mosquitto", PARTS,
                             monitoring={"metrics": {"host": "127.0.0.1", "port": port}}) as robot:
        first = await asyncio.to_thread(_scrape, port)
        assert first['orchestrator_part_up{part="drive"}'] == 1
        assert first["orchestrator_parts_online"] == 2
        assert first['orchestrator_robot_state{state="running"}'] == 1
        async with client_for(robot.loaded) as client:
            for _ in range(3):
                await client.call("drive/m1", "set_power", {"power": 0.1})
            with contextlib.suppress(Exception):
                await client.call("drive/m1", "no_such_method", {})
        key = 'orchestrator_calls_total{method="set_power",part="drive",resource="m1"}'
        end = time.monotonic() + 15
        later = first
        while later.get(key, 0) < 3:  # parts publish their figures every few seconds: scrape until they land
            assert time.monotonic() < end, f"calls never counted: {sorted(k for k in later if 'call' in k)}"
            await asyncio.sleep(0.5)
            later = await asyncio.to_thread(_scrape, port)
        assert later['orchestrator_call_errors_total{code="unknown_method",method="no_such_method",part="drive",'
                     'resource="m1"}'] == 1
        assert later['orchestrator_call_duration_seconds_count{method="set_power",part="drive",resource="m1"}'] == 3
        assert later["orchestrator_sessions_open"] >= 0
        # a part that stops is no longer up
        await robot.parts["drive"].close()
        end = time.monotonic() + 10
        while (await asyncio.to_thread(_scrape, port))['orchestrator_part_up{part="drive"}'] != 0:
            assert time.monotonic() < end, "drive still up in the metrics"
            await asyncio.sleep(0.2)


@pytest.mark.timeout(60)
async def test_part_logs_reach_the_log_topic_rate_limited(tmp_path: Path) -> None:
    from orchestrator.runtime.monitoring import TopicLogHandler

    async with running_robot(tmp_path, "mosquitto", PARTS) as robot:
        t = Topics(robot.loaded.config.robot)
        plain = Plain(robot.where, viewer(robot.loaded))
        try:
            plain.subscribe(t.json(t.part_log("drive")))
            plain.subscribe(t.json(t.part_state("drive")))  # retained: once it arrives, the log subscription is on
            await plain.until(lambda: t.json(t.part_state("drive")) in plain.got, 10, "the subscriptions")
            handler = TopicLogHandler(robot.parts["drive"], logging.WARNING, rate=5, burst=10)
            logger = logging.getLogger(f"test.storm.{os.getpid()}")
            logger.addHandler(handler)
            logger.propagate = False
            try:
                for i in range(500):  # a log storm costs a counter, not the broker
                    logger.warning("storm %d", i)
                logger.warning("after the storm")
            finally:
                logger.removeHandler(handler)
            def logged() -> list[Any]:
                return [json.loads(p) for topic, p in plain.seen if topic.endswith("/log")]

            sent = 501 - handler.dropped
            assert 10 <= sent <= 12, sent  # a burst of 10, then 5 a second: the storm took well under a second
            await plain.until(lambda: len(logged()) >= sent, 10, "every log line sent")
            seen = logged()
            assert seen[0]["message"] == "storm 0" and seen[0]["level"] == "WARNING"
            assert handler.dropped >= 480
        finally:
            plain.close()


@pytest.mark.timeout(60)
async def test_echo_decodes_robot_topics_and_flags_a_forgery(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "mosquitto", PARTS, security={"insecure": True}) as robot:
        t = Topics(robot.loaded.config.robot)
        url = robot.broker.url
        # in insecure mode anyone may publish anywhere: echo must say who really owns the topic
        forged = encode("part/intruder", PartState(state=PartStateName.STOPPED))
        robot.parts["main"].client.publish_nowait(t.part_state("ghost"), forged, qos=1, retain=True)
        out = await asyncio.to_thread(_cli, "echo", "part/+/state", "--robot", robot.loaded.config.robot,
                                      "--broker", url, "--timeout", "1.5")
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        by_topic = {r["topic"]: r for r in rows}
        drive = by_topic[t.part_state("drive")]
        assert drive["body"]["state"] == "running" and drive["src"] == "part/drive" and drive["retained"]
        assert "forged" in by_topic[t.part_state("ghost")]


@pytest.mark.timeout(60)
async def test_monitor_json_streams_snapshots_and_events(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "mosquitto", PARTS) as robot:
        cfg = str(robot.loaded.path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator", "monitor", cfg, "--json", "--interval", "0.3", "--timeout", "8",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            snap = first["snapshot"]
            assert snap["state"] == "running"
            assert snap["parts"]["drive"]["online"] and snap["parts"]["drive"]["state"] == "running"
            assert [r["name"] for r in snap["parts"]["drive"]["resources"]] == ["m1"]
            await robot.parts["drive"].close()  # the part stops: a state event, then the snapshot says so
            kinds: list[str] = []
            while True:
                line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
                if "event" in line:
                    kinds.append(line["event"]["kind"])
                elif line["snapshot"]["parts"]["drive"]["state"] == "stopped":
                    break
            assert "state" in kinds
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# ------------------------------------------------------------------------------ the terminal view
class Screen:
    """``orchestrator monitor`` in a pseudo-terminal, its output rendered as a screen."""

    def __init__(self, argv: list[str], cols: int = 170, rows: int = 45) -> None:
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
        self.child = pexpect.spawn(argv[0], argv[1:], dimensions=(rows, cols), env=env)

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.stream.feed(self.child.read_nonblocking(65536, timeout=0.05))
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                return

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def row(self, word: str) -> str:
        return next((line for line in self.screen.display if f" {word} " in line), "")

    def wait_for(self, cond: Any, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not cond(self):
            assert time.monotonic() < end, f"the monitor never showed {what}:\n{self.text()}"
            self.pump(0.2)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@contextlib.contextmanager
def monitor_screen(*args: str) -> Iterator[Screen]:
    s = Screen([sys.executable, "-m", "orchestrator", "monitor", *args])
    try:
        yield s
    finally:
        s.close()


@pytest.mark.timeout(120)
async def test_monitor_in_a_terminal_shows_the_robot_and_a_frozen_part(tmp_path: Path) -> None:
    with robot_setup("mosquitto", tmp_path / "robot.yaml", PARTS) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "drive"])
                pid = w.states["drive"][1].pid
                assert pid
                with monitor_screen(str(setup.cfg)) as s:
                    await asyncio.to_thread(s.wait_for, lambda s: "running" in s.row("drive")
                                            and " yes " in s.row("drive"), 20, "drive running")
                    assert f"robot {setup.robot}: running" in s.text()
                    assert f" {w.states['drive'][0]} " in s.row("drive")  # its birth
                    # the resources arrive on their own topic: drawn when they come, not with the parts
                    await asyncio.to_thread(s.wait_for, lambda s: "drive/m1" in s.text()
                                            and "orc:sim:motor" in s.text(), 10, "drive's motor")
                    os.kill(pid, signal.SIGSTOP)  # frozen: its row must not say it runs
                    try:
                        await asyncio.to_thread(s.wait_for, lambda s: "(silent)" in s.row("drive")
                                                or "offline" in s.row("drive"), 15, "drive silent")
                        assert " NO " in s.row("drive")
                        await asyncio.to_thread(s.wait_for, lambda s: "degraded" in s.text(), 5, "robot degraded")
                        await asyncio.to_thread(s.wait_for, lambda s: "offline" in s.text().split("────")[-1], 5,
                                                "the offline event in the log")
                    finally:
                        os.kill(pid, signal.SIGCONT)
                    await asyncio.to_thread(s.wait_for, lambda s: " yes " in s.row("drive"), 15, "drive back")
                    # the filter: only what matches stays
                    s.child.send("/")
                    s.child.send("probe\r")
                    await asyncio.to_thread(s.wait_for, lambda s: "drive/m1" not in s.text()
                                            and "main/probe" in s.text(), 5, "the filtered view")
                    # the stop key: a motor a client's session drives, stopped from the monitor
                    async with client_for(setup.loaded) as client:
                        await client.call("drive/m1", "go_for", {"rpm": 30, "revolutions": 1000})
                        assert await client.call("drive/m1", "is_moving", {}) is True
                        s.child.send("/")
                        s.child.send("m1\r")
                        await asyncio.to_thread(s.wait_for, lambda s: "drive/m1" in s.text()
                                                and "main/probe" not in s.text(), 5, "only drive/m1")
                        s.child.send("s")
                        await asyncio.to_thread(s.wait_for, lambda s: "drive/m1 stopped" in s.text(), 10,
                                                "the monitor's stop done")
                        assert await client.call("drive/m1", "is_moving", {}) is False
                    s.child.send("q")
                    await asyncio.to_thread(s.pump, 5)
                    assert not s.child.isalive()
        finally:
            up.close()


@pytest.mark.timeout(30)
def test_monitor_without_a_terminal_says_to_use_json(tmp_path: Path) -> None:
    out = _cli("monitor", "--robot", "nobody", "--broker", f"mqtt://127.0.0.1:{free_port()}")
    assert out.returncode == 2
    assert "--json" in out.stderr


def test_the_grafana_dashboard_plots_only_metrics_the_primary_serves() -> None:
    import re

    import orchestrator.runtime.metrics as metrics

    root = Path(__file__).resolve().parent.parent
    dash = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    served = set(re.findall(r'"(orchestrator_[a-z_]+)"', Path(metrics.__file__).read_text()))
    suffixes = ("_total", "_bucket", "_count", "_sum")
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"orchestrator_[a-z_]+", t["expr"])}
    assert used
    for m in sorted(used):
        base = next((m[: -len(s)] for s in suffixes if m.endswith(s) and m[: -len(s)] in served), m)
        assert base in served, f"{m}: the dashboard plots a metric the primary does not serve"
    documented = (root / "docs" / "operating.md").read_text()
    for m in sorted(served):
        assert m in documented, f"{m} is served but not in docs/operating.md"


def test_setup_logging_leaves_logging_alone_when_the_host_process_set_it_up() -> None:
    """Regression (CI): the CLI run in-process by a test added a handler on a stream that was closed after it,
    and every later record of the test session became a 'closed file' traceback on stderr."""
    from orchestrator.logs import setup_logging

    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    try:
        before = list(root.handlers)
        setup_logging("cli")
        assert root.handlers == before
    finally:
        root.removeHandler(foreign)
