"""The control panel's HTTP server: static files and the generated config.json."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
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


@contextlib.contextmanager
def _web(cfg: Path, *args: str, scheme: str = "http") -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`orchestrator web -c CFG ARGS` running; yields the process and the base URL its first line names.
    Leaving the block stops it: SIGTERM (docker stop) then, if still there, SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "web", "-c", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(rf"on {scheme}://127\.0\.0\.1:(\d+)/", line)
        assert found, line + proc.stdout.read()
        yield proc, f"{scheme}://127.0.0.1:{found[1]}/"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _sigterm(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)  # docker stop
    assert proc.wait(10) == 0


def _check(port: int, robot: str) -> subprocess.CompletedProcess[str]:
    cmd = health_check(port, robot, python=sys.executable)
    assert cmd[0] == "CMD"
    return subprocess.run(cmd[1:], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(40)
def test_the_web_command_serves_the_panel_alone_passes_its_health_check_and_stops_on_sigterm(tmp_path: Path) -> None:
    # `orchestrator web`: the compose file's `web` service (docs/deploy.md), the same page and config.json as `up`
    cfg = tmp_path / "r1.yaml"
    cfg.write_text(yaml.safe_dump(_robot({"embedded": {"port": 18830, "websocket_port": 18831}}, {"port": 0})))
    with _web(cfg, "--websocket-port", "9123") as (proc, base):
        port = base.rsplit(":", 1)[1].rstrip("/")
        with urllib.request.urlopen(f"{base}config.json", timeout=5) as resp:
            # the port the browser reaches the broker on (published by compose), not the embedded broker's
            assert json.load(resp) == {"robot": "r1", "websocket_url": None, "websocket_port": 9123,
                                       "client": "operator", "viewers": ["eve"]}
        with urllib.request.urlopen(base, timeout=5) as resp:
            assert resp.read() == (STATIC_DIR / "index.html").read_bytes()
        # the compose file's health check of the `web` service, as docker runs it (python3: this interpreter)
        res = _check(int(port), "r1")
        assert res.returncode == 0 and res.stdout.startswith("healthy: the panel of r1"), res.stdout + res.stderr
        res = _check(int(port), "r2")  # a panel of another robot on that port is not this robot's
        assert res.returncode == 1 and "is the panel of 'r1', not of r2" in res.stderr, res.stdout + res.stderr
        _sigterm(proc)
    res = _check(int(port), "r1")
    assert res.returncode == 1 and res.stderr.startswith("unhealthy: no panel at"), res.stdout + res.stderr
    cfg.write_text(yaml.safe_dump(_robot({"embedded": {"port": 18830}}, {"enabled": False})))
    res = _cli("web", "-c", str(cfg))
    assert res.returncode == 2 and "no enabled web: section" in res.stderr, res.stdout + res.stderr


# ------------------------------------------------------------------------------ a robot with TLS (docs/web.md)

TLS_EMBEDDED = {"embedded": {"port": 18830, "tls_port": 18833, "websocket_port": 18831}, "tls": {"ca_file": "ca.crt"}}


def test_a_robot_with_tls_has_its_panel_on_https_and_wss_only() -> None:
    from pydantic import ValidationError

    from orchestrator.config.models import RobotConfig

    def model(broker: dict[str, object], web: dict[str, object]) -> RobotConfig:
        return RobotConfig.model_validate(_robot(broker, web))

    # TLS: broker.tls, or an embedded broker with a TLS listener (its certificate is in the credentials directory)
    assert model(TLS_EMBEDDED, {}).panel_tls()
    assert model({"embedded": {"port": 18830, "tls_port": 18833, "websocket_port": 18831}}, {}).panel_tls()
    assert model({"urls": ["mqtts://h:8883"], "tls": {}}, {"websocket_url": "wss://h:9443/"}).panel_tls()
    # without TLS nothing changes: ws:// and wss:// to an external listener as before
    assert not model({"embedded": {"port": 18830, "websocket_port": 18831}}, {}).panel_tls()
    assert not model({"urls": ["mqtt://h:1883"]}, {"websocket_url": "ws://h:9001/"}).panel_tls()
    assert not model({"urls": ["mqtt://h:1883"]}, {"websocket_url": "wss://h:9443/"}).panel_tls()
    # a wss:// URL for the embedded broker's listener, which has TLS with its certificate
    assert model(TLS_EMBEDDED, {"websocket_url": "wss://robot.local:18831/"}).web is not None
    for broker, web, said in [
        # an https page cannot talk ws://, and plain ws:// on a robot with TLS would carry the password in clear
        (TLS_EMBEDDED, {"websocket_url": "ws://robot.local:18831/"}, "ws:// on a robot with TLS"),
        ({"urls": ["mqtts://h:8883"], "tls": {}}, {"websocket_url": "ws://h:9001/"}, "ws:// on a robot with TLS"),
        # the embedded broker has no certificate without its TLS listener
        ({"embedded": {"port": 18830, "websocket_port": 18831}}, {"websocket_url": "wss://h:18831/"},
         "needs|only with broker.embedded.tls_port"),
    ]:
        with pytest.raises(ValidationError, match=said):
            model(broker, web)


def _tls_robot(tmp_path: Path, *, certs: bool = True) -> tuple[Path, Path]:
    """A robot with TLS and a panel on a free port; (its file, the CA that signed its broker's certificate)."""
    from orchestrator.security.tls import make_dev_certs

    cfg = _write(tmp_path / "r1.yaml", _robot(TLS_EMBEDDED, {"port": 0}))
    store = tmp_path / ".orchestrator" / "r1" / "credentials"
    if certs:
        make_dev_certs(store, ["127.0.0.1", "localhost"], robot="r1")
    return cfg, store / "ca.crt"


def test_the_panel_of_a_robot_with_tls_is_served_over_https_only(tmp_path: Path) -> None:
    from orchestrator.config import load_config
    from orchestrator.security.credentials import CredentialsMissing
    from orchestrator.web.server import fetch_page_config, panel_certificate, panel_server

    cfg, ca = _tls_robot(tmp_path)
    loaded = load_config(cfg)
    # never plain HTTP by omission: the robot's panel needs its certificate, or an explicit plain_http
    with pytest.raises(ValueError, match="has TLS"):
        panel_server(loaded.config, websocket_port=18831)
    # the panel's own pair (`orchestrator certs` makes it), else the broker's
    certificate = panel_certificate(loaded.config, loaded.path)
    assert certificate is not None and [p.name for p in certificate] == ["web.crt", "web.key"]
    for f in certificate:
        f.rename(f.with_suffix(f.suffix + ".away"))
    broker_pair = panel_certificate(loaded.config, loaded.path)
    assert broker_pair is not None and [p.name for p in broker_pair] == ["broker.crt", "broker.key"]
    for f in certificate:
        f.with_suffix(f.suffix + ".away").rename(f)
    server = panel_server(loaded.config, websocket_port=18831, certificate=certificate)
    server.start()
    try:
        assert server.scheme == "https"
        base = f"https://127.0.0.1:{server.port}/"
        # the browser's view: the certificate verified with the robot's CA, for the address the page is on
        assert fetch_page_config(base, 5, cafile=ca) == {"robot": "r1", "websocket_url": None, "websocket_port": 18831,
                                                         "client": "operator", "viewers": ["eve"]}
        # a client that does not trust the robot's CA is refused the handshake
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch_page_config(base, 5)
        # plain http:// on the same port: the connection is closed, nothing is served (no config.json, no page)
        for path in ("config.json", ""):
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{server.port}/{path}", timeout=5)
        # and the server still serves the page afterwards (a refused client costs nothing)
        assert fetch_page_config(base, 5, cafile=ca)["robot"] == "r1"
    finally:
        server.close()
    # without TLS the robot's panel stays plain HTTP, and needs no certificate
    plain = load_config(_write(tmp_path / "plain.yaml", _robot({"embedded": {"port": 18830, "websocket_port": 1}},
                                                               {"port": 0})))
    assert panel_certificate(plain.config, plain.path) is None
    # the broker's certificate or key missing: an error naming the file, never a plain-HTTP page instead
    cfg2, _ = _tls_robot(tmp_path / "nocerts", certs=False)
    loaded2 = load_config(cfg2)
    with pytest.raises(CredentialsMissing, match=r"broker\.crt: the robot has TLS"):
        panel_certificate(loaded2.config, loaded2.path)


def _write(path: Path, body: dict[str, object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.timeout(40)
def test_the_web_command_of_a_robot_with_tls_serves_https_or_refuses(tmp_path: Path) -> None:
    from orchestrator.web.server import fetch_page_config

    cfg, ca = _tls_robot(tmp_path / "certs")
    with _web(cfg, scheme="https") as (proc, base):
        assert fetch_page_config(base, 5, cafile=ca)["websocket_port"] == 18831
        _sigterm(proc)
    # what the compose file's `web` service holds: the CA and the panel's own pair, not the broker's key; it
    # serves HTTPS with them, and its health check (the compose file's line, over HTTPS) says healthy
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name in ("ca.crt", "web.crt", "web.key"):
        shutil.copy(ca.parent / name, secrets / name)
    with _web(cfg, "--credentials", str(secrets), scheme="https") as (proc, base):
        assert fetch_page_config(base, 5, cafile=ca)["robot"] == "r1"
        port = int(base.rsplit(":", 1)[1].rstrip("/"))
        cmd = health_check(port, "r1", python=sys.executable, cafile=str(secrets / "ca.crt"))
        res = subprocess.run(cmd[1:], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        assert res.returncode == 0 and res.stdout.startswith("healthy: the panel of r1 at https://"), \
            res.stdout + res.stderr
        # the plain-HTTP line finds no panel there
        assert _check(port, "r1").returncode == 1
        _sigterm(proc)
    # no certificate: exit 2 naming the file, nothing served
    cfg2, _ = _tls_robot(tmp_path / "nocerts", certs=False)
    res = _cli("web", "-c", str(cfg2))
    assert res.returncode == 2 and "broker.crt: the robot has TLS" in res.stderr, res.stdout + res.stderr
    # plain HTTP only when asked for explicitly (behind a TLS proxy)
    with _web(cfg2, "--plain-http") as (proc, base):
        assert fetch_page_config(base, 5)["robot"] == "r1"
        _sigterm(proc)
    # `up` says the same before it starts a broker or any part (here a robot whose parts need no secret, with the
    # embedded broker's TLS listener: its panel has TLS too)
    body = {**_robot({"embedded": {"port": 18830, "tls_port": 18833, "websocket_port": 18831}}, {"port": 0}),
            "security": {"insecure": True}}
    res = _cli("up", "-c", str(_write(tmp_path / "nocerts" / "r1.yaml", body)))
    assert res.returncode == 2 and "broker.crt: the robot has TLS" in res.stderr.replace("\n", ""), \
        res.stdout + res.stderr
