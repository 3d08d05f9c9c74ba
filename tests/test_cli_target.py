"""Issue 12 item 5, "a CLI that never locks you out": one regression test per defect fixed."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

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


# -- the CLI without a config, and with an invalid one ----------------------------------------------
NO_PLUGINS = '''
import importlib.abc, importlib.metadata, sys

class _NoPlugins(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0].startswith("orchestrator_"):
            raise ImportError(f"plugin {name} hidden by the test")
        return None

sys.meta_path.insert(0, _NoPlugins())
_eps = importlib.metadata.entry_points
importlib.metadata.entry_points = lambda **kw: () if str(kw.get("group", "")).startswith("orchestrator") else _eps(**kw)
from orchestrator.cli import main
sys.argv = ["orchestrator", *sys.argv[1:]]
main()
'''


def cli_without_plugins(tmp_path: Path, *argv: str, timeout: float = 60) -> Any:
    """`orchestrator ARGV` in a process of its own where no plugin package can be imported or found, run
    from a directory with no configuration in it."""
    import os
    import subprocess
    import sys

    script = tmp_path / "no_plugins.py"
    script.write_text(NO_PLUGINS)
    empty = tmp_path / "elsewhere"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRATOR_CONFIG", "ORCHESTRATOR_CREDENTIALS")}
    return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=empty, env={**env, "COLUMNS": "200"})


def _credentials(setup: Any) -> str:
    from orchestrator.security.access import store_for

    return str(store_for(setup.loaded.config, setup.loaded.path).directory)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_client_commands_work_from_robot_and_broker_alone_with_no_config_and_no_plugin(
        tmp_path: Path, kind: str) -> None:
    """status, resources, call, sessions and shutdown --wait from --robot/--broker/--credentials only, in a
    process where the robot's model plugins cannot even be imported; a call to an unknown part fails at
    once (not after --timeout) and says which part was meant."""
    import asyncio
    import json
    import time

    with robot_setup(kind, tmp_path / "robot.yaml", three_level_parts()) as setup:
        flags = ["--robot", setup.robot, "--broker", setup.url, "--credentials", _credentials(setup)]
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo", "arm", "cam"], 40)

            def run(*argv: str) -> Any:
                return asyncio.to_thread(cli_without_plugins, tmp_path, *argv, *flags)

            res = await run("status", "--json")
            assert res.returncode == 0, res.stderr
            got = json.loads(res.stdout)
            assert got["state"] == "running" and got["running"], got
            assert set(got["parts"]) == {"main", "base", "odo", "arm", "cam"}, got
            for name, p in got["parts"].items():
                assert p["state"] == "running" and p["liveness"] == "live" and p["restarts"] == 0, (name, p)
                if name != "main":
                    assert p["heartbeat_age_s"] is not None and p["heartbeat_age_s"] < 2, (name, p)
            res = await run("status")
            assert res.returncode == 0 and "liveness" in res.stdout and "restarts" in res.stdout, res.stdout
            res = await run("resources", "--json")
            assert res.returncode == 0, res.stderr
            assert {r["name"] for r in json.loads(res.stdout)["base"]} == {"left", "right"}, res.stdout
            res = await run("call", "base/left", "set_power", "--args", '{"power": 0.2}')
            assert res.returncode == 0, res.stderr
            res = await run("call", "base/right", "set_power", "--args", '{"power": 0.2}', "--hold", "0.3")
            assert res.returncode == 0, res.stderr  # in a session of its own: opened with the primary, closed
            res = await run("call", "base/left", "stop")
            assert res.returncode == 0 and res.stdout.strip() == "null", (res.stdout, res.stderr)
            res = await run("sessions", "--json")
            assert res.returncode == 0 and isinstance(json.loads(res.stdout), list), res.stderr
            started = time.monotonic()
            res = await run("call", "bse/left", "stop", "--timeout", "30")
            elapsed = time.monotonic() - started
            assert res.returncode == 1 and "no part 'bse'" in res.stderr and "did you mean 'base'" in res.stderr, \
                res.stderr
            assert elapsed < 10, f"a call to an unknown part took {elapsed:.1f} s (it waited for --timeout)"
            assert "Traceback" not in res.stderr
            res = await run("shutdown", "--wait", "--reason", "no-config test")
            assert res.returncode == 0, (res.stdout, res.stderr)
            assert "shutdown of" in res.stdout and "no-config test" in res.stdout, res.stdout
            for part in ("main", "base", "odo", "arm", "cam"):
                assert part in res.stdout
            assert f"robot {setup.robot} stopped in" in res.stdout, res.stdout
            assert await up.wait(30) == 0, up.output()
        finally:
            up.close()


def _with_schema_error(good: Path) -> Path:
    import yaml

    data = yaml.safe_load(good.read_text())
    data["parts"][0]["colour"] = "red"  # not a key of a part: the file fails its schema
    data["parts"][1]["resources"][0]["model"] = "orc:nowhere:motor"
    bad = good.with_name("broken.yaml")
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    return bad


@pytest.mark.timeout(120)
async def test_an_invalid_config_on_disk_does_not_block_call_stop_or_shutdown(tmp_path: Path) -> None:
    """The file beside the running robot no longer validates: `call ... stop` and `shutdown` say so on one
    line and still work, with the robot's name, broker and credentials read leniently from it; `--wait`
    prints this shutdown's timeline, not an earlier one left retained on the broker."""
    import asyncio
    import time

    from test_cli import invoke, no_traceback, plant

    from orchestrator.protocol.codec import encode
    from orchestrator.protocol.messages import Timeline
    from orchestrator.protocol.topics import Topics

    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        bad = _with_schema_error(setup.cfg)
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo", "arm", "cam"], 40)
                res = await asyncio.to_thread(invoke, "call", "base/left", "set_power", "-c", str(bad),
                                              "--args", '{"power": 0.4}')
                no_traceback(res)
                assert res.exit_code == 0, res.output
                res = await asyncio.to_thread(invoke, "call", "base/left", "stop", "-c", str(bad))
                no_traceback(res)
                assert res.exit_code == 0, res.output
                warned = [line for line in res.output.splitlines() if "invalid configuration" in line]
                assert len(warned) == 1 and str(bad) in warned[0] and "colour" in warned[0], res.output
                # an earlier run's timeline, retained on the broker (by the primary's identity): not this shutdown's
                stale = Timeline(shutdown_id="earlier", reason="EARLIER RUN", started_at=time.time() - 60)
                await plant(setup.loaded, "main", Topics(setup.robot).robot_timeline(), encode("part/main", stale))
                res = await asyncio.to_thread(invoke, "shutdown", "-c", str(bad), "--wait", "--reason", "this one")
                no_traceback(res)
                assert res.exit_code == 0, res.output
                assert "invalid configuration" in res.output and "shutdown of" in res.output, res.output
                assert "this one" in res.output and "EARLIER RUN" not in res.output, res.output
            assert await up.wait(30) == 0, up.output()
        finally:
            up.close()


def test_a_config_too_broken_to_read_asks_for_robot_and_broker(tmp_path: Path) -> None:
    from test_cli import invoke, no_traceback

    path = tmp_path / "robot.yaml"
    path.write_text("robot: [not, a, name]\nparts: 3\n")
    res = invoke("shutdown", "-c", str(path))
    no_traceback(res)
    assert res.exit_code == 2 and "--robot NAME --broker URL" in res.output, res.output
    # YAML that does not parse: where and why, in words (not the name of an internal exception)
    path.write_text("robot: r1\nparts: []\nrobot: r2\n")
    res = invoke("shutdown", "-c", str(path))
    no_traceback(res)
    assert res.exit_code == 2 and "unreadable (line 3: duplicate key 'robot'" in res.output, res.output
    assert "Error)" not in res.output and "using only its robot name" not in res.output, res.output


@pytest.mark.timeout(120)
async def test_status_row_of_a_frozen_part_does_not_say_just_running(tmp_path: Path) -> None:
    """A SIGSTOPped part still has "running" as its retained state: its row shows its liveness (silent,
    then offline once the primary gives up on it), not "running" alone."""
    import asyncio
    import json
    import os
    import signal
    import time

    from test_cli import invoke

    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        up = Up(setup.cfg, tmp_path)
        pid = None
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo", "arm", "cam"], 40)
                pid = w.states["cam"][1].pid
            assert pid
            os.kill(pid, signal.SIGSTOP)
            deadline = time.monotonic() + 20
            while True:
                res = await asyncio.to_thread(invoke, "status", "-c", str(setup.cfg), "--json")
                cam = json.loads(res.stdout)["parts"]["cam"]
                if cam["liveness"] in ("silent", "offline"):
                    break
                assert time.monotonic() < deadline, f"a frozen part still shown {cam}"
            res = await asyncio.to_thread(invoke, "status", "-c", str(setup.cfg))
            row = next(line for line in res.output.splitlines() if "cam" in line)
            assert "silent" in row or "offline" in row, res.output
        finally:
            if pid:
                os.kill(pid, signal.SIGCONT)
            up.close()


@pytest.mark.timeout(60)
def test_status_with_no_robot_running_says_so_quickly(tmp_path: Path) -> None:
    """A broker, but no robot on it: "not running" within 2 s (not a wait for a bare connection error)."""
    import time

    from brokers import free_port, start_robot_broker
    from robot import unique_robot, write_config
    from test_cli import PARTS, invoke, no_traceback

    from orchestrator.config import load_config

    port = free_port()
    path = write_config(tmp_path / "robot.yaml", unique_robot(), {"urls": [f"mqtt://127.0.0.1:{port}"]}, PARTS,
                        clients=[{"name": "operator"}])
    with start_robot_broker("mosquitto", load_config(path), port=port):
        for argv in (["status", "-c", str(path)], ["shutdown", "-c", str(path), "--wait"]):
            started = time.monotonic()
            res = invoke(*argv)
            elapsed = time.monotonic() - started
            no_traceback(res)
            assert res.exit_code == 1 and "not running" in res.output, (argv, res.output)
            assert elapsed < 2.0, f"{argv[0]} took {elapsed:.2f} s to say the robot is not running"


@pytest.mark.timeout(60)
async def test_reload_reports_what_it_rebuilt_and_the_sibling_stopped_through_the_base(tmp_path: Path) -> None:
    """One motor of a base changes: `reload` lists what each part rebuilt and says that the other motor was
    stopped (not rebuilt) because the base that drives it was."""
    import asyncio
    import json

    import yaml
    from inproc import running_robot
    from test_cli import invoke, no_traceback

    parts = [{"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
             {"name": "drive", "parent": "main", "resources": [
                 {"name": "left", "model": "orc:sim:motor"}, {"name": "right", "model": "orc:sim:motor"},
                 {"name": "base", "model": "orc:sim:base", "attributes": {"left": "left", "right": "right"}}]}]
    async with running_robot(tmp_path, "amqtt", parts) as robot:
        path = Path(robot.loaded.path)
        data = yaml.safe_load(path.read_text())  # noqa: ASYNC240 - tiny file
        data["parts"][1]["resources"][0]["attributes"] = {"max_rpm": 50}
        path.write_text(yaml.safe_dump(data, sort_keys=False))  # noqa: ASYNC240
        res = await asyncio.to_thread(invoke, "reload", "-c", str(path), "--json")
        no_traceback(res)
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        assert got["missing"] == [], got
        drive = got["parts"]["drive"]
        assert sorted(drive["rebuilt"]) == ["base", "left"], drive
        assert drive["stopped"] == {"drive/right": ["drive/base"]}, drive
        assert got["parts"]["main"]["rebuilt"] == [], got
        data["parts"][1]["resources"][0]["attributes"] = {"max_rpm": 60}
        path.write_text(yaml.safe_dump(data, sort_keys=False))  # noqa: ASYNC240
        res = await asyncio.to_thread(invoke, "reload", "-c", str(path))
        assert res.exit_code == 0, res.output
        assert "drive/right was stopped (not rebuilt): drive/base" in res.output, res.output


def test_validate_reports_every_problem_at_once_with_did_you_mean(tmp_path: Path) -> None:
    """A schema error, an unknown parent, an unknown dependency and an unknown model: all in one run, each
    FILE:LINE: PATH: expected, with the name that was probably meant."""
    from test_cli import invoke, no_traceback

    path = tmp_path / "robot.yaml"
    path.write_text("""robot: r1
broker:
  urls: ["mqtt://127.0.0.1:1883"]
parts:
  - name: main
    heartbeat_sec: 0.2
    resources:
      - {name: health, model: "orc:sim:sensr"}
  - name: base
    parent: mian
    resources:
      - {name: left, model: "orc:sim:motor"}
      - {name: right, model: "orc:sim:motor", depends_on: ["lefty"]}
""")
    res = invoke("validate", "-c", str(path))
    no_traceback(res)
    assert res.exit_code == 2, res.output
    out = res.output
    assert f"{path}:6: parts[0].heartbeat_sec: unknown key" in out and "did you mean 'heartbeat_s'" in out, out
    assert f"{path}:10: parts[1].parent: unknown parent 'mian' (did you mean 'main'?)" in out, out
    assert f"{path}:13: parts[1].resources[1].depends_on[0]" in out and "did you mean 'left'" in out, out
    assert f"{path}:8: parts[0].resources[0].model" in out and "did you mean 'orc:sim:sensor'" in out, out
    assert "4 problem(s)" in out, out


def test_tls_from_flags_needs_the_ca_in_the_credentials(tmp_path: Path) -> None:
    """`--broker mqtts://...` without a config: the broker is verified with ca.crt of --credentials; without
    one, a clear error (never an unverified TLS connection, never a traceback)."""
    from test_cli import invoke, no_traceback

    res = invoke("status", "--robot", "r1", "--broker", "mqtts://127.0.0.1:1", "--credentials", str(tmp_path))
    no_traceback(res)
    assert res.exit_code == 2 and "ca.crt" in res.output, res.output


@pytest.mark.timeout(120)
async def test_status_shows_the_restart_count_of_a_part(tmp_path: Path) -> None:
    """A part killed (SIGKILL) and restarted by its on-failure policy: its status row counts the restart."""
    import asyncio
    import json
    import os
    import signal

    from test_cli import invoke

    with robot_setup("mosquitto", tmp_path / "robot.yaml", three_level_parts()) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base", "odo", "arm", "cam"], 40)
                old = w.states["arm"][1].pid
                assert old
                os.kill(old, signal.SIGKILL)
                await w.until(lambda: w.status is not None and w.status.parts["arm"].restarts == 1
                              and w.state("arm") == "running" and w.states["arm"][1].pid != old, 30,
                              "arm restarted")
            res = await asyncio.to_thread(invoke, "status", "-c", str(setup.cfg), "--json")
            arm = json.loads(res.stdout)["parts"]["arm"]
            assert arm["restarts"] == 1 and arm["state"] == "running", arm
            res = await asyncio.to_thread(invoke, "status", "-c", str(setup.cfg))
            row = next(line for line in res.output.splitlines() if " arm " in line)
            assert " 1 " in row, res.output
        finally:
            up.close()
