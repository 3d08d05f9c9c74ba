"""Calls from clients: one behaviour suite for a local motor and its remote proxy; errors cross the wire."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from inproc import client_for, running_robot

from orchestrator import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    Motor,
    PartOffline,
    UnknownMethod,
    UnknownResource,
)
from orchestrator.client import RobotClient
from orchestrator.resources.base import Base, Generic, Sensor
from orchestrator.resources.registry import default_registry

PARTS: list[dict[str, Any]] = [
    {"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
    {"name": "drive", "parent": "main", "resources": [
        {"name": "left", "model": "orc:sim:motor", "attributes": {"max_rpm": 600}},
        {"name": "right", "model": "orc:sim:motor", "attributes": {"max_rpm": 600}},
        {"name": "faulty", "model": "orc:sim:faulty"},
    ]},
    # a base on another part than its motors: it drives them through remote proxies
    {"name": "nav", "parent": "main", "resources": [
        {"name": "base", "model": "orc:sim:base", "attributes": {"left": "drive/left", "right": "drive/right"}},
    ]},
]


@pytest.fixture(params=["local", "amqtt", "mosquitto"])
async def motor(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Motor]:
    """The same motor model, either in-process or behind a remote proxy on a real broker."""
    if request.param == "local":
        reg = default_registry().get("orc:sim:motor")
        m = reg.build("m", {"max_rpm": 600}, {})
        assert isinstance(m, Motor)
        yield m
        return
    async with running_robot(tmp_path, request.param, PARTS) as (loaded, _), \
            client_for(loaded) as client:
        yield client.resource("drive/left", Motor)


# ---- the behaviour suite: written once, run on the local motor and on its remote proxy ------------

@pytest.mark.timeout(30)
async def test_motor_is_a_motor(motor: Motor) -> None:
    assert isinstance(motor, Motor)


@pytest.mark.timeout(30)
async def test_set_power_moves_and_stop_stops(motor: Motor) -> None:
    await motor.set_power(0.5)
    assert await motor.is_moving()
    assert await motor.get_power() == 0.5
    await motor.stop()
    assert not await motor.is_moving()
    assert await motor.get_power() == 0.0


@pytest.mark.timeout(30)
async def test_go_for_reaches_the_target_and_stops_by_itself(motor: Motor) -> None:
    start = await motor.get_position()
    await motor.go_for(rpm=600, revolutions=0.2)  # 20 ms of travel
    deadline = time.monotonic() + 5
    while await motor.is_moving():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert await motor.get_position() == pytest.approx(start + 0.2)


@pytest.mark.timeout(30)
async def test_out_of_range_power_is_invalid_argument(motor: Motor) -> None:
    with pytest.raises(InvalidArgument, match="power"):
        await motor.set_power(2.0)
    assert not await motor.is_moving()


# ---- errors -------------------------------------------------------------------------------------

@pytest.fixture(params=["amqtt", "mosquitto"])
async def robot(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RobotClient]:
    async with running_robot(tmp_path, request.param, PARTS) as (loaded, _), \
            client_for(loaded, timeout=5.0) as client:
        yield client


@pytest.mark.timeout(30)
async def test_errors_come_back_as_the_same_exception_and_the_part_keeps_serving(robot: RobotClient) -> None:
    with pytest.raises(UnknownResource, match="nope"):
        await robot.call("drive/nope", "stop")
    with pytest.raises(UnknownMethod, match="fly"):
        await robot.call("drive/left", "fly")
    with pytest.raises(InvalidArgument, match="power"):
        await robot.call("drive/left", "set_power", {"power": "fast"})
    with pytest.raises(InvalidArgument, match=r"unexpected|Extra"):
        await robot.call("drive/left", "set_power", {"power": 0.1, "turbo": True})
    faulty = robot.resource("drive/faulty", Generic)
    with pytest.raises(InternalError, match="boom"):
        await faulty.do_command({"raise": "boom"})
    # a hanging plugin: the caller gets DeadlineExceeded, the part goes on serving
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await robot.call("drive/faulty", "do_command", {"command": {"hang_s": 30}}, timeout=0.3)
    assert time.monotonic() - t0 < 2
    assert await faulty.do_command({"echo": 7}) == {"echo": 7}
    assert not await robot.resource("drive/left", Motor).is_moving()


@pytest.mark.timeout(30)
async def test_other_calls_are_served_while_one_hangs(robot: RobotClient) -> None:
    hang = asyncio.create_task(robot.call("drive/faulty", "do_command", {"command": {"hang_s": 2}}, timeout=3))
    left = robot.resource("drive/left", Motor)
    t0 = time.monotonic()
    for _ in range(20):
        await left.get_position()
    assert time.monotonic() - t0 < 1.5
    assert await hang == {"echo": None}


@pytest.mark.timeout(30)
async def test_call_to_an_unknown_part_fails_at_once_and_to_a_stopped_part_is_part_offline(
    tmp_path: Path,
) -> None:
    async with running_robot(tmp_path, "mosquitto", PARTS) as (loaded, parts), \
            client_for(loaded, timeout=0.5) as client:
        deadline = time.monotonic() + 5
        while client.rpc.status is None or client.rpc.status.state != "running":  # the robot's own view
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        with pytest.raises(UnknownResource, match="no part 'ghost'"):
            await client.call("ghost/x", "stop")
        assert time.monotonic() - t0 < 0.1, "a name that no part has fails at once, not at the deadline"
        await parts["nav"].close()
        deadline = time.monotonic() + 5
        while not client.rpc.offline("nav"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(PartOffline):
            await client.call("nav/base", "stop")


@pytest.mark.timeout(30)
async def test_base_drives_its_two_motors_on_another_part(robot: RobotClient) -> None:
    base = robot.resource("nav/base", Base)
    left, right = robot.resource("drive/left", Motor), robot.resource("drive/right", Motor)
    await base.set_power(linear=0.5, angular=0.25)
    assert await left.get_power() == pytest.approx(0.25)
    assert await right.get_power() == pytest.approx(0.75)
    assert await base.is_moving()
    await base.stop()
    assert not await left.is_moving() and not await right.is_moving()


@pytest.mark.timeout(30)
async def test_sensor_readings_and_resource_listing(robot: RobotClient) -> None:
    readings = await robot.resource("main/health", Sensor).get_readings()
    assert set(readings) == {"value"}
    listing = await robot.resources()
    assert {r["name"] for r in listing["drive"]} == {"left", "right", "faulty"}
    assert all(r["status"] == "ready" for rs in listing.values() for r in rs)


@pytest.mark.timeout(30)
async def test_malformed_calls_are_counted_and_dropped_and_forged_senders_refused(tmp_path: Path) -> None:
    from orchestrator.errors import ProtocolError
    from orchestrator.protocol.codec import encode, pack

    async with running_robot(tmp_path, "amqtt", PARTS) as (loaded, parts), \
            client_for(loaded, timeout=2.0) as client:
        server = parts["drive"].server
        topic = client.topics.call(client.id.sender, "drive", "left")
        for junk in (b"", b"\xc1", pack({"v": 1, "src": client.id.sender, "body": {"id": 5, "method": []}})):
            await client.mqtt.publish(topic, junk, qos=1, timeout=5)
        # a request whose envelope claims another sender than the topic's identity
        got = asyncio.get_running_loop().create_future()
        client.rpc._pending["forged"] = ("drive", got)
        await client.mqtt.publish(topic, encode("client/someone-else", {"id": "forged", "method": "stop"}),
                                  qos=1, timeout=5)
        with pytest.raises(ProtocolError, match="does not match"):
            await asyncio.wait_for(got, 5)
        assert await client.call("drive/left", "get_power") == 0.0  # still serving
        assert server.malformed == 4
