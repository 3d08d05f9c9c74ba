"""mosquitto's MQTT-over-WebSocket listener for the web panel (docs/web.md), as `orchestrator broker-config`
writes it: a ``protocol websockets`` listener when the robot's ``web:`` section is enabled, with the very same
passwords and topic rights as the MQTT listener (``per_listener_settings false``).

The text is checked first; then a real mosquitto (Debian's 2.0, built with WebSocket support) is started on
exactly the file the command wrote, and paho connects with ``transport="websockets"``: anonymous clients and
wrong passwords are refused, the client credential is accepted, and its topic rights are those of the ACL.
Last, the embedded broker's WebSocket-over-TLS listener (a robot with TLS) with paho the same way.
"""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from brokers import free_port, listener_blocks, make_credentials, mosquitto_from_broker_config
from robot import CLIENTS, unique_robot, write_config

from orchestrator.broker.mosquitto_conf import MosquittoFiles, main_conf, websocket_port, websocket_tls
from orchestrator.config import load_config
from orchestrator.config.models import RobotConfig
from orchestrator.protocol.topics import ClientId, PartId, Topics

pytestmark = pytest.mark.timeout(60)

PARTS: list[dict[str, Any]] = [
    {"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
    {"name": "base", "parent": "main", "resources": [{"name": "left", "model": "orc:sim:motor"}]},
]
FILES = MosquittoFiles(password_file="/m/passwd", acl_file="/m/acl", port=1883)


def robot_config(broker: dict[str, Any], web: dict[str, Any] | None) -> RobotConfig:
    top: dict[str, Any] = {"clients": CLIENTS}
    if web is not None:
        top["web"] = web
    return RobotConfig.model_validate({"robot": "r1", "broker": broker, "parts": PARTS, **top})


EXTERNAL = {"urls": ["mqtt://127.0.0.1:1883"]}


def test_the_websocket_listener_follows_the_web_section() -> None:
    cfg = robot_config(EXTERNAL, {"websocket_url": "ws://robot.local:9001/"})
    assert websocket_port(cfg) == 9001 and not websocket_tls(cfg)
    conf = main_conf(cfg, dataclasses.replace(FILES, websockets_port=websocket_port(cfg)))
    assert listener_blocks(conf) == [["listener 1883"], ["listener 9001", "protocol websockets"]]
    # one set of passwords and topic rights for every listener, before any of them; nobody anonymous
    head = conf.split("\nlistener ", 1)[0].splitlines()
    assert {"per_listener_settings false", "allow_anonymous false", "password_file /m/passwd",
            "acl_file /m/acl"} <= set(head)
    assert "allow_anonymous true" not in conf

    # the embedded broker's WebSocket port when the page is told no URL; none without an enabled panel
    assert websocket_port(robot_config({"embedded": {"port": 18830, "websocket_port": 18831}}, {})) == 18831
    assert websocket_port(robot_config({"embedded": {"port": 18830, "websocket_port": 18831}}, None)) is None
    assert websocket_port(robot_config(EXTERNAL, {"enabled": False, "websocket_url": "ws://h:9001/"})) is None
    assert websocket_port(robot_config(EXTERNAL, {"websocket_url": "ws://h/"})) == 80
    assert "protocol websockets" not in main_conf(robot_config(EXTERNAL, None), FILES)


def test_a_wss_listener_uses_the_brokers_certificate() -> None:
    cfg = robot_config(EXTERNAL, {"websocket_url": "wss://robot.local:9443/"})
    assert websocket_port(cfg) == 9443 and websocket_tls(cfg)
    tls = dataclasses.replace(FILES, tls_port=8883, cafile="/m/ca.crt", certfile="/m/broker.crt",
                              keyfile="/m/broker.key", websockets_port=9443, websockets_tls=True)
    assert listener_blocks(main_conf(cfg, tls))[-1] == [
        "listener 9443", "protocol websockets", "certfile /m/broker.crt", "keyfile /m/broker.key",
        "tls_version tlsv1.2"]
    with pytest.raises(ValueError, match="certificate"):
        main_conf(cfg, dataclasses.replace(FILES, websockets_port=9443, websockets_tls=True))


# --------------------------------------------------------------------------- a real mosquitto


class WsClient:
    """paho over WebSocket, on its own network thread: connect and wait for the CONNACK, subscribe, publish."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 ca: Path | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport="websockets",
                                  client_id=f"ws-test-{username or 'anonymous'}-{free_port()}")
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.port = port
        self.connack = threading.Event()
        self.reason: Any = None
        self.subscribed = threading.Event()
        self.got: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connack.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.arrived:
            self.got.append((msg.topic, msg.payload))
            self.arrived.notify_all()

    def connect(self) -> bool:
        """True when the broker accepted the login, False when it refused it."""
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        assert self.connack.wait(10), "no CONNACK over the WebSocket listener"
        return not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def wait_for(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received until ``payload`` arrived on ``topic``."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: (topic, payload) in self.got, 10), f"{payload!r} not on {topic}"
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ws_mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Any, int, Path | None]]:
    """A robot on mosquitto with the web panel enabled, mosquitto run on the file `broker-config` wrote;
    (the loaded config, the WebSocket port, the CA file or None).  param True: a TLS (wss://) WebSocket."""
    wss = bool(getattr(request, "param", False))
    port, tls_port, ws_port = free_port(), free_port(), free_port()
    scheme = "wss" if wss else "ws"
    cfg = write_config(tmp_path / "robot.yaml", unique_robot(), {"urls": [f"mqtt://127.0.0.1:{port}"]}, PARTS,
                       clients=CLIENTS, web={"websocket_url": f"{scheme}://127.0.0.1:{ws_port}/"})
    loaded = load_config(cfg)
    store = make_credentials(loaded)
    files: tuple[str, ...] = ("passwd", "acl")
    args: tuple[str, ...] = ()
    if wss:
        from orchestrator.security.tls import make_dev_certs

        make_dev_certs(store.directory, ["127.0.0.1"], robot=loaded.config.robot)
        files += ("ca.crt", "broker.crt", "broker.key")
        args = ("--tls-port", str(tls_port))
    with mosquitto_from_broker_config(loaded, store, tmp_path, port=port, wait_port=ws_port, args=args,
                                      files=files) as conf:
        assert f"listener {ws_port}\nprotocol websockets" in conf.read_text()
        yield loaded, ws_port, store.path("ca.crt") if wss else None


@pytest.mark.parametrize("ws_mosquitto", [False, True], ids=["ws", "wss"], indirect=True)
def test_mosquitto_websocket_listener_takes_the_robots_identities_and_rights(
        ws_mosquitto: tuple[Any, int, Path | None]) -> None:
    loaded, ws_port, ca = ws_mosquitto
    robot = loaded.config.robot
    store = make_credentials(loaded)
    t = Topics(robot)
    operator, main = ClientId(robot, "operator"), PartId(robot, "main")

    anonymous = WsClient(ws_port, ca=ca)
    try:
        assert not anonymous.connect(), "mosquitto let an anonymous client in over WebSocket"
    finally:
        anonymous.close()
    wrong = WsClient(ws_port, operator.username, "not-the-password", ca=ca)
    try:
        assert not wrong.connect(), "mosquitto took a wrong password over WebSocket"
    finally:
        wrong.close()

    page = WsClient(ws_port, operator.username, store.password(operator), ca=ca)
    part = WsClient(ws_port, main.username, store.password(main), ca=ca)
    try:
        assert page.connect(), f"the operator's credential refused over WebSocket: {page.reason}"
        assert part.connect(), f"part main's credential refused over WebSocket: {part.reason}"
        # the operator reads the robot's public picture (a part's state) ...
        page.subscribe(t.part_state("main"))
        part.publish(t.part_state("main"), b"running")
        page.wait_for(t.part_state("main"), b"running")
        # ... and writes only under its own name: its forged state of main is dropped, its call goes through
        # (one connection, QoS 1: mosquitto delivers in order, so the forgery would have come first)
        part.subscribe(t.part_state("main"))
        part.subscribe(t.calls_to("main"))
        call = t.call(operator.sender, "main", "health")
        page.publish(t.part_state("main"), b"forged")
        page.publish(call, b"a call")
        got = part.wait_for(call, b"a call")
        assert (t.part_state("main"), b"forged") not in got
        # a reply to another caller is not for the operator to read
        page.subscribe(t.replies_to("part/base"))
        part.publish(t.reply("main", "part/base"), b"not yours")
        part.publish(t.part_state("main"), b"marker")
        assert (t.reply("main", "part/base"), b"not yours") not in page.wait_for(t.part_state("main"), b"marker")
    finally:
        page.close()
        part.close()


def test_broker_config_refuses_wss_without_the_brokers_certificate(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "robot.yaml", unique_robot(), {"urls": ["mqtt://127.0.0.1:1883"]}, PARTS,
                       clients=CLIENTS, web={"websocket_url": "wss://127.0.0.1:9443/"})
    make_credentials(load_config(cfg))
    res = subprocess.run([sys.executable, "-m", "orchestrator", "broker-config", "-c", str(cfg), "--out",
                          str(tmp_path / "conf")], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "--tls-port" in res.stderr
    assert not (tmp_path / "conf" / "mosquitto.conf").exists()


# --------------------------------------------------------------------------- the embedded broker's wss:// listener


async def test_the_embedded_brokers_websocket_listener_is_wss_only_on_a_robot_with_tls(tmp_path: Path) -> None:
    """`up` on a robot with TLS (broker.embedded.tls_port) gives the embedded broker's WebSocket listener the
    broker's certificate: paho over wss:// trusting the robot's CA logs in as the operator; anonymous clients are
    refused, and a plain ws:// client gets no MQTT session at all (no plain listener on that port)."""
    import asyncio

    from orchestrator.broker import EmbeddedBroker
    from orchestrator.security.tls import make_dev_certs

    cfg = write_config(tmp_path / "robot.yaml", unique_robot(),
                       {"embedded": {"port": 0, "tls_port": 0, "websocket_port": 0}, "tls": {"ca_file": "ca.crt"}},
                       PARTS, clients=CLIENTS, web={})
    loaded = load_config(cfg)
    assert loaded.config.panel_tls()
    store = make_credentials(loaded)
    make_dev_certs(store.directory, ["127.0.0.1"], robot=loaded.config.robot)
    port, tls_port, ws_port = free_port(), free_port(), free_port()
    operator = ClientId(loaded.config.robot, "operator")
    with pytest.raises(ValueError, match="WebSocket-over-TLS listener needs"):
        EmbeddedBroker("127.0.0.1", port, websocket_port=ws_port, websocket_tls=True)
    async with EmbeddedBroker("127.0.0.1", port, passwords=store.password_file(), tls_port=tls_port,
                              certfile=str(store.path("broker.crt")), keyfile=str(store.path("broker.key")),
                              websocket_port=ws_port, websocket_tls=True) as broker:
        assert broker.websocket_port == ws_port
        ca = store.path("ca.crt")

        def logins() -> tuple[bool, bool]:
            anonymous, page = WsClient(ws_port, ca=ca), WsClient(ws_port, operator.username,
                                                                 store.password(operator), ca=ca)
            try:
                return anonymous.connect(), page.connect()
            finally:
                anonymous.close()
                page.close()

        assert await asyncio.to_thread(logins) == (False, True)

        def plain() -> None:  # the listener answers its WebSocket upgrade by closing the connection
            client = WsClient(ws_port, operator.username, store.password(operator))
            try:
                with pytest.raises((mqtt.WebsocketConnectionError, OSError)):
                    client.client.connect("127.0.0.1", ws_port, keepalive=10)
            finally:
                client.close()
            assert not client.connack.is_set()

        await asyncio.to_thread(plain)
