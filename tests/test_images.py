"""The container images: built without a registry (docker/images.sh), non-root, installed offline.

The first test here builds whatever is missing (engine, Compose v2, wheelhouse, images: about two
minutes cold); with everything built the module takes a few seconds.  See docs/deploy.md.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from brokers import free_port
from dockerlab import ROOT, ComposeProject, DockerLab, docker

ORCHESTRATOR_UID = "10001"
MOSQUITTO_UID = "1883"


def image_config(image: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    return config


def test_images_are_built_from_the_current_wheelhouse(docker_lab: DockerLab) -> None:
    for image in (docker_lab.base_image, docker_lab.mosquitto_image, docker_lab.image):
        docker("image", "inspect", image)
    cfg = image_config(docker_lab.image)
    stamp = (docker_lab.wheelhouse / "local" / ".stamp").read_text().strip()
    assert cfg["Labels"]["org.orchestrator.wheelhouse"] == stamp, "image older than the sources"
    assert cfg["Entrypoint"] == ["orchestrator"]
    assert cfg["User"] == f"{ORCHESTRATOR_UID}:{ORCHESTRATOR_UID}"
    assert cfg["WorkingDir"] == "/app"
    assert cfg["StopSignal"] == "SIGTERM"
    check = " ".join(cfg["Healthcheck"]["Test"])
    assert "orchestrator health" in check and "$ORCHESTRATOR_CONFIG" in check and "$ORCHESTRATOR_PART" in check
    assert image_config(docker_lab.mosquitto_image)["User"] == f"{MOSQUITTO_UID}:{MOSQUITTO_UID}"


def test_project_image_runs_as_a_non_root_user(docker_lab: DockerLab) -> None:
    res = docker("run", "--rm", docker_lab.image, "--help")
    assert "part" in res.stdout and "Usage" in res.stdout, res.stdout
    script = (
        "id -u"
        " && if touch /opt/orchestrator/x 2>/dev/null; then echo venv-writable; fi"
        " && orchestrator validate examples/rover.yaml"
    )
    res = docker("run", "--rm", "--entrypoint", "sh", docker_lab.image, "-c", script)
    uid, *rest = res.stdout.splitlines()
    assert uid != "0" and uid == ORCHESTRATOR_UID
    assert "venv-writable" not in rest, "the non-root user can modify the installed code"
    assert "ok: robot 'rover'" in res.stdout, res.stdout


def test_wheelhouse_installs_with_no_network(docker_lab: DockerLab) -> None:
    # What the Dockerfile does, in a container that has no network at all: nothing comes from an index.
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert installs and all("--no-index" in line for line in installs), installs
    # pip runs from Debian's wheel of it (a venv with pip of its own costs 5 s more); no .pyc: 5 s more.
    script = (
        "python3 -m venv --without-pip /tmp/venv"
        " && pip=$(ls /usr/share/python-wheels/pip-*.whl)"
        " && /tmp/venv/bin/python $pip/pip install -q --no-compile --no-index"
        "    --find-links /wheels/deps --find-links /wheels/local"
        "    robot-orchestrator robot-orchestrator-sim robot-orchestrator-host"
        " && /tmp/venv/bin/orchestrator validate /examples/rover.yaml"
    )
    res = docker(
        "run", "--rm", "--network", "none", "-e", "PIP_DISABLE_PIP_VERSION_CHECK=1",
        "-v", f"{docker_lab.wheelhouse}:/wheels:ro", "-v", f"{ROOT / 'examples'}:/examples:ro",
        docker_lab.base_image, "sh", "-c", script,
    )
    assert "ok: robot 'rover'" in res.stdout, res.stdout + res.stderr


class Probe:
    """One paho client on the host, with events for its CONNACK and SUBACK and a queue of payloads."""

    def __init__(self) -> None:
        self.connected, self.subscribed, self.got = threading.Event(), threading.Event(), queue.Queue[bytes]()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else self.connected.set()
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.got.put(m.payload)

    def connect(self, port: int, wait: float) -> bool:
        try:
            self.client.connect("127.0.0.1", port, keepalive=10)
        except OSError:
            return False
        self.client.loop_start()
        return self.connected.wait(wait)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_roundtrip(port: int, timeout: float = 20.0) -> None:
    """Connect to 127.0.0.1:port (retrying while the broker starts: docker's proxy accepts TCP before
    mosquitto listens), subscribe, publish at QoS 1 and get the message back."""
    deadline = time.monotonic() + timeout
    probe = Probe()
    while not probe.connect(port, wait=2.0):
        probe.close()
        assert time.monotonic() < deadline, f"no CONNACK from 127.0.0.1:{port} within {timeout} s"
        time.sleep(0.2)
        probe = Probe()
    try:
        probe.client.subscribe("orc/test/echo", qos=1)
        assert probe.subscribed.wait(5.0)
        probe.client.publish("orc/test/echo", b"hello", qos=1)
        assert probe.got.get(timeout=5.0) == b"hello"
    finally:
        probe.close()


def mosquitto_project(directory: Path, port: int | None) -> Path:
    """A compose file: the mosquitto image with the production config, a named volume, a port."""
    directory.mkdir(parents=True, exist_ok=True)
    ports = f'    ports: ["127.0.0.1:{port}:1883"]\n' if port is not None else ""
    (directory / "compose.yaml").write_text(
        "services:\n"
        "  broker:\n"
        "    image: ${ORCHESTRATOR_MOSQUITTO_IMAGE}\n"
        "    volumes:\n"
        f"      - {ROOT / 'broker_config' / 'mosquitto.conf'}:/mosquitto/config/mosquitto.conf:ro\n"
        "      - data:/mosquitto/data\n"
        f"{ports}"
        "volumes:\n"
        "  data: {}\n"
    )
    return directory


def test_mosquitto_image_serves_a_host_client(compose: ComposeProject, tmp_path: Path) -> None:
    port = free_port()
    project = mosquitto_project(tmp_path, port)
    compose(project, "up", "--detach", "--wait", "--wait-timeout", "30")
    assert compose(project, "exec", "-T", "broker", "id", "-u").stdout.strip() == MOSQUITTO_UID
    mqtt_roundtrip(port)


def test_compose_cleanup_removes_a_project_whose_file_is_gone(compose: ComposeProject, tmp_path: Path) -> None:
    project = mosquitto_project(tmp_path / "gone", port=None)
    compose(project, "up", "--detach")
    left = compose.leftovers()
    assert left["containers"] and left["networks"] and left["volumes"], left
    (project / "compose.yaml").unlink()
    compose.remove()  # `down` fails without the file: what carries the project's label goes anyway
    assert not any(compose.leftovers().values())
