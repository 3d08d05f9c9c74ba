"""`orchestrator health`: exit 0 only while the part runs and is connected (the containers' health check).

Against a real robot (`orchestrator up`) on a real broker; the command runs as a process, as docker runs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from brokers import free_port
from robot import Up, robot_setup, start_part_process, stop_processes, three_level_parts

PARTS = ["main", "base", "odo", "arm", "cam"]


def health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "health", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    out = (res.stdout + res.stderr).strip()
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
async def test_health_follows_a_part_from_running_to_stopped(kind: str, tmp_path: Path) -> None:
    with robot_setup(kind, tmp_path / "robot.yaml", three_level_parts()) as setup:
        cfg = str(setup.cfg)
        before = await asyncio.to_thread(health, cfg, "--part", "base", "--timeout", "1")
        assert before.returncode == 1, before
        assert "no MQTT broker reachable" in one_line(before) if kind == "amqtt" else "no state" in one_line(before)
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                started = time.monotonic()
                res = await asyncio.to_thread(health, cfg, "--part", "odo")
                assert res.returncode == 0, res
                assert one_line(res).startswith("healthy: part odo is running and connected")
                assert time.monotonic() - started < 5  # a process start included
                # the form of the image's HEALTHCHECK: options and environment variables
                env = {"ORCHESTRATOR_CONFIG": cfg, "ORCHESTRATOR_PART": "main", "ORCHESTRATOR_BROKER": setup.url}
                res = await asyncio.to_thread(health, env=env)
                assert res.returncode == 0, res
                res = await asyncio.to_thread(health, "--config", cfg, "--name", "arm", "--broker", setup.url)
                assert res.returncode == 0, res
                # a viewer reads no heartbeats: the retained state alone
                res = await asyncio.to_thread(health, cfg, "--part", "cam", "--identity", "watcher")
                assert res.returncode == 0 and "retained state" in one_line(res), res
                up.terminate()
                assert await up.wait(30) == 0, up.output()
            res = await asyncio.to_thread(health, cfg, "--part", "base", "--timeout", "1")
            assert res.returncode == 1, res
            # `up` stops the embedded broker with the robot; mosquitto keeps the last word of each part
            assert ("no MQTT broker reachable" if kind == "amqtt" else "part base is stopped") in one_line(res)
        finally:
            up.close()


@pytest.mark.timeout(90)
async def test_health_of_a_frozen_part_is_unhealthy_before_the_broker_notices(tmp_path: Path) -> None:
    # keep-alive 5 s: mosquitto drops the frozen connection (and publishes its Will) only ~8-12 s later
    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts(), keepalive_s=5) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(PARTS)
                pid = w.states["cam"][1].pid
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                try:
                    res = await asyncio.to_thread(health, str(setup.cfg), "--part", "cam", "--timeout", "2")
                    assert w.state("cam") == "running"  # the broker still holds the retained "running"
                finally:
                    os.kill(pid, signal.SIGCONT)
                assert res.returncode == 1, res
                assert "no heartbeat" in one_line(res)
                up.terminate()
                assert await up.wait(30) == 0, up.output()
        finally:
            up.close()


def test_health_with_wrong_arguments_says_why_in_one_line(tmp_path: Path) -> None:
    with robot_setup("amqtt", tmp_path / "robot.yaml", three_level_parts()) as setup:
        res = health(str(setup.cfg), "--part", "nope")
        assert res.returncode == 2 and "no part named 'nope'" in one_line(res), res
        res = health(str(setup.cfg))
        assert res.returncode == 2 and "--part" in one_line(res), res
        res = health(str(setup.cfg), "--part", "base", "--broker", f"mqtt://127.0.0.1:{free_port()}",
                     "--timeout", "0.5")
        assert res.returncode == 1 and "no MQTT broker reachable" in one_line(res), res
        res = health(str(setup.cfg), "--part", "base", "--credentials", str(tmp_path / "none"))
        assert res.returncode == 2 and "unhealthy" in one_line(res), res


def health_line(path: Path) -> subprocess.CompletedProcess[str]:
    """The health line's check, as a container health check runs it (`sh -c` of `shell_check`)."""
    from orchestrator.runtime.healthfile import shell_check

    return subprocess.run(["sh", "-c", shell_check(str(path))], capture_output=True, text=True, timeout=10)


async def until_health(path: Path, code: int, within: float, what: str) -> str:
    """Await the health line's answer becoming ``code`` (bounded); its one line."""
    deadline = time.monotonic() + within
    while True:
        res = await asyncio.to_thread(health_line, path)
        if res.returncode == code:
            return one_line(res)
        assert time.monotonic() < deadline, f"{what}: still {res.returncode} after {within} s: {res.stdout}"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_health_file_check_of_a_part_container_follows_running_frozen_cut_and_stopped(tmp_path: Path) -> None:
    """The health line's check (no Python per check: 50 containers each running `orchestrator health` every
    few seconds never came up healthy on 2 cores) says healthy only while the part runs and its heartbeats
    come back through the broker: unhealthy when frozen, when its link carries nothing, when it stops."""
    from faultproxy import FaultProxy

    parts = [{"name": "main", "heartbeat_s": 0.2},
             {"name": "base", "parent": "main", "heartbeat_s": 0.2,
              "resources": [{"name": "left", "model": "orc:sim:motor"}]}]
    with robot_setup("mosquitto", tmp_path / "robot.yaml", parts, keepalive_s=5) as setup, \
            FaultProxy(setup.where) as proxy:
        files = {p: tmp_path / f"{p}.health" for p in ("main", "base")}
        assert "no health file" in one_line(health_line(files["base"]))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for part in ("main", "base"):  # base through the proxy: its link can be cut
                url = f"mqtt://{proxy.address[0]}:{proxy.address[1]}" if part == "base" else setup.url
                env = {"ORCHESTRATOR_HEALTH_FILE": str(files[part])}
                procs[part] = start_part_process(setup.cfg, part, url, env=env)
            for part in procs:
                line = await until_health(files[part], 0, 30, f"{part} healthy")
                assert line.startswith("healthy: running birth=") and f"pid={procs[part].pid}" in line
            # frozen: nothing renews the line, it expires by itself (window 0.2 x 3, link timeout, 1 s slack)
            os.kill(procs["base"].pid, signal.SIGSTOP)
            try:
                frozen = time.monotonic()
                line = await until_health(files["base"], 1, 10, "frozen base unhealthy")
                assert time.monotonic() - frozen < 5 and line.startswith("unhealthy: running")  # a stale line
            finally:
                os.kill(procs["base"].pid, signal.SIGCONT)
            await until_health(files["base"], 0, 10, "base healthy again after SIGCONT")
            # the link carries nothing (the connection stays open): the part says so itself
            proxy.stall()
            try:
                line = await until_health(files["base"], 1, 10, "cut base unhealthy")
            finally:
                proxy.resume()
            await until_health(files["base"], 0, 20, "base healthy again after the link returns")
            assert await until_health(files["main"], 0, 1, "main unaffected")
            # stopped: the reason is in the line
            procs["base"].terminate()
            assert await asyncio.to_thread(procs["base"].wait, 30) == 0
            line = one_line(health_line(files["base"]))
            assert health_line(files["base"]).returncode == 1 and line.startswith("unhealthy: stopped 0"), line
        finally:
            stop_processes(list(reversed(procs.values())))  # leaves first
