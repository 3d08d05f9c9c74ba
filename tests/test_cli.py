"""The command line facing hostile input: planted retained messages, absurd arguments, a broker that
answers garbage.  Each is a clear error and a non-zero exit code (or an error row), never a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inproc import running_robot
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.protocol.codec import encode, pack
from orchestrator.protocol.messages import PartState, PartStateName
from orchestrator.protocol.topics import Identity, Topics
from orchestrator.security.access import Access
from orchestrator.transport.client import MqttClient

PARTS: list[dict[str, Any]] = [
    {"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
    {"name": "base", "parent": "main", "resources": [{"name": "left", "model": "orc:sim:motor"}]},
    {"name": "cam", "parent": "main", "resources": [{"name": "imager", "model": "orc:sim:sensor"}]},
]


def invoke(*argv: str) -> Any:
    """`orchestrator ARGV` in this process (typer's runner): exit code and output, exceptions kept."""
    return CliRunner().invoke(app, list(argv), catch_exceptions=True)


def no_traceback(res: Any) -> None:
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output, res.output


async def plant(loaded: Any, part: str, topic: str, payload: bytes) -> None:
    """Publish a retained message as part ``part`` (its own credential, a connection of its own)."""
    cfg = loaded.config
    access = Access.of(cfg, loaded.path, Identity(cfg.robot, "part", part))
    async with MqttClient(f"{cfg.robot}.planter.{part}", cfg.broker.client_urls(), username=access.username,
                          password=access.password) as c:
        await c.publish(topic, payload, qos=1, retain=True, timeout=5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_planted_malformed_retained_messages_are_error_rows_in_status_and_resources(
        tmp_path: Path, kind: str) -> None:
    async with running_robot(tmp_path, kind, PARTS, start=False) as robot:
        loaded = robot.loaded
        t = Topics(loaded.config.robot)
        await plant(loaded, "base", t.part_state("base"), b"\xc1 not msgpack")
        # a well-formed state, but on cam's topic claiming to be main's: not believed
        await plant(loaded, "cam", t.part_state("cam"), encode("part/main", PartState(state=PartStateName.RUNNING)))
        await plant(loaded, "main", t.part_state("main"), encode("part/main", {"state": {"deep": [1, 2]}}))
        await plant(loaded, "main", t.robot_status(), pack({"v": 1, "src": "part/main", "body": "not a map"}))
        await plant(loaded, "base", t.part_resources("base"), encode("part/base", {"resources": "x" * 10_000}))
        await plant(loaded, "cam", t.part_resources("cam"), b"")
        await plant(loaded, "main", t.part_resources("main"),
                    encode("part/main", {"resources": [{"name": "[bold]x", "model": "m", "status": "ready"}]}))
        cfg = str(loaded.path)
        for argv in (["status", cfg], ["status", cfg, "--json"], ["resources", "-c", cfg],
                     ["resources", "-c", cfg, "--json"]):
            res = await asyncio.to_thread(invoke, *argv)
            no_traceback(res)
            assert res.exit_code == 0, (argv, res.output)
            assert "invalid" in res.output, (argv, res.output)
            assert "x" * 300 not in res.output  # the planted input is not echoed
        res = await asyncio.to_thread(invoke, "status", cfg)
        for part in ("main", "base", "cam"):
            assert part in res.output
        res = await asyncio.to_thread(invoke, "resources", "-c", cfg)
        assert "[bold]x" in res.output  # a name from the wire is printed as text, never as markup


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_robot_status_says_offline_while_the_primary_is_offline_and_the_cli_shows_it(
        tmp_path: Path, kind: str) -> None:
    """Regression, issue 8 defect 4: `robot/status` said "running" while the primary was offline.  The
    primary's Will (on its status link) covers the robot status: when its process dies without a goodbye,
    `orchestrator status` shows the robot offline (table and JSON)."""
    async with running_robot(tmp_path, kind, PARTS) as robot:
        cfg = str(robot.loaded.path)

        async def state() -> Any:
            res = await asyncio.to_thread(invoke, "status", cfg, "--json")
            no_traceback(res)
            assert res.exit_code == 0, res.output
            return json.loads(res.output)["state"]

        deadline = time.monotonic() + 10
        while await state() != "running":  # the primary publishes its first status shortly after start
            assert time.monotonic() < deadline, "the robot status never said running"
            await asyncio.sleep(0.1)
        main = robot.parts["main"]
        main._own_heartbeat.stop(close=False)  # the primary dies: no goodbye on any of its connections
        await main.status_link.close(disconnect=False)
        await main.client.close(disconnect=False)
        deadline = time.monotonic() + 10  # a closed socket: the broker publishes the Will at once
        while await state() != "offline":
            assert time.monotonic() < deadline, "the robot status still says the primary runs"
            await asyncio.sleep(0.1)
        res = await asyncio.to_thread(invoke, "status", cfg)
        no_traceback(res)
        assert "offline" in res.output, res.output


@contextlib.contextmanager
def garbage_server() -> Iterator[int]:
    """A TCP server that answers every connection with random bytes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), c:
                c.settimeout(1.0)
                c.recv(4096)
                c.sendall(os.urandom(8192))

    th = threading.Thread(target=serve, name="garbage-broker", daemon=True)
    th.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        th.join(5)
        srv.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    from brokers import make_credentials
    from robot import unique_robot, write_config

    from orchestrator.config import load_config

    path = write_config(tmp_path / "robot.yaml", unique_robot(), {"urls": ["mqtt://127.0.0.1:1"]}, PARTS,
                        clients=[{"name": "operator"}])
    make_credentials(load_config(path))
    return path


@pytest.mark.timeout(60)
def test_a_broker_answering_garbage_is_a_clear_error(config: Path) -> None:
    with garbage_server() as port:
        url = f"mqtt://127.0.0.1:{port}"
        res = subprocess.run([sys.executable, "-m", "orchestrator", "status", str(config), "--broker", url],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 1, res
        assert "Traceback" not in res.stderr and "no MQTT broker reachable" in res.stderr, res.stderr
        res = invoke("call", "main/health", "get_readings", "-c", str(config), "--broker", url)
        no_traceback(res)
        assert res.exit_code == 1 and "broker_unavailable" in res.output, res.output


def test_args_nested_5000_deep_is_a_clear_error(config: Path) -> None:
    for args in ("[" * 5000 + "]" * 5000, '{"a": ' * 5000 + "1" + "}" * 5000, '{"a": ' * 40 + "1" + "}" * 40):
        res = invoke("call", "main/health", "get_readings", "-c", str(config), "--args", args)
        no_traceback(res)
        assert res.exit_code == 2, res.output
        assert "--args" in res.output


@pytest.mark.parametrize("target", ["main/#", "main/+", "+/health", "#/health", "main/he/alth", "main", "/x"])
def test_a_target_with_a_wildcard_is_a_clear_error(config: Path, target: str) -> None:
    res = invoke("call", target, "get_readings", "-c", str(config))
    no_traceback(res)
    assert res.exit_code == 2, res.output
    assert "PART/RESOURCE" in res.output


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_broker_port_out_of_range_is_a_clear_error(port: str) -> None:
    res = invoke("broker", "--port", port)
    no_traceback(res)
    assert res.exit_code == 2, res.output
    assert "Invalid value" in res.output


@pytest.mark.parametrize("option", [["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "nan"],
                                    ["--timeout", "inf"], ["--hold", "-1"], ["--hold", "nan"]])
def test_timeout_out_of_range_is_a_clear_error(config: Path, option: list[str]) -> None:
    res = invoke("call", "main/health", "get_readings", "-c", str(config), *option)
    no_traceback(res)
    assert res.exit_code == 2, res.output
    assert "--timeout must be" in res.output


def test_port_0_in_a_client_url_is_refused(tmp_path: Path, config: Path) -> None:
    # in the configuration
    text = config.read_text().replace("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:0")
    bad = tmp_path / "port0.yaml"
    bad.write_text(text)
    res = invoke("validate", str(bad))
    no_traceback(res)
    assert res.exit_code == 2 and "port 0" in res.output and str(bad) in res.output, res.output
    # on the command line (every command that takes --broker)
    for argv in (["status", str(config)], ["shutdown", str(config)], ["resources", "-c", str(config)],
                 ["call", "main/health", "get_readings", "-c", str(config)], ["part", str(config), "--name", "main"]):
        res = invoke(*argv, "--broker", "mqtt://127.0.0.1:0")
        no_traceback(res)
        assert res.exit_code == 2, (argv, res.output)
        assert "port 0" in res.output, (argv, res.output)


def test_version_flag_prints_the_version() -> None:
    from orchestrator import __version__

    res = invoke("--version")
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"orchestrator {__version__}"


@pytest.mark.timeout(30)
def test_stderr_not_wrapped_at_80_columns_when_not_a_tty(tmp_path: Path) -> None:
    """An error line longer than 80 columns stays one line when stderr is a pipe (logs, CI, grep)."""
    missing = tmp_path / ("x" * 120 + ".yaml")
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(missing)],
                          capture_output=True, text=True, timeout=25, env=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if "no such configuration file" in line]
    assert len(lines) == 1 and str(missing) in lines[0], proc.stderr
