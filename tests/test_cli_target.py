"""Issue 12 item 5, "a CLI that never locks you out": one regression test per defect fixed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from robot import Up, robot_setup, three_level_parts


@pytest.mark.timeout(90)
async def test_sigint_is_not_labelled_sigterm_in_the_timeline(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) to `up`: the primary is sent SIGINT too, so the timeline's reason says SIGINT."""
    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.until(lambda: w.status is not None and w.status.state == "running", 30, "robot running")
                up.terminate(signal.SIGINT)
                assert await up.wait(30) == 0, up.output()
                await w.until(lambda: w.timeline is not None, 10, "retained timeline")  # robot/timeline
                assert w.timeline is not None
                reason = w.timeline.reason
            assert "SIGINT" in reason and "SIGTERM" not in reason, reason
        finally:
            up.close()


@pytest.mark.timeout(30)
def test_port_0_in_the_config_does_not_crash_status(tmp_path: Path) -> None:
    """An embedded broker on ``port: 0`` (any free port): every client command says to pass --broker,
    with a configuration exit code and no traceback (it used to be paho's ``ValueError``)."""
    from brokers import make_credentials
    from robot import unique_robot, write_config
    from test_cli import PARTS, invoke, no_traceback

    from orchestrator.config import load_config

    path = write_config(tmp_path / "robot.yaml", unique_robot(), {"embedded": {"host": "127.0.0.1", "port": 0}},
                        PARTS, clients=[{"name": "operator"}])
    make_credentials(load_config(path))
    for argv in (["status", str(path)], ["shutdown", str(path)], ["resources", "-c", str(path)],
                 ["call", "main/health", "get_readings", "-c", str(path)], ["sessions", "-c", str(path)]):
        res = invoke(*argv)
        no_traceback(res)
        assert res.exit_code == 2, (argv, res.output)
        assert "port is 0" in res.output and "--broker" in res.output, (argv, res.output)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
async def test_up_port_overrides_the_embedded_broker_port(tmp_path: Path) -> None:
    """``up --port N``: the embedded broker listens on N (not the file's port) and the parts reach it."""
    import asyncio
    import sys

    from brokers import make_credentials
    from robot import unique_robot, write_config
    from test_cli import PARTS, invoke

    from orchestrator.config import load_config

    file_port, port = _free_port(), _free_port()
    path = write_config(tmp_path / "robot.yaml", unique_robot(), {"embedded": {"host": "127.0.0.1",
                                                                               "port": file_port}},
                        PARTS, clients=[{"name": "operator"}])
    make_credentials(load_config(path))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "orchestrator", "up", str(path),
                                                "--port", str(port), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        while not any("running" in line and "parts" in line for line in seen):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "".join(seen)
            seen.append(line)
        assert any(f"127.0.0.1:{port}" in line for line in seen), "".join(seen)
        res = await asyncio.to_thread(invoke, "status", str(path), "--broker", f"mqtt://127.0.0.1:{port}",
                                      "--json")
        assert res.exit_code == 0, res.output
        assert '"running"' in res.output, res.output
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.timeout(30)
def test_status_with_no_broker_fails_fast_on_a_refused_connection(tmp_path: Path) -> None:
    """Nothing listens: the refused connection is the answer (not a retry until the 3 s connect bound)."""
    import time

    from test_cli import invoke, no_traceback

    port = _free_port()  # bound then released: nothing listens there
    for argv in (["status", str(tmp_path / "robot.yaml")], ["shutdown", str(tmp_path / "robot.yaml")]):
        _write_config(tmp_path)
        started = time.monotonic()
        res = invoke(*argv, "--broker", f"mqtt://127.0.0.1:{port}")
        elapsed = time.monotonic() - started
        no_traceback(res)
        assert res.exit_code == 1, res.output
        assert "connection refused" in res.output and "is the robot running" in res.output, res.output
        assert elapsed < 2.5, f"{argv[0]} took {elapsed:.2f} s to report a refused connection"


def _write_config(tmp_path: Path) -> Path:
    from brokers import make_credentials
    from robot import unique_robot, write_config
    from test_cli import PARTS

    from orchestrator.config import load_config

    path = tmp_path / "robot.yaml"
    if not path.exists():
        write_config(path, unique_robot(), {"urls": ["mqtt://127.0.0.1:1"]}, PARTS, clients=[{"name": "operator"}])
        make_credentials(load_config(path))
    return path
