"""Whole robots as real processes on real brokers: start, status, bottom-up shutdown, faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import make_credentials
from robot import RobotSetup, Up, alive, robot_setup, three_level_parts, unique_robot, write_config

from orchestrator import Motor, SessionExpired
from orchestrator.client import RobotClient
from orchestrator.config import load_config
from orchestrator.protocol.codec import encode
from orchestrator.protocol.messages import PartState, PartStateName
from orchestrator.transport.client import MqttClient, Will

KINDS = ["amqtt", "mosquitto"]
PARTS = ["main", "base", "odo", "arm", "cam"]


def entries_by_part(timeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["part"]: e for e in timeline["entries"]}


def assert_bottom_up(tl: dict[str, Any], forced: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    by = entries_by_part(tl)
    assert set(by) == set(PARTS)
    for name, e in by.items():
        assert e["forced"] is (name in forced), (name, e)
        parent = e["parent"]
        if parent is None or name in forced:
            continue
        # every part reported stopped before its parent began to stop its own resources
        assert e["reported_at"] <= by[parent]["began_at"], (name, e, by[parent])
        assert e["stopped_at"] <= e["reported_at"]
    for e in by.values():
        if e["part"] not in forced:
            assert e["stopped_at"] <= tl["clients_closed_at"]  # all before the primary closes clients
    assert by["main"]["began_at"] >= max(
        (e["reported_at"] for n, e in by.items() if e["parent"] == "main" and n not in forced), default=0)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_three_level_robot_starts_and_sigterm_stops_it_bottom_up(tmp_path: Path, kind: str) -> None:
    with robot_setup(kind, tmp_path / "robot.yaml", three_level_parts()) as setup:
        cfg = setup.cfg
        up = Up(cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                await w.until(lambda: w.status is not None and w.status.state == "running", 10, "robot running")
                res = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "orchestrator", "status", str(cfg), "--json",
                     "--broker", f"mqtt://{setup.where[0]}:{setup.where[1]}"],
                    capture_output=True, text=True, timeout=30)
                assert res.returncode == 0, res.stderr
                st = json.loads(res.stdout)
                assert {p: v["state"] for p, v in st["parts"].items()} == dict.fromkeys(PARTS, "running")
                pids = set(w.pids)
                assert len(pids) == len(PARTS)
                t0 = time.monotonic()
                up.terminate(signal.SIGTERM)
                bound = load_config(cfg).topology.shutdown_bound() + 5
                assert await up.wait(bound) == 0, up.output()
                elapsed = time.monotonic() - t0
                if kind == "mosquitto":  # the embedded broker went down with `up`; mosquitto outlives it
                    await w.until(lambda: w.timeline is not None, 5, "timeline on the wire")
                    # a clean stop leaves "stopped" retained: no Will was published after it
                    await w.until(lambda: all(w.state(p) == "stopped" for p in PARTS), 5, "all stopped")
                    assert "offline" not in [s for _, p, s in w.log if p in PARTS]
            tl = up.timeline()["timeline"]
            assert_bottom_up(tl)
            assert not [p for p in pids if alive(p)], "orphan part processes"
            out = up.output()
            assert "shutdown of" in out and "FORCED" not in out
            assert "connection lost" not in out, "a part that stopped cleanly had its Will published"
            assert elapsed < bound
        finally:
            up.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_hung_subpart_is_forced_and_the_rest_stops_in_order(tmp_path: Path, kind: str) -> None:
    parts = three_level_parts(arm={
        "stop_deadline_s": 0.5,
        "resources": [{"name": "shoulder", "model": "orc:sim:motor", "attributes": {"hang_on_stop_s": 60}}],
    })
    with robot_setup(kind, tmp_path / "robot.yaml", parts, shutdown_timeout_s=10) as setup:
        cfg = setup.cfg
        topo = load_config(cfg).topology
        up = Up(cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                arm_pid = w.states["arm"][1].pid
                t0 = time.monotonic()
                up.terminate(signal.SIGTERM)
                assert await up.wait(topo.shutdown_bound() + 5) == 0, up.output()
                elapsed = time.monotonic() - t0
            data = up.timeline()
            tl = data["timeline"]
            assert_bottom_up(tl, forced={"arm"})
            arm = entries_by_part(tl)["arm"]
            assert arm["forced"] and arm["killed"]
            assert "arm" in data["killed"]
            assert arm_pid is not None and not alive(arm_pid)
            # the whole shutdown stays within the configured bound (plus process start-up of python)
            assert elapsed <= topo.shutdown_bound() + 2.0, (elapsed, topo.shutdown_bound())
        finally:
            up.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_kill9_subpart_goes_offline_fast_and_is_restarted(tmp_path: Path, kind: str) -> None:
    with robot_setup(kind, tmp_path / "robot.yaml", three_level_parts()) as setup:
        cfg = setup.cfg
        up = Up(cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                await w.until(lambda: w.status is not None and w.status.state == "running", 10, "robot running")
                birth, st = w.states["arm"]
                assert st.pid is not None
                killed_at = time.time()
                os.kill(st.pid, signal.SIGKILL)

                def arm_offline() -> bool:
                    s = w.status
                    return s is not None and not s.parts["arm"].online and s.parts["arm"].birth == birth

                await w.until(arm_offline, 5, "primary marks arm offline")
                assert w.status is not None
                marked = w.status.parts["arm"].since  # the primary's own time of the change
                assert marked - killed_at < 0.100, f"offline after {(marked - killed_at) * 1000:.1f} ms"
                assert w.status.state == "degraded"
                # `up` restarts it (policy on-failure): a new birth, running again
                await w.until(lambda: w.states["arm"][0] > birth and w.state("arm") == "running", 20,
                              "arm restarted")
                await w.until(lambda: w.status is not None and w.status.state == "running", 10, "running again")
                up.terminate(signal.SIGINT)
                assert await up.wait(30) == 0, up.output()
            assert_bottom_up(up.timeline()["timeline"])
            assert not [p for p in w.pids if alive(p)]
        finally:
            up.close()


@pytest.mark.timeout(90)
async def test_late_will_of_an_old_connection_does_not_mark_the_new_one_offline(tmp_path: Path) -> None:
    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        cfg = setup.cfg
        up = Up(cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                await w.until(lambda: w.status is not None and w.status.state == "running", 10, "robot running")
                birth, _ = w.states["arm"]
                topic = w.topics.part_state("arm")
                # an older connection of "arm" (smaller birth) whose link dies only now: its Will is late
                old_will = encode("part/arm", PartState(state=PartStateName.OFFLINE, reason="old link"),
                                  birth=birth - 1)
                arm = setup.access("part", "arm")  # an older connection of arm itself, with its own credential
                ghost = MqttClient(f"{setup.robot}.ghost", [setup.where], will=lambda _b: Will(topic, old_will),
                                   username=arm.username, password=arm.password)
                await ghost.start()
                await ghost.close(disconnect=False)  # socket dropped: the broker publishes the Will
                await w.until(lambda: birth - 1 in w.births.get("arm", set()), 10, "the late Will on the wire")
                # make the primary publish a fresh status: kill another part
                _, cam = w.states["cam"]
                assert cam.pid is not None
                os.kill(cam.pid, signal.SIGKILL)
                await w.until(lambda: w.status is not None and not w.status.parts["cam"].online, 5, "cam offline")
                assert w.status is not None
                assert w.status.parts["arm"].online and w.status.parts["arm"].birth == birth
                up.terminate()
                assert await up.wait(30) == 0
        finally:
            up.close()


@pytest.mark.timeout(90)
async def test_shutdown_requested_over_mqtt(tmp_path: Path) -> None:
    with robot_setup("amqtt", tmp_path / "robot.yaml", three_level_parts()) as setup:
        cfg = setup.cfg
        up = Up(cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                res = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "orchestrator", "shutdown", str(cfg), "--reason", "test"],
                    capture_output=True, text=True, timeout=30)
                assert res.returncode == 0, res.stderr
                await w.until(lambda: w.timeline is not None, 20, "timeline")
            assert await up.wait(30) == 0, up.output()
            tl = up.timeline()["timeline"]
            assert "test" in tl["reason"]
            assert "connection lost" not in up.output()
            assert_bottom_up(tl)
        finally:
            up.close()


async def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator", *argv],
                                   capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(90)
async def test_cli_call_resources_and_sighup_reload(tmp_path: Path) -> None:
    with robot_setup("amqtt", tmp_path / "robot.yaml", three_level_parts()) as setup:
        cfg = setup.cfg
        up = Up(cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                res = await _cli("call", "base/left", "set_power", "--args", '{"power": 0.5}', "-c", str(cfg))
                assert res.returncode == 0 and res.stdout.strip() == "null", res.stderr
                res = await _cli("call", "base/left", "get_power", "-c", str(cfg))
                assert json.loads(res.stdout) == 0.5
                res = await _cli("call", "base/left", "set_power", "--args", '{"power": 7}', "-c", str(cfg))
                assert res.returncode == 1 and "invalid_argument" in res.stderr
                res = await _cli("call", "base/nothing", "stop", "-c", str(cfg))
                assert res.returncode == 1 and "unknown_resource" in res.stderr
                res = await _cli("resources", "-c", str(cfg), "--json")
                listing = json.loads(res.stdout)
                assert {r["name"] for r in listing["arm"]} == {"shoulder", "elbow"}
                # SIGHUP: the file is re-read; arm gets a new resource, the rest keeps running
                text = cfg.read_text().replace("name: elbow", "name: wrist")
                cfg.write_text(text)
                up.terminate(signal.SIGHUP)

                async def arm_has_wrist() -> bool:
                    r = await _cli("resources", "-c", str(cfg), "--json")
                    return {x["name"] for x in json.loads(r.stdout)["arm"]} == {"shoulder", "wrist"}

                deadline = time.monotonic() + 20
                while not await arm_has_wrist():
                    assert time.monotonic() < deadline, up.output()
                res = await _cli("call", "base/left", "get_power", "-c", str(cfg))
                assert json.loads(res.stdout) == 0.5, "an untouched resource kept running through the reload"
                up.terminate()
                assert await up.wait(30) == 0
            # the motor that was left running was stopped by the shutdown
            tl = up.timeline()["timeline"]
            assert "left" in entries_by_part(tl)["base"]["resources_stopped"]
        finally:
            up.close()


@pytest.mark.timeout(60)
async def test_a_port_already_in_use_is_a_clear_error_and_nothing_starts(tmp_path: Path) -> None:
    import socket as _socket

    holder = _socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        cfg = write_config(tmp_path / "robot.yaml", unique_robot(), {"embedded": {"host": "127.0.0.1", "port": port}},
                           three_level_parts())
        make_credentials(load_config(cfg))
        res = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator", "up", str(cfg)],
                                      capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert f"127.0.0.1:{port} is already in use" in res.stdout + res.stderr
        assert "part main" not in res.stdout
        res = await _cli("broker", "--port", str(port))
        assert res.returncode != 0 and "already in use" in res.stdout + res.stderr
    finally:
        holder.close()


@pytest.mark.timeout(60)
async def test_killing_up_stops_every_part_by_itself(tmp_path: Path) -> None:
    """`up` killed with SIGKILL (it cannot stop anything): each part gets SIGTERM from the kernel (its parent,
    the fork server, dies with `up`) and stops its actuators and exits; none is left behind."""
    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                pids = set(w.pids)
                up.proc.kill()
                await w.until(lambda: all(w.state(p) == "stopped" for p in PARTS), 20, "every part stopped")
            deadline = time.monotonic() + 10
            while [p for p in pids if alive(p)]:
                assert time.monotonic() < deadline, "parts left behind after `up` was killed"
                await asyncio.sleep(0.05)  # polling /proc: no event to await for another process's exit
        finally:
            up.close()


def _motor(traces: Path, name: str) -> dict[str, Any]:
    return {"name": name, "model": "orc:sim:motor", "attributes": {"trace_file": str(traces / f"{name}.trace")}}


def _last_stop(traces: Path, name: str) -> float | None:
    """When the motor's probe last recorded power 0 (None if it is not stopped now)."""
    lines = [line.split() for line in (traces / f"{name}.trace").read_text().splitlines()]
    if not lines or float(lines[-1][1]) != 0.0:
        return None
    return float(lines[-1][0])


async def _run_outside_a_session(setup: RobotSetup, *motors: str) -> None:
    """Set each motor running at 40 % outside any session: only its part's stop() stops it then."""
    async with RobotClient.from_config(setup.loaded, urls=[setup.where], sessions=False,
                                       connect_timeout=15) as client:
        for target in motors:
            await client.resource(target, Motor).set_power(0.4)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_up_stops_every_part_gracefully_bottom_up_when_the_primary_hangs_in_a_shutdown(
        tmp_path: Path, kind: str) -> None:
    """Regression, issue 8 defect 1 (`up` killed healthy parts without stopping them): the primary hangs
    (frozen: it never runs the shutdown `up` asks for); `up` stops every other part itself, leaves first,
    with SIGTERM, each part stops its motors and exits by itself, nobody but the hung primary is killed,
    and the timeline says `up` did it, each part once."""
    traces = tmp_path / "traces"
    traces.mkdir()
    parts = [{"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
             {"name": "base", "parent": "main", "resources": [_motor(traces, "wheel")]},
             {"name": "odo", "parent": "base", "resources": [_motor(traces, "spin")]}]
    main_pid: int | None = None
    with robot_setup(kind, tmp_path / "robot.yaml", parts) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo"])
                await _run_outside_a_session(setup, "base/wheel", "odo/spin")
                pids = {p: w.states[p][1].pid for p in ("main", "base", "odo")}
            main_pid = pids["main"]
            assert main_pid is not None
            os.kill(main_pid, signal.SIGSTOP)  # the primary hangs
            asked = time.time()
            up.terminate(signal.SIGTERM)
            await up.wait(60)
        finally:
            if main_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(main_pid, signal.SIGKILL)
            up.close()
    out = up.output()
    assert "the primary did not finish the shutdown" in out and "stops the remaining parts itself" in out, out
    tl = up.timeline()["timeline"]
    by = entries_by_part(tl)
    assert len(tl["entries"]) == len(by) == 3, tl["entries"]  # each part once
    for name in ("base", "odo"):
        e = by[name]
        assert e["by"] == "up" and not e["killed"] and not e["forced"], e
    assert by["odo"]["stopped_at"] <= by["base"]["asked_at"], "the leaf is stopped before its parent is asked"
    assert by["main"]["killed"]  # only the hung primary
    for motor, part in (("spin", "odo"), ("wheel", "base")):
        stopped = _last_stop(traces, motor)
        assert stopped is not None, f"{motor} still running: {part}'s stop() never ran"
        assert asked <= stopped <= by[part]["stopped_at"], (motor, stopped, by[part])
    assert not [p for p in pids.values() if p is not None and alive(p)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
async def test_up_stops_every_part_when_the_primary_hangs_in_the_middle_of_a_shutdown(
        tmp_path: Path, kind: str) -> None:
    """Issue 8 scenario: the primary hangs *in the middle of* its shutdown (it asked its children; base and
    odo have stopped and reported; arm is still stopping a slow motor).  Every other part still stops its
    actuators and exits by itself, nobody but the hung primary is killed, and the timeline lists every part
    once: the ones the primary stopped before it hung (from their reports) and the ones `up` stopped."""
    traces = tmp_path / "traces"
    traces.mkdir()
    slow = {**_motor(traces, "shoulder"), "attributes": {"trace_file": str(traces / "shoulder.trace"),
                                                         "hang_on_stop_s": 3.0}}
    parts = [{"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
             {"name": "base", "parent": "main", "resources": [_motor(traces, "wheel")]},
             {"name": "odo", "parent": "base", "resources": [_motor(traces, "spin")]},
             {"name": "arm", "parent": "main", "stop_deadline_s": 8.0, "resources": [slow]}]
    main_pid: int | None = None
    with robot_setup(kind, tmp_path / "robot.yaml", parts) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo", "arm"])
                await _run_outside_a_session(setup, "base/wheel", "odo/spin", "arm/shoulder")
                pids = {p: w.states[p][1].pid for p in ("main", "base", "odo", "arm")}
                main_pid = pids["main"]
                assert main_pid is not None
                asked = time.time()
                up.terminate(signal.SIGTERM)
                # the primary is in the middle of its shutdown: one branch done, arm still stopping
                await w.until(lambda: w.state("base") == "stopped" and w.state("arm") == "stopping", 20,
                              "base stopped while arm is still stopping")
                os.kill(main_pid, signal.SIGSTOP)  # the primary hangs there
                hung = time.time()
            await up.wait(60)
        finally:
            if main_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(main_pid, signal.SIGKILL)
            up.close()
    out = up.output()
    assert "the primary did not finish the shutdown" in out and "stops the remaining parts itself" in out, out
    tl = up.timeline()["timeline"]
    by = entries_by_part(tl)
    assert len(tl["entries"]) == len(by) == 4, tl["entries"]  # each part once, those stopped before the hang too
    for name in ("base", "odo"):  # stopped by their parents before the primary hung, as their reports say
        assert by[name]["by"] == "" and not by[name]["killed"] and not by[name]["forced"], by[name]
        assert by[name]["stopped_at"] is not None and by[name]["stopped_at"] <= hung, by[name]
    assert by["odo"]["stopped_at"] <= by["base"]["began_at"], "bottom-up in the part of the shutdown done"
    assert not by["arm"]["killed"] and not by["arm"]["forced"], by["arm"]  # it stopped and exited by itself
    assert by["main"]["killed"]  # only the hung primary
    for motor in ("spin", "wheel", "shoulder"):
        stopped = _last_stop(traces, motor)
        assert stopped is not None, f"{motor} still running"
        assert asked <= stopped, (motor, stopped)
    assert not [p for p in pids.values() if p is not None and alive(p)]


@pytest.mark.timeout(90)
async def test_the_timeline_says_when_each_stop_request_left_and_lists_a_forced_part_once(tmp_path: Path) -> None:
    """Regression, issue 8 defect 6: the shutdown timeline recorded when the primary decided to ask a part
    to stop, not when the request left, and a forced part appeared twice.  Every request leaves before
    the part it goes to begins stopping (one machine, one clock), and every part has one line."""
    parts = three_level_parts(arm={
        "stop_deadline_s": 0.5,
        "resources": [{"name": "shoulder", "model": "orc:sim:motor", "attributes": {"hang_on_stop_s": 60}}],
    })
    with robot_setup("mosquitto", tmp_path / "robot.yaml", parts, shutdown_timeout_s=10) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
            up.terminate(signal.SIGTERM)
            assert await up.wait(load_config(setup.cfg).topology.shutdown_bound() + 5) == 0, up.output()
        finally:
            up.close()
    tl = up.timeline()["timeline"]
    names = [e["part"] for e in tl["entries"]]
    assert sorted(names) == sorted(PARTS), names  # once each, the forced arm included
    by = entries_by_part(tl)
    assert by["arm"]["forced"]
    for e in tl["entries"]:
        if e["parent"] is not None and e["began_at"] is not None:
            assert e["asked_at"] is not None and e["asked_at"] <= e["began_at"], e
            assert e["began_at"] - e["asked_at"] < 1.0, e  # the request's time, not a decision long before


def _first_stop_after(traces: Path, name: str, t0: float) -> float | None:
    """When the motor's probe first recorded power 0 after ``t0``."""
    for line in (traces / f"{name}.trace").read_text().splitlines():
        t, power = (float(x) for x in line.split()[:2])
        if t >= t0 and power == 0.0:
            return t
    return None


@pytest.mark.timeout(90)
async def test_a_session_ended_through_the_management_api_stops_bottom_up_then_closes_the_clients_connections(
        tmp_path: Path) -> None:
    """Issue 8, what to build 2: a session ended by hand (another operator, through the primary's session API)
    stops what it owned bottom-up (odo, then base, then the primary), says ``ended`` only after every part
    stopped, and only then has the embedded broker close the owner's connections; the SDK sees a clean end
    with the reason (callback, ``SessionExpired`` on the next call, heartbeats stopped) and opens a new one."""
    traces = tmp_path / "traces"
    traces.mkdir()
    parts = [{"name": "main", "resources": [_motor(traces, "m0")]},
             {"name": "base", "parent": "main", "resources": [_motor(traces, "wheel")]},
             {"name": "odo", "parent": "base", "resources": [_motor(traces, "spin")]}]
    motors = {"spin": "odo", "wheel": "base", "m0": "main"}
    with robot_setup("amqtt", tmp_path / "robot.yaml", parts) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo"])
            async with RobotClient.from_config(setup.loaded, urls=[setup.where], connect_timeout=15) as client, \
                    RobotClient.from_config(setup.loaded, urls=[setup.where], identity="other", sessions=False,
                                            connect_timeout=15) as other:
                for m, p in motors.items():
                    await client.resource(f"{p}/{m}", Motor).set_power(0.4)
                session = client.session
                assert session is not None
                ended: list[Any] = []
                told = asyncio.Event()
                client.on_session_end(lambda s, ev: (ended.append((s, ev)), told.set()))
                connections = client.mqtt.connections
                dropped: list[float] = []
                lost = asyncio.Event()

                def on_drop(reason: str) -> None:
                    dropped.append(time.time())
                    lost.set()

                client.mqtt.on_disconnect(on_drop)
                async with other.sessions.events(only_mine=False) as events:
                    t0 = time.time()
                    await other.sessions.end(session.public_id, "ended by hand in the test")
                    seen: list[Any] = []

                    def complete() -> bool:  # the decision is an "ended" too; the end is complete after main's stop
                        mine = [(e.kind, e.part) for e in seen if e.session == session.public_id]
                        return ("stopped", "main") in mine and mine[-1] == ("ended", "main")

                    while not complete():
                        seen.append(await asyncio.wait_for(events.get(), 10))
                await asyncio.wait_for(told.wait(), 10)
                await asyncio.wait_for(lost.wait(), 10)
                # bottom-up: each motor stopped before its parent's, all before `ended`, which comes before the
                # connection is closed
                stops = {m: _first_stop_after(traces, m, t0) for m in motors}
                assert all(t is not None for t in stops.values()), stops
                assert stops["spin"] <= stops["wheel"] <= stops["m0"], stops  # type: ignore[operator]
                stopped_parts = [e.part for e in seen if e.kind == "stopped" and e.session == session.public_id]
                assert stopped_parts == ["odo", "base", "main"], [(e.kind, e.part) for e in seen]
                end_event = seen[-1]
                assert end_event.kind == "ended" and "ended by hand in the test" in end_event.reason, end_event
                assert stops["m0"] <= end_event.at <= dropped[0], (stops, end_event.at, dropped)  # type: ignore[operator]
                # the SDK: a clean end, with the reason
                s, _ = ended[0]
                assert s is session and "ended by hand in the test" in (session.ended or ""), session.ended
                assert not session.alive
                with pytest.raises(SessionExpired):
                    await client.resource("base/wheel", Motor).set_power(0.2)
                sent = session._heart.sent
                await asyncio.sleep(3 * session.window_s / 5)  # three heartbeat periods: nothing may go out
                assert session._heart.sent == sent
                # the embedded broker really closed the client's connection: the client reconnected since
                await asyncio.wait_for(client.mqtt.connected.wait(), 10)
                assert client.mqtt.connections > connections
                # (its heartbeat connection the SDK may have closed itself already, on hearing the decision)
                assert re.search(r"closed [12] connection\(s\) of \S+/client/operator: ended by client/other: "
                                 r"ended by hand in the test", up.output()), up.output()
                # a new session drives again; nothing moved by itself meanwhile
                assert all(_last_stop(traces, m) is not None for m in motors)
                await client.renew_session()
                await client.resource("base/wheel", Motor).set_power(0.2)
                assert await other.resource("base/wheel", Motor).get_power() == 0.2
            up.terminate()
            assert await up.wait(30) == 0, up.output()
        finally:
            up.close()
