"""The bottom-up shutdown on a busy machine: slowness is waited for, only a hung part is forced.

Regression, issue 10 item 3: with 100 parts on the embedded broker, `up`'s shutdown forced 53 to 78 of
them.  The broker (and the machine) fell behind, so a parent heard nothing from its children for longer
than their detection interval and took each for hung once its stop budget ran out: "forced", SIGKILLed by
`up`, its `stop()` perhaps never run.  The same silence made `up` take a busy primary for a hung one.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultproxy import FaultProxy
from robot import Up, alive, robot_setup, three_level_parts

from orchestrator import Motor
from orchestrator.client import RobotClient
from orchestrator.config import load_config

STALL_S = 1.0  # every connection carries nothing: longer than the silence `up` allows the primary (0.65 s)
# then the broker runs in bursts, as a process starved of CPU does: it carries nothing for BURST_OFF_S (over
# twice a part's detection interval, 0.15 s), then what it holds for BURST_ON_S
BURST_OFF_S, BURST_ON_S = 0.4, 0.1
LEAF_BUDGET_S = 0.5
HOGS = 2  # busy processes, one per core of the machine the project runs on


def _motor(traces: Path, name: str) -> dict[str, Any]:
    return {"name": name, "model": "orc:sim:motor", "attributes": {"trace_file": str(traces / f"{name}.trace")}}


def _hog() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


async def _in_bursts(proxy: FaultProxy) -> None:
    """Until cancelled: carry nothing for BURST_OFF_S, then everything for BURST_ON_S."""
    while True:
        proxy.resume()
        await asyncio.sleep(BURST_ON_S)
        proxy.stall()
        await asyncio.sleep(BURST_OFF_S)


def _last_stop(traces: Path, name: str) -> float | None:
    """When the motor's probe last recorded power 0 (None if it is not stopped now)."""
    lines = [line.split() for line in (traces / f"{name}.trace").read_text().splitlines()]
    if not lines or float(lines[-1][1]) != 0.0:
        return None
    return float(lines[-1][0])


@pytest.mark.timeout(60)
async def test_shutdown_of_a_busy_robot_forces_no_part(tmp_path: Path) -> None:
    """A busy machine: CPU hogs on every core, and the parts' broker starved (every part reaches mosquitto
    through a proxy): as the shutdown begins it carries nothing for a second, then it runs in bursts.  Every
    part that can stop is waited for and stops by itself (its motor's stop() ran, it reported before its
    parent stopped); `up` does not take the primary, whose heartbeats stopped arriving, for hung.  The one
    truly hung part (its stop() blocks its event loop for a minute) is still forced: `up` sends it SIGTERM
    and kills it after its own deadline."""
    traces = tmp_path / "traces"
    traces.mkdir()
    moving = {"base": "wheel", "odo": "spin", "cam": "lens"}
    parts = three_level_parts(
        base={"resources": [_motor(traces, "wheel")]},
        odo={"stop_deadline_s": LEAF_BUDGET_S, "resources": [_motor(traces, "spin")]},
        cam={"stop_deadline_s": LEAF_BUDGET_S, "resources": [_motor(traces, "lens")]},
        arm={"stop_deadline_s": 0.5, "restart": {"policy": "never"},
             "resources": [{"name": "shoulder", "model": "orc:sim:motor", "attributes": {"hang_on_stop_s": 60}}]},
    )
    hogs: list[subprocess.Popen[bytes]] = []
    with robot_setup("mosquitto", tmp_path / "robot.yaml", parts, keepalive_s=5) as setup, \
            FaultProxy(setup.where) as proxy:
        doc = yaml.safe_load(setup.cfg.read_text())  # the parts and `up` reach the broker through the proxy
        doc["broker"]["urls"] = [f"mqtt://{proxy.address[0]}:{proxy.address[1]}"]
        setup.cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        topo = load_config(setup.cfg).topology
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:  # the test itself talks to mosquitto directly
                await w.all_running(list(topo.parts))
                async with RobotClient.from_config(setup.loaded, urls=[setup.where], sessions=False,
                                                   connect_timeout=15) as client:
                    for part, motor in moving.items():  # outside any session: only a stop() stops them
                        await client.resource(f"{part}/{motor}", Motor).set_power(0.3)
                pids = {p: w.states[p][1].pid for p in topo.parts}
            hogs = [_hog() for _ in range(HOGS)]
            proxy.stall()
            asked = time.time()
            up.terminate(signal.SIGTERM)
            await asyncio.sleep(STALL_S)
            bursts = asyncio.create_task(_in_bursts(proxy))
            try:
                assert await up.wait(topo.shutdown_bound() + 10) == 0, up.output()
            finally:
                bursts.cancel()
        finally:
            proxy.resume()
            for h in hogs:
                h.kill()
                h.wait()
            up.close()
    out = up.output()
    assert "the primary did not finish the shutdown" not in out, out
    tl = up.timeline()["timeline"]
    by = {e["part"]: e for e in tl["entries"]}
    assert set(by) == set(topo.parts), tl["entries"]
    assert {p for p, e in by.items() if e["forced"]} == {"arm"}, tl["entries"]
    assert by["arm"]["killed"], by["arm"]  # SIGTERM could not reach its blocked loop: SIGKILL after its deadline
    for part, e in by.items():
        if part == "arm":
            continue
        assert not e["killed"] and e["stopped_at"] is not None, e
        if e["parent"] is not None:
            assert e["reported_at"] is not None and e["reported_at"] <= by[e["parent"]]["began_at"], (e, by)
    for part, motor in moving.items():
        stopped = _last_stop(traces, motor)
        assert stopped is not None, f"{motor} still running: {part}'s stop() never ran"
        assert asked <= stopped <= by[part]["stopped_at"], (motor, stopped, by[part])
    assert not [p for p in pids.values() if p is not None and alive(p)]
