"""A part that loses its broker stops its own actuators (in-process part, real mosquitto)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from inproc import running_robot

from orchestrator import Motor
from orchestrator.resources.base import Actuator
from orchestrator.runtime.main import make_part
from orchestrator.transport.tcpinfo import TcpInfo


@pytest.mark.timeout(30)
async def test_part_that_loses_the_broker_stops_its_actuators(tmp_path: Path) -> None:
    parts = [{"name": "main", "resources": [{"name": "m", "model": "orc:sim:motor"},
                                            {"name": "n", "model": "orc:sim:motor"}]}]
    async with running_robot(tmp_path, "mosquitto", parts, broker_keepalive_s=1) as robot:
        part = robot.parts["main"]
        motors = [r for r in part.host.resources.values() if isinstance(r, Actuator)]
        for m in motors:
            await m.set_power(0.5)  # type: ignore[attr-defined]
        assert all([await m.is_moving() for m in motors])
        lost = asyncio.Event()
        part.client.on_disconnect(lambda _reason: lost.set())
        assert robot.broker.log_path is not None
        await asyncio.to_thread(_kill_mosquitto, str(robot.broker.log_path.parent))
        await asyncio.wait_for(lost.wait(), 10)
        deadline = time.monotonic() + 5
        while any([await m.is_moving() for m in motors]):
            assert time.monotonic() < deadline, "actuators still moving after the broker was lost"
            await asyncio.sleep(0.01)


def _kill_mosquitto(conf_dir: str) -> None:
    import subprocess

    subprocess.run(["pkill", "-KILL", "-f", f"mosquitto -c {conf_dir}"], check=True)


@pytest.mark.timeout(30)
async def test_a_stalled_event_loop_gets_its_actuators_emergency_stopped(tmp_path: Path) -> None:
    parts = [{"name": "main", "watchdog_s": 0.2, "resources": [
        {"name": "m", "model": "orc:sim:motor"}, {"name": "faulty", "model": "orc:sim:faulty"}]}]
    async with running_robot(tmp_path, "mosquitto", parts) as robot:
        part = robot.parts["main"]
        m = part.host.resources["m"]
        await m.set_power(0.5)  # type: ignore[attr-defined]
        faulty = part.host.resources["faulty"]
        t0 = time.monotonic()
        await faulty.do_command({"block_s": 1.0})  # blocks this loop: nothing async can run
        blocked = time.monotonic() - t0
        assert blocked >= 1.0
        assert part.watchdog is not None and part.watchdog.fired == 1
        assert part.watchdog.last_stopped == ["m"]
        assert getattr(m, "emergency_stops") == 1  # noqa: B009
        assert not await m.is_moving()


@pytest.mark.timeout(40)
async def test_a_link_lost_again_right_after_a_reconnect_still_stops_the_actuators(tmp_path: Path) -> None:
    """After its link check fired, a part believed its link again only at the first heartbeat echo of a
    new connection: a link that failed again before that echo (within a heartbeat period of the
    reconnect) went unnoticed until the keep-alive (here 5 s) or a session window."""
    parts = [{"name": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]}]
    async with running_robot(tmp_path, "mosquitto", parts, start=False, broker_keepalive_s=5) as robot:
        with FaultProxy((robot.broker.host, robot.broker.port)) as proxy:
            part = make_part(robot.loaded, "main", urls=[proxy.address])
            await part.start()
            try:
                m = part.host.resources["m"]
                assert isinstance(m, Motor)
                bound = part.link_timeout_s + 2 * part.part_config.heartbeat_s + 1.0
                await m.set_power(0.5)
                proxy.stall()  # the link carries nothing: the link check stops the motor
                await _until_stopped(m, bound)
                reconnected = asyncio.Event()

                async def fail_again(birth: int) -> None:  # runs right after the CONNACK, before any echo
                    proxy.stall()
                    reconnected.set()

                part.client.on_connect(fail_again)
                proxy.reset()  # RST to both ends (what the stall held is gone): the part reconnects at once
                proxy.resume()
                await asyncio.wait_for(reconnected.wait(), 10)
                await m.set_power(0.5)
                t0 = time.monotonic()
                await _until_stopped(m, bound)
                assert time.monotonic() - t0 < bound
            finally:
                proxy.resume()
                await part.close()


async def _until_stopped(m: Motor, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await m.is_moving():
        assert time.monotonic() < deadline, f"the motor still moves {timeout:.1f} s after the link failed"
        await asyncio.sleep(0.01)


# -- regression: a lossy link stopped the motor (CI: "no echo of our heartbeats for 1.20 s" at 10 % loss) --

RECOVERING = TcpInfo(retransmits=2, unacked=3, sacked=2, lost=1, retrans=1, peer_silent_s=0.05, data_segs_in=None)


@pytest.mark.timeout(40)
async def test_ten_percent_loss_stall_in_tcp_is_waited_out_up_to_twice_the_link_timeout(tmp_path: Path) -> None:
    """At 10 % loss a segment lost twice in a row stalls TCP (and our heartbeats' echo) for over a second
    with the link alive: the echo check stopped the motor at link_timeout_s (1 s) in CI.  While the kernel
    shows TCP recovering a loss on a link that answers, the check waits, but never past twice its timeout."""
    parts = [{"name": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]}]
    async with running_robot(tmp_path, "mosquitto", parts, start=False, broker_keepalive_s=30) as robot:
        with FaultProxy((robot.broker.host, robot.broker.port)) as proxy:
            part = make_part(robot.loaded, "main", urls=[proxy.address])
            await part.start()
            try:
                m = part.host.resources["m"]
                assert isinstance(m, Motor)
                part.client.tcp_info = lambda: RECOVERING  # type: ignore[method-assign]
                timeout, beat = part.link_timeout_s, part.part_config.heartbeat_s
                await m.set_power(0.5)
                t0 = time.monotonic()
                proxy.stall()  # the echo stops; the (faked) kernel says TCP is recovering a loss
                await _until_stopped(m, 2 * timeout + 2 * beat + 1.0)
                took = time.monotonic() - t0
                assert took > timeout + 2 * beat, f"stopped after {took:.2f} s: the loss recovery was not waited for"
                assert part.link_waits == 1 and part.link_drops == 1
            finally:
                proxy.resume()
                await part.close()


@pytest.mark.timeout(40)
async def test_a_frozen_broker_whose_kernel_still_acknowledges_is_stopped_at_the_link_timeout(tmp_path: Path) -> None:
    """The wait for TCP is only for a link recovering a loss: a broker that reads nothing (here the proxy
    stops forwarding; its kernel acknowledges every byte) shows no loss, and the check fires on time."""
    parts = [{"name": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]}]
    async with running_robot(tmp_path, "mosquitto", parts, start=False, broker_keepalive_s=30) as robot:
        with FaultProxy((robot.broker.host, robot.broker.port)) as proxy:
            part = make_part(robot.loaded, "main", urls=[proxy.address])
            await part.start()
            try:
                m = part.host.resources["m"]
                assert isinstance(m, Motor)
                assert part.client.tcp_info() is not None  # the kernel's real view, read on this machine
                await m.set_power(0.5)
                proxy.stall()
                await _until_stopped(m, part.link_timeout_s + 2 * part.part_config.heartbeat_s + 1.0)
                assert part.link_waits == 0 and part.link_drops == 1
            finally:
                proxy.resume()
                await part.close()
