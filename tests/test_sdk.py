"""The SDK as a script or notebook user meets it, on real brokers: connect with the robot's name and a
broker URL alone, proxies discovered from what the parts list, moves that can be awaited and
cancelled (cancelling stops the actuator), telemetry and events as async iterators, a synchronous
client."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from inproc import running_robot

from orchestrator import (
    Actuator,
    Base,
    BrokerUnavailable,
    ConfigError,
    Gripper,
    InvalidArgument,
    Motor,
    Sensor,
    Servo,
    UnknownResource,
)
from orchestrator.client import ListedResource, RobotClient, SyncRobotClient, complete
from orchestrator.security.access import store_for

pytestmark = pytest.mark.timeout(40)

PARTS: list[dict[str, Any]] = [
    {"name": "main", "resources": [
        {"name": "health", "model": "orc:sim:sensor", "telemetry": {"period_s": 0.05}},
        {"name": "lamp", "model": "orc:sim:lamp"},
    ]},
    {"name": "drive", "parent": "main", "resources": [
        {"name": "left", "model": "orc:sim:motor", "attributes": {"max_rpm": 600}},
        {"name": "right", "model": "orc:sim:motor", "attributes": {"max_rpm": 600}},
        {"name": "base", "model": "orc:sim:base", "attributes": {"left": "left", "right": "right"}},
        {"name": "pan", "model": "orc:sim:servo"},
        {"name": "claw", "model": "orc:sim:gripper"},
    ]},
]


def test_every_kind_is_exported_where_motor_is() -> None:
    import orchestrator
    import orchestrator.resources

    for kind in ("Motor", "Base", "Servo", "Gripper", "Sensor", "Generic", "Actuator"):
        assert getattr(orchestrator, kind) is getattr(orchestrator.resources, kind)
    assert issubclass(Base, Actuator) and issubclass(Servo, Actuator) and issubclass(Gripper, Actuator)


def at(robot: Any, **kw: Any) -> RobotClient:
    """A client made from the robot's name, the broker's URL and the credentials directory only."""
    store = store_for(robot.loaded.config, robot.loaded.path)
    return RobotClient.at(robot.loaded.config.robot, robot.broker.url, credentials=store.directory, **kw)


async def test_a_client_from_robot_and_broker_alone_discovers_proxies_by_api(tmp_path: Path,
                                                                              broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, at(robot) as client:
        kinds = {"drive/left": Motor, "drive/base": Base, "drive/pan": Servo, "drive/claw": Gripper,
                 "main/health": Sensor}
        for path, kind in kinds.items():
            proxy = await client.discover(path)
            assert isinstance(proxy, kind), (path, proxy)
        left = await client.discover("drive/left")
        assert isinstance(left, Motor)
        await left.set_power(0.25)
        assert await left.get_power() == 0.25
        await left.stop()
        # an API no class here knows (the lamp is a plain actuator): its listed methods, as calls
        lamp = await client.discover("main/lamp")
        assert isinstance(lamp, ListedResource) and isinstance(lamp, Actuator)
        await lamp.switch_on()  # type: ignore[attr-defined]
        assert await lamp.is_moving()
        await lamp.stop()
        assert not await lamp.is_moving()
        with pytest.raises(UnknownResource):
            await client.discover("drive/nothing")


async def test_a_long_move_can_be_awaited_and_reports_progress(tmp_path: Path, broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as client:
        left = client.resource("drive/left", Motor)
        seen: list[float] = []
        took = await complete(left, left.go_for(rpm=600, revolutions=2), progress=seen.append, timeout=10)
        assert not await left.is_moving()
        assert await left.get_position() == pytest.approx(2.0, abs=0.05)
        assert seen and seen[-1] == pytest.approx(2.0, abs=0.05) and took >= 0.15  # 2 rev at 600 rpm: 0.2 s


async def test_motor_go_to_reaches_an_absolute_position_awaited_like_go_for(tmp_path: Path, broker_kind: str) -> None:
    """Regression: the issue lists go_to among the long moves, and Motor had none (go_for only)."""
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as client:
        left = client.resource("drive/left", Motor)
        await complete(left, left.go_to(rpm=600, position_revolutions=1.5), timeout=10)
        assert await left.get_position() == pytest.approx(1.5, abs=0.05)
        await complete(left, left.go_to(rpm=-600, position_revolutions=0.5), timeout=10)  # the sign of rpm: ignored
        assert await left.get_position() == pytest.approx(0.5, abs=0.05) and not await left.is_moving()
        hosted = next(r for r in (await client.resources())["drive"] if r["name"] == "left")
        listed = {m["name"]: m for m in hosted["methods"]}
        assert listed["go_to"]["actuating"], listed
        with pytest.raises(InvalidArgument):
            await left.go_to(rpm=600, position_revolutions=float("nan"))


async def test_servo_and_base_moves_are_awaited_the_same_way(tmp_path: Path, broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as client:
        pan = client.resource("drive/pan", Servo)
        seen: list[float] = []
        await complete(pan, pan.move(angle_deg=45), progress=seen.append, timeout=10)  # 180 deg/s: 0.25 s
        assert await pan.get_position() == pytest.approx(45, abs=0.5) and not await pan.is_moving()
        assert seen[-1] == pytest.approx(45, abs=0.5)
        base = client.resource("drive/base", Base)
        await complete(base, base.move_straight(distance_mm=200, mm_per_s=1000), timeout=10)  # 1 rev at 600 rpm
        assert not await base.is_moving()
        assert await client.resource("drive/left", Motor).get_position() == pytest.approx(1.0, abs=0.05)


async def test_cancelling_an_awaited_move_stops_the_actuator(tmp_path: Path, broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as client:
        left = client.resource("drive/left", Motor)
        moving = asyncio.Event()
        task = asyncio.create_task(complete(left, left.go_for(rpm=60, revolutions=50),
                                            progress=lambda _: moving.set()))
        await asyncio.wait_for(moving.wait(), 5)
        assert await left.is_moving()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await left.is_moving(), "a cancelled move left the motor running"
        # a timeout is a cancellation too
        with pytest.raises(TimeoutError):
            await complete(left, left.go_for(rpm=60, revolutions=50), timeout=0.3)
        assert not await left.is_moving()


async def test_telemetry_and_events_are_async_iterators(tmp_path: Path, broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as client:
        got: list[tuple[str, dict[str, Any]]] = []
        async with client.telemetry("main/health") as readings:
            async for source, values in readings:
                got.append((source, values))
                if len(got) == 3:
                    break
        assert {s for s, _ in got} == {"main/health"} and all(isinstance(v, dict) and v for _, v in got)
        async with client.events() as events:
            async with robot.client(identity="other"):  # its session opens: the primary says so
                async for event in events:
                    if event["source"] == "sessions" and event["kind"] == "opened":
                        assert event["part"] == robot.loaded.topology.primary
                        break
        assert client.dropped == 0


async def test_the_sync_client_drives_a_motor_and_its_session_end_stops_it(tmp_path: Path,
                                                                           broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as watcher:
        store = store_for(robot.loaded.config, robot.loaded.path)

        def script() -> tuple[float, float]:
            with SyncRobotClient.at(robot.loaded.config.robot, robot.broker.url,
                                    credentials=store.directory) as sync:
                left = sync.resource("drive/left", Motor)
                took = sync.complete(left, left.go_for(rpm=600, revolutions=1))
                left.set_power(0.5)
                return took, left.get_power()

        async with watcher.events("drive") as events:
            took, power = await asyncio.to_thread(script)
            assert power == 0.5 and took >= 0
            # the script's session ended when it closed: the part that hosts the motor says so
            async with asyncio.timeout(10):
                async for event in events:
                    if event["source"] == "sessions" and event["kind"] == "stopped" and "left" in event["resources"]:
                        break
        assert not await watcher.resource("drive/left", Motor).is_moving(), "the sync script's motor still runs"


async def test_a_client_from_a_config_naming_models_not_installed_here_connects(tmp_path: Path,
                                                                              broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot:
        path = Path(robot.loaded.path)
        elsewhere = path.with_name("as-the-laptop-sees-it.yaml")  # same directory: same credentials
        text = path.read_text()  # noqa: ASYNC240 - a small file
        elsewhere.write_text(text.replace("orc:sim:gripper", "acme:not:installed"))
        async with RobotClient.from_config(elsewhere) as client:
            left = client.resource("drive/left", Motor)
            await left.set_power(0.1)
            assert await left.get_power() == 0.1
            await left.stop()


# A script that Ctrl-C interrupts in the middle of a sync complete(): it prints what the motor does at
# the moment its `except KeyboardInterrupt` runs.
CTRL_C_SCRIPT = r"""
import sys
from orchestrator import Motor
from orchestrator.client import SyncRobotClient

robot, url, credentials = sys.argv[1:4]
with SyncRobotClient.at(robot, url, credentials=credentials) as sync:
    left = sync.resource("drive/left", Motor)
    try:
        sync.complete(left, left.aio.go_for(rpm=60, revolutions=100), progress=lambda p: print("moving", flush=True))
    except KeyboardInterrupt:
        print("interrupted; moving:", left.is_moving(), flush=True)
"""


async def test_ctrl_c_during_a_sync_complete_returns_only_once_the_actuator_stopped(tmp_path: Path,
                                                                                  broker_kind: str) -> None:
    """Regression: the KeyboardInterrupt reached the script while the motor still moved (the stop ran
    on the client's loop a moment later), though sdk.md says Ctrl-C during complete stops it."""
    async with running_robot(tmp_path, broker_kind, PARTS) as robot, robot.client() as watcher:
        store = store_for(robot.loaded.config, robot.loaded.path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CTRL_C_SCRIPT, robot.loaded.config.robot, robot.broker.url, str(store.directory),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(20):
                line = await proc.stdout.readline()
                assert line == b"moving\n", line + await proc.stderr.read()  # type: ignore[union-attr]
                assert await watcher.resource("drive/left", Motor).is_moving()
                proc.send_signal(signal.SIGINT)
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert b"interrupted; moving: False" in out, out + err
        assert proc.returncode == 0 and b"destroyed" not in err and b"Traceback" not in err, err
        assert not await watcher.resource("drive/left", Motor).is_moving()


def sync_client_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "orchestrator.sync-client"}


async def test_a_sync_client_that_fails_to_connect_leaves_no_thread(tmp_path: Path, broker_kind: str) -> None:
    """Regression: a refused connect (no credentials for a secured robot) left the client's loop thread
    running, since ``with`` never reached ``__exit__``; a bad URL did the same."""
    async with running_robot(tmp_path, broker_kind, PARTS) as robot:
        before = sync_client_threads()

        def script() -> None:
            with pytest.raises(BrokerUnavailable), SyncRobotClient.at(robot.loaded.config.robot, robot.broker.url):
                pass
            with pytest.raises(ConfigError):
                SyncRobotClient.at(robot.loaded.config.robot, "http://nowhere")

        await asyncio.to_thread(script)
        assert sync_client_threads() - before == set()


async def test_a_refused_login_says_what_to_check(tmp_path: Path, broker_kind: str) -> None:
    """Regression: connecting to a secured robot without credentials, or with a wrong robot name or
    password, said only "broker refused the connection: Not authorized"."""
    async with running_robot(tmp_path, broker_kind, PARTS) as robot:
        name = robot.loaded.config.robot
        with pytest.raises(BrokerUnavailable, match=r"connected anonymously.*credentials="):
            async with RobotClient.at(name, robot.broker.url):
                pass
        refused = re.escape(f"as {name}/client/operator: is the robot named '{name}'")
        with pytest.raises(BrokerUnavailable, match=refused):
            async with RobotClient.at(name, robot.broker.url, password="wrong"):
                pass


async def test_the_sync_client_follows_telemetry_and_events_as_blocking_iterators(tmp_path: Path,
                                                                                  broker_kind: str) -> None:
    async with running_robot(tmp_path, broker_kind, PARTS) as robot:
        store = store_for(robot.loaded.config, robot.loaded.path)

        def script() -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
            with SyncRobotClient.at(robot.loaded.config.robot, robot.broker.url, credentials=store.directory) as sync:
                readings = []
                with sync.telemetry("main/health") as stream:
                    for item in stream:
                        readings.append(item)
                        if len(readings) == 2:
                            break
                with sync.events() as events:
                    sync.resource("drive/left", Motor).set_power(0.2)  # our session now owns it: an event
                    for event in events:
                        if event["source"] == "sessions" and event["kind"] == "owned":
                            return readings, event
            raise AssertionError("the events stream ended")

        readings, event = await asyncio.wait_for(asyncio.to_thread(script), 20)
        assert [source for source, _ in readings] == ["main/health", "main/health"]
        assert event["part"] == "drive"
