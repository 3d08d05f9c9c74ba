"""The upstream (cloud) link: a robot bridged to an upstream broker, on the embedded broker (our bridge in
`up`) and on mosquitto (its own bridge, configured as `orchestrator broker-config` writes it).

The link runs through a fault proxy, so a test can make it silent (stall: half-open, as a dead
uplink) and bring it back.  Default management: losing the link ends every session and stops every
actuator, and nothing starts again on return.  ``default_management: false``: a local client keeps
driving the robot for as long as the link is down.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cloud import KEEPALIVE, LinkWatch, cloud_robot, operator, running, until

from orchestrator import Motor, SessionExpired
from orchestrator.client import RobotClient

KINDS = ["amqtt", "mosquitto"]


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
                # `orchestrator status` shows the link's state and what its loss did
                shown = json.loads(await _cli(cloud, "status", "--json"))
                assert shown["upstream"]["state"] == "down" and shown["upstream"]["rule"] == "stopped", shown
                assert "upstream link down" in await _cli(cloud, "status")
                # the link comes back: noticed, published, and nothing starts moving by itself
                cloud.proxy.resume()
                await link.until("up", 30)
                assert not await other.resource("base/left", Motor).is_moving()
                assert json.loads(await _cli(cloud, "status", "--json"))["upstream"]["state"] == "up"
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


async def _cli(cloud: Any, *argv: str) -> str:
    """``orchestrator ARGV -c CONFIG`` as a user runs it (its own process); its output."""
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator", *argv, "-c",
                                                 str(cloud.setup.cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


async def _not(aw: Any) -> bool:
    return not await aw


async def _true(v: bool) -> bool:
    return v
