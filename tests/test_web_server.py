"""The control panel's HTTP server: static files and the generated config.json."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from orchestrator.web.server import STATIC_DIR, WebServer, health_check

pytestmark = pytest.mark.timeout(10)


def test_serves_static_files_and_config(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>panel</p>")
    server = WebServer(
        host="127.0.0.1",
        port=0,
        robot="r1",
        websocket_url="ws://127.0.0.1:9001",
        static_dir=tmp_path,
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/config.json", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            assert json.load(resp) == {"robot": "r1", "websocket_url": "ws://127.0.0.1:9001"}
        with urllib.request.urlopen(f"{base}/", timeout=5) as resp:
            assert resp.read() == b"<p>panel</p>"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/../../etc/passwd", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


def test_packaged_static_dir_has_an_index() -> None:
    assert (STATIC_DIR / "index.html").is_file()


def _robot(broker: dict[str, object], web: dict[str, object]) -> dict[str, object]:
    return {"robot": "r1", "broker": broker, "clients": [{"name": "operator"}, {"name": "eve", "role": "viewer"}],
            "parts": [{"name": "main"}], "web": web}


def test_the_web_section_must_reach_the_broker() -> None:
    from pydantic import ValidationError

    from orchestrator.config.models import RobotConfig

    with_ws = {"embedded": {"port": 18830, "websocket_port": 18831}}
    assert RobotConfig.model_validate(_robot(with_ws, {"client": "eve"})).web is not None
    assert RobotConfig.model_validate(_robot({"urls": ["mqtt://h:1883"]}, {"websocket_url": "wss://h:9443/"})).web
    # turned off, it needs nothing
    assert RobotConfig.model_validate(_robot({"embedded": {"port": 18830}}, {"enabled": False})).web is not None
    for broker, web, said in [
        ({"embedded": {"port": 18830}}, {}, "websocket_port"),  # the browser has no way to the broker
        ({"urls": ["mqtt://h:1883"]}, {}, "websocket_url"),
        ({"urls": ["mqtt://h:1883"]}, {"websocket_url": "http://h:9001/"}, "not a WebSocket URL"),
        (with_ws, {"client": "nobody"}, "not one of the robot's clients"),
        (with_ws, {"port": 70000}, "65535"),
    ]:
        with pytest.raises(ValidationError, match=said):
            RobotConfig.model_validate(_robot(broker, web))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)


def _check(port: int, robot: str) -> subprocess.CompletedProcess[str]:
    cmd = health_check(port, robot, python=sys.executable)
    assert cmd[0] == "CMD"
    return subprocess.run(cmd[1:], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(40)
def test_the_web_command_serves_the_panel_alone_passes_its_health_check_and_stops_on_sigterm(tmp_path: Path) -> None:
    # `orchestrator web`: the compose file's `web` service (docs/deploy.md), the same page and config.json as `up`
    cfg = tmp_path / "r1.yaml"
    cfg.write_text(yaml.safe_dump(_robot({"embedded": {"port": 18830, "websocket_port": 18831}}, {"port": 0})))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "web", "-c", str(cfg), "--websocket-port", "9123"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + proc.stdout.read()
        port = found[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config.json", timeout=5) as resp:
            # the port the browser reaches the broker on (published by compose), not the embedded broker's
            assert json.load(resp) == {"robot": "r1", "websocket_url": None, "websocket_port": 9123,
                                       "client": "operator"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.read() == (STATIC_DIR / "index.html").read_bytes()
        # the compose file's health check of the `web` service, as docker runs it (python3: this interpreter)
        res = _check(int(port), "r1")
        assert res.returncode == 0 and res.stdout.startswith("healthy: the panel of r1"), res.stdout + res.stderr
        res = _check(int(port), "r2")  # a panel of another robot on that port is not this robot's
        assert res.returncode == 1 and "is the panel of 'r1', not of r2" in res.stderr, res.stdout + res.stderr
        proc.send_signal(signal.SIGTERM)  # docker stop
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    res = _check(int(port), "r1")
    assert res.returncode == 1 and res.stderr.startswith("unhealthy: no panel at"), res.stdout + res.stderr
    cfg.write_text(yaml.safe_dump(_robot({"embedded": {"port": 18830}}, {"enabled": False})))
    res = _cli("web", "-c", str(cfg))
    assert res.returncode == 2 and "no enabled web: section" in res.stderr, res.stdout + res.stderr
