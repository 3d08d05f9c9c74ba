"""A NATS server lab for the tests: one node or a three-node cluster, each with an MQTT listener.

Every node binds 127.0.0.1 on free ports (client, cluster, MQTT, monitoring), keeps its JetStream store
and its log in a private temp dir, and is stopped (SIGTERM, then SIGKILL) and removed when the
block exits, also when the test failed (the logs are then printed, pytest shows them), and at
interpreter exit if a run was aborted.  The machine's own NATS server (127.0.0.1:4222) is never
touched: nothing here uses a fixed port.

Readiness is an event, not a sleep: a start (or a restart) returns once the live nodes agree on a
JetStream meta leader and, through MQTT, a QoS 1 message published on every live node has reached
a subscriber on every live node, and a retained message published on the first node is seen by a
late subscriber on every other node.  Each attempt is bounded, and so is the whole wait
(``ready_timeout``).

    with start_nats_cluster() as lab:          # three nodes, formed and usable
        urls = lab.addresses                   # [("127.0.0.1", port), ...] for MqttClient(urls=...)
        lab.kill(0)                            # SIGKILL node 0
        lab.restart(0)                         # same ports and store; waits until usable again
        print(lab.logs())                      # every node's log, for failure messages

    with start_nats() as lab:                  # a single node (JetStream on, no cluster block)
        info = lab.nodes[0].info               # a BrokerInfo(kind="nats") for tests/brokers.py users

``authorization`` is a NATS ``authorization { ... }`` block (users, passwords, permissions on NATS
subjects), rendered into every node's config; :func:`mqtt_to_nats_subject` gives the subject a
topic or filter becomes inside NATS.  nats-server is a test dependency like mosquitto: when it is
missing the lab fails with a message telling to run ``make test`` (its ``nats-server`` target
installs the Debian package).  It never skips.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from brokers import BrokerInfo, free_port
from paho.mqtt.enums import CallbackAPIVersion

__all__ = [
    "NatsLab",
    "NatsNode",
    "acl_subjects",
    "mqtt_to_nats_subject",
    "nats_authorization",
    "nats_server_path",
    "start_nats",
    "start_nats_cluster",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # a node's ports must accept connections within this
READY_TIMEOUT = 30.0  # the whole cluster must be usable through MQTT within this
STOP_TIMEOUT = 5.0
PROBE_WAIT = 5.0  # per probe step; nats-server's own JetStream API timeout is 4 s
CLUSTER_NAME = "natslab"


def nats_server_path() -> str:
    """The nats-server binary; a clear error (never a skip) when it is not installed."""
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "nats-server is not installed, and the NATS tests run against it: run `make test` "
        "(its `nats-server` target installs the Debian package), or `apt-get install nats-server`."
    )


def mqtt_to_nats_subject(topic: str) -> str:
    """The NATS subject an MQTT topic name or filter becomes (nats-server 2.9's own mapping).

    ``/`` separates levels in MQTT and ``.`` in NATS, so ``orc/v1/r/part/main/#`` is
    ``orc.v1.r.part.main.>``; ``+`` becomes ``*`` and ``#`` becomes ``>``.  An MQTT ``#`` also
    matches its parent level (``a/#`` matches ``a``), which NATS's ``>`` does not: nats-server
    subscribes to both ``a.>`` and ``a``, so a permission for ``a/#`` needs both subjects.
    nats-server 2.9 refuses ``.`` and space in MQTT topics (so does this function); empty levels
    (leading, trailing or doubled ``/``) are not supported here.
    """
    if not topic or "." in topic or " " in topic:
        raise ValueError(f"{topic!r}: nats-server 2.9 refuses empty topics and '.' or ' ' in MQTT topics")
    levels = topic.split("/")
    if "" in levels:
        raise ValueError(f"{topic!r}: empty topic levels are not mapped here")
    return ".".join("*" if lv == "+" else ">" if lv == "#" else lv for lv in levels)


def acl_subjects(pattern: str) -> list[str]:
    """The NATS subjects a permission needs to cover the MQTT pattern ``pattern``.

    ``X/#`` needs ``X`` and ``X.>`` (nats-server subscribes to both for an MQTT ``#``), ``#`` is ``>``.
    """
    if pattern == "#":
        return [">"]
    if pattern.endswith("/#"):
        base = mqtt_to_nats_subject(pattern[:-2])
        return [base, f"{base}.>"]
    return [mqtt_to_nats_subject(pattern)]


def nats_authorization(
    users: dict[str, str] | None,
    acl_rules: dict[str | None, tuple[list[str], list[str]]] | None,
) -> tuple[str | None, tuple[str, str] | None]:
    """An ``authorization`` block for ``start_broker``'s options, and the probe's credentials.

    ``users``: username -> password (anonymous clients refused).  ``acl_rules``: username (``None``
    = anonymous) -> (read patterns, write patterns) in MQTT syntax, as for mosquitto: read becomes
    subscribe permissions (plus ``$MQTT.sub.>``, which a QoS 1 subscription needs), write becomes
    publish permissions; a user without rules may do nothing.  Without ``users``, anonymous
    clients are the ``no_auth_user``.  The readiness probe gets a user of its own under ``natslab.>``.
    """
    if users is None and acl_rules is None:
        return None, None
    probe = ("natslab-probe", uuid.uuid4().hex)

    def quoted(items: list[str]) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    def permissions(rules: tuple[list[str], list[str]] | None) -> str:
        if acl_rules is None:
            return ""
        read, write = rules or ([], [])
        sub = [x for p in read for x in acl_subjects(p)]
        pub = [x for p in write for x in acl_subjects(p)]
        sub_part = f"allow: {quoted([*sub, '$MQTT.sub.>'])}" if sub else 'deny: [">"]'
        pub_part = f"allow: {quoted(pub)}" if pub else 'deny: [">"]'
        return f", permissions: {{ publish: {{ {pub_part} }}, subscribe: {{ {sub_part} }} }}"

    entries = [
        f"{{user: {json.dumps(probe[0])}, password: {json.dumps(probe[1])}, permissions: "
        '{ publish: ["natslab.>"], subscribe: ["natslab.>", "$MQTT.sub.>"] } }'
    ]
    for name, password in (users or {}).items():
        rules = (acl_rules or {}).get(name)
        entries.append(f"{{user: {json.dumps(name)}, password: {json.dumps(password)}{permissions(rules)}}}")
    no_auth = ""
    if users is None:
        anonymous = "natslab-anonymous"
        entries.append(f"{{user: {json.dumps(anonymous)}, password: {json.dumps(uuid.uuid4().hex)}"
                       f"{permissions((acl_rules or {}).get(None))}}}")
        no_auth = f"\nno_auth_user: {json.dumps(anonymous)}"
    body = "\n    ".join(entries)
    return f"authorization {{\n  users = [\n    {body}\n  ]\n}}{no_auth}", probe


# ----------------------------------------------------------------------------------------- nodes


@dataclasses.dataclass
class NatsNode:
    """One nats-server process of the lab, with its ports, config, store and log."""

    index: int
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False)
    starts: int = 0

    @property
    def conf_path(self) -> Path:
        return self.directory / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats.log"

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``: the node's MQTT listener."""
        return f"mqtt://{HOST}:{self.mqtt_port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, mqtt port)``, the form ``MqttClient(urls=[...])`` takes."""
        return (HOST, self.mqtt_port)

    @property
    def info(self) -> BrokerInfo:
        """The node as a :class:`brokers.BrokerInfo` (kind ``"nats"``), for the paho test helpers."""
        return BrokerInfo("nats", HOST, self.mqtt_port, log_path=self.log_path)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


_RUNNING: weakref.WeakSet[NatsLab] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    """Stop the nodes of any lab still running when the interpreter exits (an aborted test run)."""
    for lab in list(_RUNNING):
        with contextlib.suppress(Exception):
            lab.stop()


class NatsLab:
    """A running set of NATS nodes (1 = standalone, more = one cluster); see the module docstring."""

    def __init__(
        self,
        size: int,
        directory: Path,
        *,
        authorization: str | None = None,
        mqtt_conf: str = "",
        extra_conf: str = "",
        ready_timeout: float = READY_TIMEOUT,
        probe_credentials: tuple[str, str] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a lab needs at least one node")
        self.binary = nats_server_path()
        self.directory = directory
        self.authorization = authorization
        self.mqtt_conf = mqtt_conf
        self.extra_conf = extra_conf
        self.ready_timeout = ready_timeout
        self.probe_credentials = probe_credentials
        self.nodes: list[NatsNode] = []
        self.ready_s: float | None = None  # how long the last start or restart took to be usable
        self.probe_failures: list[str] = []  # the failed probe attempts of the last wait_ready()
        self._pick_ports(size)

    # -- addresses ----------------------------------------------------------------------------------
    @property
    def clustered(self) -> bool:
        return len(self.nodes) > 1

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [n.address for n in self.nodes]

    def live(self) -> list[NatsNode]:
        return [n for n in self.nodes if n.alive]

    # -- config -------------------------------------------------------------------------------------
    def _pick_ports(self, size: int) -> None:
        taken: set[int] = set()

        def pick() -> int:
            for _ in range(50):
                port = free_port()
                if port not in taken:
                    taken.add(port)
                    return port
            raise RuntimeError("no free port found")

        self.nodes = []
        for i in range(size):
            directory = self.directory / f"n{i}"
            directory.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsNode(i, f"{CLUSTER_NAME}-{i}", pick(), pick(), pick(), pick(), directory))

    def render(self, node: NatsNode) -> str:
        lines = [
            f"server_name: {node.name}",
            f"listen: {HOST}:{node.client_port}",
            f"http: {HOST}:{node.http_port}",  # monitoring: /jsz tells the JetStream meta leader
            # bounded stores: the machine is shared and the tests keep little
            f'jetstream {{ store_dir: "{node.store_dir}", max_memory_store: 64MB, max_file_store: 512MB }}',
        ]
        if self.clustered:
            routes = ", ".join(f"nats-route://{HOST}:{n.cluster_port}" for n in self.nodes)
            lines.append(f"cluster {{ name: {CLUSTER_NAME}, listen: {HOST}:{node.cluster_port}, routes: [{routes}] }}")
        lines.append(f"mqtt {{\n  listen: {HOST}:{node.mqtt_port}\n{self.mqtt_conf}\n}}")
        if self.authorization:
            lines.append(self.authorization)
        if self.extra_conf:
            lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    # -- processes ----------------------------------------------------------------------------------
    def _spawn(self, node: NatsNode) -> None:
        node.conf_path.write_text(self.render(node))
        node.starts += 1
        with node.log_path.open("ab") as log:
            log.write(f"---- natslab: start #{node.starts} of {node.name} at {time.time():.3f} ----\n".encode())
            log.flush()
            # nats-server logs to stderr by default: both streams go to the node's log (config errors too)
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def _wait_ports(self, node: NatsNode) -> None:
        ports = [node.client_port, node.mqtt_port, node.http_port] + ([node.cluster_port] if self.clustered else [])
        deadline = time.monotonic() + START_TIMEOUT
        for port in ports:
            delay = 0.005
            while True:
                if node.proc is None or node.proc.poll() is not None:
                    code = node.proc.returncode if node.proc is not None else None
                    raise RuntimeError(f"{node.name} exited with code {code} before listening\n{node.log()}")
                try:
                    with socket.create_connection((HOST, port), timeout=0.5):
                        break
                except OSError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{node.name}: nothing accepted on {HOST}:{port} within {START_TIMEOUT} s")
                time.sleep(delay)  # bounded poll interval, not a wait for readiness
                delay = min(delay * 2, 0.1)

    def start(self) -> None:
        _RUNNING.add(self)
        started = time.monotonic()
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self._wait_ports(node)
        self.wait_ready()
        self.ready_s = time.monotonic() - started

    def _signal(self, node: NatsNode, sig: int) -> None:
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(sig)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Signal node ``index`` (SIGKILL by default: sockets closed, no goodbye) and reap it."""
        node = self.nodes[index]
        self._signal(node, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self._signal(node, sig)
        if node.proc is not None:
            try:
                node.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=STOP_TIMEOUT)

    def restart(self, index: int) -> None:
        """Start node ``index`` again (same ports, config and store) and wait until the lab is usable."""
        node = self.nodes[index]
        if node.alive:
            self.kill(index)
        started = time.monotonic()
        self._spawn(node)
        self._wait_ports(node)
        self.wait_ready()
        self.ready_s = time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM every node, SIGKILL what is left after STOP_TIMEOUT; always reaps. Idempotent."""
        for node in self.nodes:
            self._signal(node, signal.SIGCONT)
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.kill()
                node.proc.wait(timeout=STOP_TIMEOUT)

    def logs(self, tail: int | None = 60) -> str:
        """Every node's log (the last ``tail`` lines of each), for failure messages."""
        parts = []
        for node in self.nodes:
            lines = node.log().splitlines()
            if tail is not None:
                lines = lines[-tail:]
            state = "running" if node.alive else "down"
            parts.append(f"==== {node.name} ({state}, mqtt {node.url}) ====\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- JetStream state (monitoring port) -------------------------------------------------------------
    def jsz(self, index: int, query: str = "") -> dict[str, Any]:
        """Node ``index``'s ``/jsz`` monitoring document (``query`` e.g. ``"streams=true"``)."""
        node = self.nodes[index]
        url = f"http://{HOST}:{node.http_port}/jsz" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=2.0) as response:
            doc: dict[str, Any] = json.load(response)
            return doc

    def meta_leader(self) -> int | None:
        """The index of the JetStream meta leader every live node agrees on, or None (no agreement)."""
        if not self.clustered:
            return 0 if self.nodes[0].alive else None
        names: set[str] = set()
        for node in self.live():
            try:
                names.add(str(self.jsz(node.index).get("meta_cluster", {}).get("leader") or ""))
            except (OSError, ValueError):
                return None
        if len(names) != 1:
            return None
        (name,) = names
        for node in self.live():
            if node.name == name:
                return node.index
        return None

    def _streams(self) -> list[dict[str, Any]] | None:
        """Every JetStream stream's detail as the meta leader sees it (clustered labs); None while the nodes agree
        on no meta leader or the monitoring endpoint does not answer."""
        leader = self.meta_leader()
        if leader is None:
            return None
        try:
            doc = self.jsz(leader, "accounts=true&streams=true")
        except (OSError, ValueError):
            return None
        return [s for account in doc.get("account_details", []) for s in account.get("stream_detail", [])]

    def stream_leaders(self) -> dict[str, str] | None:
        """The leader of each JetStream stream, as the meta leader sees them; None while the nodes agree on
        no meta leader, while nats-server has not made its MQTT streams yet, or while one has no live leader (a
        QoS 1 subscription then gets SUBACK 0x80: its consumer cannot be made)."""
        if not self.clustered:
            return {} if self.meta_leader() is not None else None
        streams = self._streams()
        if streams is None:
            return None
        leaders = {s["name"]: (s.get("cluster") or {}).get("leader") for s in streams}
        live = {n.name for n in self.live()}  # right after a kill the dead node may still be named leader
        if not leaders.get("$MQTT_msgs") or not all(v in live for v in leaders.values()):
            return None
        return {k: str(v) for k, v in leaders.items()}

    def probe_consumers(self) -> int | None:
        """How many consumers the stream of QoS 1 messages ($MQTT_msgs) has, as the meta leader sees it (each
        QoS 1 subscription is one); None when unknown."""
        streams = self._streams() if self.clustered else None
        if streams is None:
            return None
        return next((int((s.get("state") or {}).get("consumer_count", 0)) for s in streams
                     if s.get("name") == "$MQTT_msgs"), 0)

    # -- readiness ----------------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> None:
        """Return once MQTT works across every live node (see the module docstring); raise with the logs.

        First the live nodes must agree on a JetStream meta leader (monitoring port, polled every
        50 ms): an MQTT CONNECT before there is one costs a 4 s JetStream API timeout inside
        nats-server.  Then the MQTT probe, repeated (each attempt bounded) until it passes.
        """
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        started = time.monotonic()
        self.probe_failures = []
        attempts = 0
        last: Exception | None = None
        while time.monotonic() < deadline and attempts < 1000:
            attempts += 1
            live = self.live()
            if not live:
                raise RuntimeError(f"no NATS node is running\n{self.logs()}")
            if self.meta_leader() is None:
                last = RuntimeError("the live nodes do not agree on a JetStream meta leader")
                time.sleep(0.05)  # poll interval
                continue
            try:
                before = self.probe_consumers() or 0
                _probe(live, self.probe_credentials, min(PROBE_WAIT, max(0.5, deadline - time.monotonic())))
                # the probe made nats-server create its MQTT streams; a consumer (a QoS 1 subscription) can
                # be made once each has a leader, which may come a moment after MQTT works; and once the
                # probe's own consumers are deleted (each a JetStream API request: a burst of them right
                # after start-up timed out a test's QoS 1 SUBSCRIBE in CI)
                if self.stream_leaders() is not None:
                    while time.monotonic() < deadline and (self.probe_consumers() or 0) > before:
                        time.sleep(0.05)  # poll interval: the monitoring endpoint has nothing to await
                    return
                last = RuntimeError("a JetStream stream of the MQTT layer has no leader yet")
                time.sleep(0.05)  # poll interval
                continue
            except (OSError, RuntimeError) as exc:
                last = exc
                self.probe_failures.append(f"{time.monotonic() - started:.2f}s: {exc}")
            time.sleep(0.2)  # between bounded attempts, not a wait for readiness
        raise TimeoutError(
            f"the NATS lab was not usable through MQTT within {time.monotonic() - started:.1f} s "
            f"({attempts} checks): {last}\n{self.logs()}"
        )


# ----------------------------------------------------------------------------------------- probe


class _ProbeClient:
    """A bare paho client on its own thread for the readiness probe; every wait is bounded."""

    def __init__(self, node: NatsNode, credentials: tuple[str, str] | None, wait: float) -> None:
        self.node = node
        self.wait = wait
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.refused: Any = None
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"natslab-probe-{uuid.uuid4().hex[:10]}")
        if credentials is not None:
            self.paho.username_pw_set(*credentials)
        self.paho.reconnect_delay_set(30, 30)  # a probe never reconnects: the next attempt does
        self.paho.on_connect = self._on_connect
        self.paho.on_message = lambda c, u, m: self.messages.put(m)
        self.paho.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put([int(r.value) for r in rcs])

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.refused = rc
        else:
            self.connected.set()

    def connect(self) -> _ProbeClient:
        self.paho.connect(HOST, self.node.mqtt_port, keepalive=10)
        self.paho.loop_start()
        if not self.connected.wait(self.wait):
            raise RuntimeError(f"{self.node.name}: no MQTT CONNACK within {self.wait:g} s (refused: {self.refused})")
        return self

    def subscribe(self, filter_: str) -> None:
        self.paho.subscribe(filter_, qos=1)
        try:
            codes = self.subacks.get(timeout=self.wait)
        except queue.Empty:
            raise RuntimeError(f"{self.node.name}: no SUBACK within {self.wait:g} s") from None
        if any(c >= 0x80 for c in codes):
            raise RuntimeError(f"{self.node.name}: subscription refused ({codes})")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(self.wait)
        if not info.is_published():
            raise RuntimeError(f"{self.node.name}: no PUBACK within {self.wait:g} s")

    def expect(self, wanted: set[tuple[str, bytes]]) -> None:
        deadline = time.monotonic() + self.wait
        missing = set(wanted)
        while missing:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.node.name}: never received {sorted(missing)}") from None
            missing.discard((m.topic, bytes(m.payload)))

    def poll(self, wanted: tuple[str, bytes], timeout: float) -> bool:
        """True if ``wanted`` (topic, payload) arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if (m.topic, bytes(m.payload)) == wanted:
                return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        with contextlib.suppress(Exception):
            self.paho.loop_stop()


def _probe(nodes: Sequence[NatsNode], credentials: tuple[str, str] | None, wait: float) -> None:
    """One attempt: QoS 1 from every node to every node, and a retained message seen on every node."""
    root = f"natslab/probe/{uuid.uuid4().hex[:12]}"
    made: list[_ProbeClient] = []
    try:
        subs = []
        for node in nodes:
            c = _ProbeClient(node, credentials, wait)
            made.append(c)
            c.connect().subscribe(f"{root}/live/+")
            subs.append(c)
        for i, c in enumerate(subs):
            c.publish(f"{root}/live/n{i}", b"probe")
        wanted = {(f"{root}/live/n{i}", b"probe") for i in range(len(subs))}
        for c in subs:
            c.expect(wanted)
        retained = f"{root}/retained"
        subs[0].publish(retained, b"kept", retain=True)
        try:
            # replicated to the other nodes asynchronously: a late subscriber on each node must see it
            # (bounded retries, each with a fresh client)
            for node in nodes[1:] or nodes:
                for attempt in range(20):
                    late = _ProbeClient(node, credentials, wait)
                    made.append(late)
                    late.connect().subscribe(retained)
                    seen = late.poll((retained, b"kept"), 0.2 if attempt < 19 else wait)
                    late.close()
                    if seen:
                        break
                else:
                    raise RuntimeError(f"{node.name}: a late subscriber never saw the retained probe")
        finally:
            with contextlib.suppress(Exception):
                subs[0].publish(retained, b"", retain=True)  # cleared: tests see no probe leftovers
    finally:
        for c in made:
            c.close()


# ----------------------------------------------------------------------------------------- entry


@contextlib.contextmanager
def start_nats_cluster(
    size: int = 3,
    *,
    authorization: str | None = None,
    mqtt_conf: str = "",
    extra_conf: str = "",
    ready_timeout: float = READY_TIMEOUT,
    probe_credentials: tuple[str, str] | None = None,
) -> Iterator[NatsLab]:
    """Run ``size`` NATS nodes (a cluster when more than one) until the block exits.

    ``mqtt_conf`` goes inside every node's ``mqtt { }`` block, ``authorization`` (a whole
    ``authorization { ... }`` block) and ``extra_conf`` at the top level.  With authorization on,
    pass ``probe_credentials`` (a user allowed to publish and subscribe under ``natslab/``) for the
    readiness probe.  Ports are picked again (up to 3 times) if a node cannot bind.
    """
    with tempfile.TemporaryDirectory(prefix="natslab-") as tmp:
        last: Exception | None = None
        for attempt in range(3):
            lab = NatsLab(
                size,
                Path(tmp) / f"try{attempt}",
                authorization=authorization,
                mqtt_conf=mqtt_conf,
                extra_conf=extra_conf,
                ready_timeout=ready_timeout,
                probe_credentials=probe_credentials,
            )
            try:
                lab.start()
            except RuntimeError as exc:  # a node exited: most likely a port taken meanwhile
                lab.stop()
                last = exc
                if "address already in use" not in str(exc):
                    raise
                continue
            except BaseException:
                lab.stop()
                raise
            try:
                yield lab
            except Exception:
                # pytest shows a failed test's captured output: the servers' side of the story
                print(f"---- NATS lab logs at the failure ----\n{lab.logs(tail=200)}")
                raise
            finally:
                lab.stop()
            return
        assert last is not None
        raise last


@contextlib.contextmanager
def start_nats(
    *,
    authorization: str | None = None,
    mqtt_conf: str = "",
    extra_conf: str = "",
    probe_credentials: tuple[str, str] | None = None,
) -> Iterator[NatsLab]:
    """A single NATS node (JetStream on, no cluster): :func:`start_nats_cluster` with ``size=1``."""
    with start_nats_cluster(
        1,
        authorization=authorization,
        mqtt_conf=mqtt_conf,
        extra_conf=extra_conf,
        probe_credentials=probe_credentials,
    ) as lab:
        yield lab
