"""NATS (nats-server 2.9, Debian) as the project's MQTT broker: what works, what differs.

Each test checks one behaviour the project relies on, against a three-node cluster (or one node
where the point is configuration), through the project's own transport
(:class:`orchestrator.transport.client.MqttClient`) where it can, raw paho where a flag the
transport hides matters (session present, granted QoS).  Where NATS differs from mosquitto the
test asserts what NATS does and says so; docs/brokers.md ("NATS (cluster)") has the summary and
the timings, which the tests print (``pytest -s``).

Every wait is bounded; "nothing arrives" is checked with a marker message sent after the one that
must not arrive (per-publisher ordering), except where only time can tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from brokers import REPO_ROOT, BrokerInfo, free_port
from natslab import NatsLab, NatsNode, acl_subjects, mqtt_to_nats_subject, start_nats, start_nats_cluster
from paho.mqtt.enums import CallbackAPIVersion
from robot import Up, Watcher, alive, start_part_process, stop_processes, three_level_parts, unique_robot, write_config
from test_robot import PARTS, assert_bottom_up

from orchestrator.config import load_config
from orchestrator.errors import BrokerUnavailable, OrchestratorError
from orchestrator.protocol.topics import Topics
from orchestrator.transport.client import Message, MqttClient, Will

WAIT = 5.0  # upper bound for anything that should take milliseconds

pytestmark = pytest.mark.timeout(90)


def measured(what: str, value: float | str, unit: str = "s") -> None:
    """Print a timing for docs/brokers.md (shown with ``pytest -s``)."""
    text = f"{value:.3f} {unit}" if isinstance(value, float) else value
    print(f"[nats measured] {what}: {text}")


def _robot() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsLab]:
    """One three-node cluster for the tests that do not kill nodes."""
    with start_nats_cluster() as lab:
        measured("cluster of 3 formed and usable through MQTT", lab.ready_s or 0.0)
        yield lab


@contextlib.asynccontextmanager
async def mqtt(
    node: NatsNode | list[NatsNode], name: str | None = None, **kwargs: Any
) -> AsyncIterator[MqttClient]:
    nodes = node if isinstance(node, list) else [node]
    client = MqttClient(name or f"t.{uuid.uuid4().hex[:10]}", [n.address for n in nodes], **kwargs)
    async with client:
        yield client


class Inbox:
    """Messages of some subscriptions, gathered on the event loop; waits are bounded."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[Message] = asyncio.Queue()

    def __call__(self, m: Message) -> None:
        self.q.put_nowait(m)

    async def get(self, timeout: float = WAIT) -> Message:
        return await asyncio.wait_for(self.q.get(), timeout)

    async def until(self, topic: str, timeout: float = WAIT) -> list[Message]:
        """Everything received before the marker on ``topic`` (which must arrive)."""
        before: list[Message] = []
        async with asyncio.timeout(timeout):
            while True:
                m = await self.q.get()
                if m.topic == topic:
                    return before
                before.append(m)


# ------------------------------------------------------------------------------------------ paho


class Raw:
    """A bare paho client (own thread) for what the transport hides: session present, granted QoS."""

    def __init__(self, node: NatsNode, client_id: str | None = None, *, clean: bool = True, **auth: str) -> None:
        self.node = node
        self.client_id = client_id or f"raw.{uuid.uuid4().hex[:10]}"
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=clean)
        if auth:
            self.paho.username_pw_set(auth["username"], auth.get("password"))
        self.paho.reconnect_delay_set(30, 30)  # never reconnect behind the test's back
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.session_present: bool | None = None
        self.connack: Any = None
        self._subacks: queue.Queue[list[int]] = queue.Queue()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = lambda c, u, f, rc, p: (self.connected.clear(), self.disconnected.set())
        self.paho.on_message = lambda c, u, m: self.messages.put(m)
        self.paho.on_subscribe = lambda c, u, mid, rcs, p: self._subacks.put([int(r.value) for r in rcs])

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = rc
        self.session_present = bool(flags.session_present)
        if rc.is_failure:
            self.disconnected.set()
        else:
            self.connected.set()

    def connect(self) -> Raw:
        self.paho.connect(self.node.host, self.node.mqtt_port, keepalive=30)
        self.paho.loop_start()
        assert self.connected.wait(WAIT), f"{self.client_id}: no CONNACK from {self.node.name}: {self.connack}"
        return self

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        self.paho.subscribe(list(filters))
        return self._subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(WAIT)
            assert info.is_published(), f"no PUBACK for {topic}"

    def expect(self, timeout: float = WAIT) -> paho.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: nothing within {timeout} s") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.connected.is_set():
                self.paho.disconnect()
        with contextlib.suppress(Exception):
            self.paho.loop_stop()


@contextlib.contextmanager
def raws() -> Iterator[list[Raw]]:
    made: list[Raw] = []
    try:
        yield made
    finally:
        for r in made:
            r.close()


def raw(made: list[Raw], node: NatsNode, client_id: str | None = None, **kwargs: Any) -> Raw:
    r = Raw(node, client_id, **kwargs)
    made.append(r)
    return r


# -------------------------------------------------------------------------- a transport in a child

CHILD = r"""
import asyncio, sys
from orchestrator.transport.client import MqttClient, Will
host, port, cid, keepalive, will_topic = sys.argv[1:6]

async def main():
    will = lambda birth: Will(will_topic, b"dead", qos=1, retain=False)
    async with MqttClient(cid, [(host, int(port))], keepalive=int(keepalive), will=will) as c:
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


class Child:
    """The project's MqttClient in a child process, to SIGKILL or SIGSTOP; 'ready' once connected."""

    def __init__(self, node: NatsNode, will_topic: str, keepalive: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, node.host, str(node.mqtt_port), f"child.{uuid.uuid4().hex[:8]}",
             str(keepalive), will_topic],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready"):
                self.ready.set()

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def child(node: NatsNode, will_topic: str, keepalive: int = 30) -> Iterator[Child]:
    c = Child(node, will_topic, keepalive)
    try:
        if not c.ready.wait(20):
            c.stop()
            err = c.proc.stderr.read() if c.proc.stderr else ""
            raise AssertionError(f"the child never connected: {err}")
        yield c
    finally:
        c.stop()


# ======================================================================================== the lab


def test_lab_cluster_is_formed_on_free_loopback_ports(cluster: NatsLab) -> None:
    assert len(cluster.nodes) == 3 and all(n.alive for n in cluster.nodes)
    ports = [p for n in cluster.nodes for p in (n.client_port, n.cluster_port, n.mqtt_port, n.http_port)]
    assert len(set(ports)) == len(ports) and not {4222, 1883, 6222, 8222} & set(ports)
    assert cluster.urls == [f"mqtt://127.0.0.1:{n.mqtt_port}" for n in cluster.nodes]
    leader = cluster.meta_leader()
    assert leader is not None
    assert cluster.jsz(leader)["meta_cluster"]["cluster_size"] == 3
    assert "Server is ready" in cluster.nodes[0].log()
    assert str(cluster.nodes[0].store_dir).startswith(str(cluster.directory))


def test_single_node_lab() -> None:
    with start_nats() as lab:
        (node,) = lab.nodes
        assert not lab.clustered and "cluster {" not in node.conf_path.read_text()
        assert node.info == BrokerInfo("nats", "127.0.0.1", node.mqtt_port)
        measured("single node usable through MQTT", lab.ready_s or 0.0)
    assert not node.alive and not node.directory.exists()  # stopped and removed


def test_topic_to_subject_mapping() -> None:
    assert mqtt_to_nats_subject("orc/v1/r/part/main/#") == "orc.v1.r.part.main.>"
    assert mqtt_to_nats_subject("orc/v1/r/+/+/call/main/+") == "orc.v1.r.*.*.call.main.*"
    with pytest.raises(ValueError):
        mqtt_to_nats_subject("orc/v1/r/part/a.b/state")
    assert acl_subjects("orc/v1/r/part/main/#") == ["orc.v1.r.part.main", "orc.v1.r.part.main.>"]
    assert acl_subjects("#") == [">"]


# ================================================================================= delivery, QoS


async def test_qos0_and_qos1_reach_a_subscriber_on_another_node(cluster: NatsLab) -> None:
    t = Topics(_robot())
    inbox = Inbox()
    n0, _, n2 = cluster.nodes
    async with mqtt(n2) as sub, mqtt(n0) as pub:
        await sub.subscribe(f"{t.root}/part/+/hb", inbox, qos=1)
        await pub.publish(t.part_heartbeat("main"), b"q0", qos=0)
        await pub.publish(t.part_heartbeat("main"), b"q1", qos=1)
        got = sorted([(m.payload, m.qos) for m in (await inbox.get(), await inbox.get())])
        assert got == [(b"q0", 0), (b"q1", 1)]  # delivered at min(publish, subscription)
        latencies = []
        for i in range(20):
            sent = time.perf_counter()
            await pub.publish(t.part_heartbeat("main"), b"%d" % i, qos=1)
            assert (await inbox.get()).payload == b"%d" % i
            latencies.append(time.perf_counter() - sent)
    measured("QoS 1 node 1 -> node 3, publish to delivery, median of 20", statistics.median(latencies) * 1000, "ms")


async def test_qos1_order_per_publisher_across_nodes(cluster: NatsLab) -> None:
    t = Topics(_robot())
    inbox = Inbox()
    n0, _, n2 = cluster.nodes
    count = 300
    async with mqtt(n2) as sub, mqtt(n0) as pub:
        await sub.subscribe(t.part_report("+"), inbox, qos=1)
        for qos in (1, 0):
            for i in range(count):
                assert pub.publish_nowait(t.part_report(f"p{i % 3}"), b"%d" % i, qos=qos)
            got = [int((await inbox.get()).payload) for _ in range(count)]
            assert got == list(range(count)), f"QoS {qos}: out of order"


def test_qos2_is_not_supported(cluster: NatsLab) -> None:
    """nats-server 2.9: a QoS 2 subscription is granted QoS 1; a QoS 2 PUBLISH closes the connection.
    The project uses QoS 0 and 1 only."""
    p = f"q2{uuid.uuid4().hex[:8]}"
    with raws() as made:
        c = raw(made, cluster.nodes[0]).connect()
        assert c.subscribe((f"{p}/x", 2)) == [1]
        c.paho.publish(f"{p}/x", b"2", qos=2)
        assert c.disconnected.wait(WAIT), "a QoS 2 publish was accepted"


def test_qos1_subscribe_creates_a_replicated_jetstream_consumer(cluster: NatsLab) -> None:
    """A QoS 0 SUBSCRIBE is a plain NATS subscription (milliseconds); a QoS 1 SUBSCRIBE creates a
    durable JetStream consumer replicated on the 3 nodes, and waits for it: about half a second
    each in a cluster (nats-server handles one connection's packets in order, so they add up)."""
    p = f"sl{uuid.uuid4().hex[:8]}"
    took: dict[int, list[float]] = {0: [], 1: []}
    with raws() as made:
        c = raw(made, cluster.nodes[1]).connect()
        for i in range(3):
            for qos in (0, 1):
                started = time.perf_counter()
                assert c.subscribe((f"{p}/{qos}/{i}", qos)) == [qos]
                took[qos].append(time.perf_counter() - started)
    q0, q1 = statistics.median(took[0]), statistics.median(took[1])
    measured("SUBSCRIBE to SUBACK in the cluster, QoS 0 / QoS 1, median of 3", f"{q0 * 1000:.1f} / {q1 * 1000:.0f} ms")
    assert q1 > 0.05 and q1 > 10 * q0


async def test_keepalive_1_is_shorter_than_the_server_deadline() -> None:
    """nats-server 2.9 drops a client silent for int(1.5 x keep-alive) seconds (the fraction is
    truncated): 1 s at keep-alive 1, exactly when a compliant client sends its PINGREQ, so even the
    project's transport, idle, races the server at every PINGREQ (it lost about every second when this
    was written, and won 2 of 2 in a CI run since).  Keep-alive 2 gives 3 s and holds.  The server's
    deadline is measured on a raw connection that sends nothing after its CONNECT (a compliant server
    waits 1.5 x keep-alive); the transport at keep-alive 2 must never be dropped."""

    def silent_for(keepalive: int) -> float:
        """Seconds from CONNACK to the server closing a connection that sends nothing more."""
        cid = f"raw{keepalive}.{uuid.uuid4().hex[:6]}".encode()
        var = b"\x00\x04MQTT\x04\x02" + keepalive.to_bytes(2, "big")
        body = var + len(cid).to_bytes(2, "big") + cid
        with socket.create_connection(lab.nodes[0].address, timeout=10) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            assert s.recv(4)[:1] == b"\x20"  # CONNACK
            t0 = time.monotonic()
            while s.recv(64):
                pass
            return time.monotonic() - t0

    with start_nats() as lab:

        async def drops(keepalive: int, idle_s: float) -> int:
            lost: list[str] = []
            c = MqttClient(f"ka{keepalive}.{uuid.uuid4().hex[:6]}", [lab.nodes[0].address], keepalive=keepalive)
            c.on_disconnect(lost.append)
            async with c:
                await asyncio.sleep(idle_s)  # only time can show that nothing happens
            return len(lost)

        closed_1, one, two = await asyncio.gather(asyncio.to_thread(silent_for, 1), drops(1, 4.0), drops(2, 4.0))
    measured("a silent connection closed after, keep-alive 1", closed_1)
    measured("drops of an idle transport in 4 s: keep-alive 1 / keep-alive 2", f"{one} / {two}")
    assert 0.8 <= closed_1 < 1.45  # int(1.5 x 1) = 1 s, not the 1.5 s of MQTT 3.1.1
    assert two == 0


async def test_overlapping_subscriptions_deliver_one_copy_per_subscription(cluster: NatsLab) -> None:
    """Differs from mosquitto (one copy): NATS sends one copy per matching subscription, and the
    transport runs every matching handler for each copy.  The project overlaps `part/+/state`
    (RpcClient) with `part/<child>/state` (a parent), so a parent sees each child state twice."""
    t = Topics(_robot())
    wide, narrow = Inbox(), Inbox()
    async with mqtt(cluster.nodes[1]) as parent, mqtt(cluster.nodes[0]) as child_part:
        await parent.subscribe(t.all_part_states(), wide, qos=0)
        await parent.subscribe(t.part_state("child"), narrow, qos=0)
        await parent.subscribe(t.part_heartbeat("child"), wide, qos=0)  # the marker
        await child_part.publish(t.part_state("child"), b"running", qos=1)
        await child_part.publish(t.part_heartbeat("child"), b"m", qos=1)
        before = await wide.until(t.part_heartbeat("child"))
        assert [m.payload for m in before] == [b"running", b"running"]
        assert [(await narrow.get()).payload, (await narrow.get()).payload] == [b"running", b"running"]


async def test_max_payload(cluster: NatsLab) -> None:
    """No limit for MQTT clients: 2 MiB crosses nodes at QoS 1 (NATS's own max_payload, 1 MB by
    default, does not apply to MQTT PUBLISH; see also test_max_payload_setting_is_ignored)."""
    t = Topics(_robot())
    inbox = Inbox()
    big = os.urandom(2 * 1024 * 1024)
    async with mqtt(cluster.nodes[2]) as sub, mqtt(cluster.nodes[0]) as pub:
        await sub.subscribe(t.part_resources("main"), inbox, qos=1)
        await pub.publish(t.part_resources("main"), big, qos=1, timeout=WAIT)
        assert (await inbox.get(10.0)).payload == big


def test_max_payload_setting_is_ignored() -> None:
    with start_nats(extra_conf="max_payload: 1000") as lab, raws() as made:
        p = f"mp{uuid.uuid4().hex[:8]}"
        c = raw(made, lab.nodes[0]).connect()
        c.subscribe((f"{p}/#", 1))
        c.publish(f"{p}/big", b"x" * 5000, qos=1)
        assert len(c.expect().payload) == 5000 and c.connected.is_set()


# ====================================================================================== retained


async def test_retained_set_overwrite_clear_seen_from_other_nodes(cluster: NatsLab) -> None:
    t = Topics(_robot())
    n0, n1, n2 = cluster.nodes
    state = t.part_state("main")

    async def late_view(node: NatsNode) -> list[Message]:
        inbox = Inbox()
        async with mqtt(node) as late:
            await late.subscribe(t.all_part_states(), inbox, qos=0)
            await late.subscribe(t.part_heartbeat("marker"), inbox, qos=0)
            async with mqtt(n0) as marker:
                await marker.publish(t.part_heartbeat("marker"), b"m", qos=1)
            return await inbox.until(t.part_heartbeat("marker"))

    async with mqtt(n0) as part:
        await part.publish(state, b"v1", qos=1, retain=True)
        seen = await late_view(n1)
        assert [(m.payload, m.retain) for m in seen] == [(b"v1", True)]
        await part.publish(state, b"v2", qos=1, retain=True)  # overwrite
        seen = await late_view(n2)
        assert [(m.payload, m.retain) for m in seen] == [(b"v2", True)]
        await part.publish(state, b"", qos=1, retain=True)  # clear
        assert await late_view(n1) == []
        assert await late_view(n2) == []


async def test_retained_read_right_after_puback_on_another_node(cluster: NatsLab) -> None:
    """Retained messages are replicated to the other nodes asynchronously; a late subscriber
    right after the PUBACK never saw a stale value in these rounds (the window is under a few ms)."""
    t = Topics(_robot())
    stale = 0
    rounds = 6
    async with mqtt(cluster.nodes[0]) as part:
        for i in range(rounds):
            await part.publish(t.robot_status(), b"v%d" % i, qos=1, retain=True)
            inbox = Inbox()
            async with mqtt(cluster.nodes[1 + i % 2]) as late:
                await late.subscribe(t.robot_status(), inbox, qos=0)
                m = await inbox.get()
            stale += m.payload != b"v%d" % i
        await part.publish(t.robot_status(), b"", qos=1, retain=True)
    measured("stale retained reads right after PUBACK, other node", f"{stale} of {rounds}")
    assert stale == 0


# ========================================================================================== Wills


async def test_will_on_kill_from_another_node(cluster: NatsLab) -> None:
    t = Topics(_robot())
    inbox = Inbox()
    async with mqtt(cluster.nodes[2]) as watcher:
        await watcher.subscribe(t.part_state("+"), inbox, qos=0)
        with child(cluster.nodes[0], t.part_state("doomed")) as doomed:
            killed = time.perf_counter()
            doomed.signal(signal.SIGKILL)
            will = await inbox.get(3.0)
            elapsed = time.perf_counter() - killed
    assert (will.topic, will.payload) == (t.part_state("doomed"), b"dead")
    measured("Will after SIGKILL of the client, seen on another node", elapsed * 1000, "ms")


@pytest.mark.parametrize("keepalive", [1, 2])
async def test_will_on_keepalive_expiry_of_a_frozen_client(cluster: NatsLab, keepalive: int) -> None:
    """nats-server drops a silent client int(1.5 x keep-alive) s after the last packet it read."""
    t = Topics(_robot())
    inbox = Inbox()
    async with mqtt(cluster.nodes[1]) as watcher:
        await watcher.subscribe(t.part_state("+"), inbox, qos=0)
        with child(cluster.nodes[0], t.part_state("frozen"), keepalive=keepalive) as frozen:
            frozen.signal(signal.SIGSTOP)
            stopped = time.perf_counter()
            will = await inbox.get(1.5 * keepalive + 3.0)
            elapsed = time.perf_counter() - stopped
    assert will.payload == b"dead"
    assert elapsed <= int(1.5 * keepalive) + 0.5, f"Will after {elapsed:.2f} s"
    measured(f"Will after SIGSTOP of the client, keep-alive {keepalive} s", elapsed)


async def test_no_will_on_clean_disconnect(cluster: NatsLab) -> None:
    t = Topics(_robot())
    inbox = Inbox()
    async with mqtt(cluster.nodes[1]) as watcher:
        await watcher.subscribe(t.part_state("+"), inbox, qos=0)
        await watcher.subscribe(t.part_heartbeat("marker"), inbox, qos=0)
        part = MqttClient("clean.part", [cluster.nodes[0].address],
                          will=lambda b: Will(t.part_state("clean"), b"dead", retain=False))
        await part.start()
        await part.publish(t.part_state("clean"), b"running", qos=1)
        await part.close()
        await watcher.publish(t.part_heartbeat("marker"), b"m", qos=1)
        assert [m.payload for m in await inbox.until(t.part_heartbeat("marker"))] == [b"running"]


@pytest.mark.parametrize("same_node", [True, False], ids=["same-node", "cross-node"])
async def test_same_client_id_takes_over_without_the_old_will(cluster: NatsLab, same_node: bool) -> None:
    """[MQTT-3.1.4-2] the old connection is closed, on the same node or another one.  Differs from
    mosquitto and the embedded broker: nats-server removes the old connection's Will before closing
    it, so no Will is published on a take-over."""
    t = Topics(_robot())
    cid = f"{t.robot}.part.main"  # the project's client ids contain dots: accepted
    inbox = Inbox()
    with raws() as made:
        async with mqtt(cluster.nodes[2]) as watcher:
            await watcher.subscribe(t.part_state("+"), inbox, qos=0)
            await watcher.subscribe(t.part_heartbeat("marker"), inbox, qos=0)
            first = raw(made, cluster.nodes[0], cid)
            first.paho.will_set(t.part_state("main"), b"first-dead", qos=1)
            first.connect()
            second = raw(made, cluster.nodes[0 if same_node else 1], cid).connect()
            assert await asyncio.to_thread(first.disconnected.wait, WAIT), "the old connection stayed open"
            second.subscribe((t.part_control("main", "x"), 1))
            await watcher.publish(t.part_control("main", "x"), b"for-second", qos=1)
            assert (await asyncio.to_thread(second.expect)).payload == b"for-second"
            await watcher.publish(t.part_heartbeat("marker"), b"m", qos=1)
            assert await inbox.until(t.part_heartbeat("marker")) == []  # no Will
            assert second.connected.is_set()


# ============================================================================== names and filters


async def test_topic_names_and_wildcards_with_the_name_alphabet(cluster: NatsLab) -> None:
    """Names of letters, digits, '_' and '-' work at every level, under '+' and '#' filters (one
    client per filter: overlapping filters on one connection get one copy each, see above)."""
    t = Topics(f"Robot_1-{uuid.uuid4().hex[:6]}")
    names = ["main", "a_b", "a-b", "A9", "x", "9-_-Z"]
    states, calls, everything = Inbox(), Inbox(), Inbox()
    n0, n1, n2 = cluster.nodes
    async with mqtt(n2) as s1, mqtt(n1) as s2, mqtt(n2) as s3, mqtt(n0) as pub:
        await s1.subscribe(t.all_part_states(), states, qos=0)
        await s2.subscribe(t.calls_to("a-b"), calls, qos=0)
        await s3.subscribe(f"{t.root}/#", everything, qos=0)
        for n in names:
            await pub.publish(t.part_state(n), n.encode(), qos=1)
        await pub.publish(t.call("client/cli_1", "a-b", "motor-2"), b"call", qos=1)
        assert sorted([(await states.get()).payload.decode() for _ in names]) == sorted(names)
        assert (await calls.get()).topic == f"{t.root}/client/cli_1/call/a-b/motor-2"
        got = [(await everything.get()).topic for _ in range(len(names) + 1)]
        assert got == [t.part_state(n) for n in names] + [t.call("client/cli_1", "a-b", "motor-2")]


async def test_a_dot_in_a_topic_is_refused(cluster: NatsLab) -> None:
    """nats-server 2.9.10 refuses '.' in MQTT topics (it is NATS's level separator):
    a SUBSCRIBE to such a filter gets SUBACK 0x80 (the transport raises), a PUBLISH closes the
    connection (the Will is published), and the transport, which re-sends its unacknowledged QoS 1
    message after every reconnect, is then disconnected again and again.  A part or robot named
    `a.b` (our names allow '.') cannot work on this server.  Client ids may contain dots."""
    t = Topics(_robot())
    dotted = t.part_state("a.b")
    wills = Inbox()
    async with mqtt(cluster.nodes[1]) as watcher:
        await watcher.subscribe(t.part_state("+"), wills, qos=0)
        async with mqtt(cluster.nodes[0], f"{t.robot}.part.a.b", reconnect_min_s=0.1, reconnect_max_s=0.2,
                        will=lambda b: Will(t.part_state("ab"), b"dead", retain=False)) as part:
            with pytest.raises(OrchestratorError, match="refused subscription"):
                await part.subscribe(f"{t.root}/part/a.b/#")
            lost = asyncio.Event()
            part.on_disconnect(lambda _reason: lost.set())
            with pytest.raises(TimeoutError):
                await part.publish(dotted, b"running", qos=1, timeout=2.0)
            assert lost.is_set()
            assert (await wills.get()).payload == b"dead"  # the server closed it: Will published
            connections = part.connections
            await asyncio.sleep(1.5)  # only time can show the loop: reconnect, re-send, closed again
            flaps = part.connections - connections
    assert flaps >= 2, f"{flaps} reconnections in 1.5 s"
    measured("reconnections in 1.5 s of a client with an unacknowledged QoS 1 on a dotted topic", f"{flaps}")


# ====================================================================================== sessions


def test_persistent_session_resumes_on_another_node(cluster: NatsLab) -> None:
    """clean_session=0: subscriptions and QoS 1 messages kept while offline, resumed on another node
    (the session lives in JetStream, replicated); clean_session=1 then drops it."""
    p = f"ps{uuid.uuid4().hex[:8]}"
    cid = f"{p}.persist"
    with raws() as made:
        first = raw(made, cluster.nodes[0], cid, clean=False).connect()
        assert first.session_present is False
        assert first.subscribe((f"{p}/cmd", 1)) == [1]
        first.close()
        pub = raw(made, cluster.nodes[1]).connect()
        for i in range(5):
            pub.publish(f"{p}/cmd", b"%d" % i, qos=1)
        back = raw(made, cluster.nodes[2], cid, clean=False).connect()
        assert back.session_present is True
        assert [back.expect().payload for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        back.close()
        fresh = raw(made, cluster.nodes[1], cid, clean=True).connect()
        assert fresh.session_present is False
        fresh.subscribe((f"{p}/marker", 1))
        pub.publish(f"{p}/cmd", b"not subscribed any more", qos=1)
        pub.publish(f"{p}/marker", b"m", qos=1)
        assert fresh.expect().topic == f"{p}/marker"


# ============================================================================== the whole robot


@pytest.mark.timeout(120)
async def test_a_three_level_robot_runs_and_stops_bottom_up_on_the_cluster(cluster: NatsLab, tmp_path: Path) -> None:
    """`orchestrator up` with the three node URLs: every part running, then SIGTERM stops it
    bottom-up, no Will, no forced part.  Slower to start than on mosquitto: each QoS 1
    subscription of each part is a replicated JetStream consumer (see above)."""
    robot = unique_robot()
    # the cluster here admits anonymous clients (its own authorization is tested above), so the robot runs
    # without broker identities; `orchestrator nats-config` (the deployment issue) generates the allow lists
    cfg = write_config(tmp_path / "robot.yaml", robot, {"urls": cluster.urls, "keepalive_s": 2}, three_level_parts(),
                       security={"insecure": True})
    started = time.perf_counter()
    up = Up(cfg, tmp_path)
    try:
        async with Watcher(robot, cluster.nodes[2].address) as w:
            await w.all_running(PARTS, timeout=60)
            await w.until(lambda: w.status is not None and w.status.state == "running", 20, "robot running")
            measured("three-level robot (5 parts): `up` to all running, parts on node 1", time.perf_counter() - started)
            pids = set(w.pids)
            stopping = time.perf_counter()
            up.terminate(signal.SIGTERM)
            bound = load_config(cfg).topology.shutdown_bound() + 5
            assert await up.wait(bound) == 0, up.output()
            measured("the same: SIGTERM to `up` exited", time.perf_counter() - stopping)
            await w.until(lambda: all(w.state(p) == "stopped" for p in PARTS), 5, "all stopped")
            assert "offline" not in [s for _, p, s in w.log if p in PARTS]
        assert_bottom_up(up.timeline()["timeline"])
        assert not [p for p in pids if alive(p)], "orphan part processes"
        out = up.output()
        assert "FORCED" not in out and "connection lost" not in out
    finally:
        up.close()


# ============================================================================= a node that dies


async def _deliver(pub: MqttClient, topic: str, inbox: Inbox, payload: bytes, qos: int, attempts: int = 8) -> bool:
    """Publish until ``inbox`` gets ``payload`` (bounded: ``attempts`` x about 2 s); True if it did."""
    for _ in range(attempts):
        with contextlib.suppress(TimeoutError, OrchestratorError):
            await pub.publish(topic, payload, qos=qos, timeout=2.0)
        with contextlib.suppress(TimeoutError):
            while (await inbox.get(1.0)).payload != payload:
                pass
            return True
    return False


@pytest.mark.timeout(150)
async def test_killed_node_fail_over_retained_and_subscriptions_survive() -> None:
    """Kill the node that leads the JetStream stream of QoS 1 messages ($MQTT_msgs).

    - A part connected to it fails over through the transport's URL list.  On the survivors
      CONNECT, QoS 1 PUBLISH and QoS 1 SUBSCRIBE wait for the JetStream leaders the dead node
      held (Raft elections, 4-9 s in nats-server 2.9): the part reconnects in about 6-7 s.
    - Its Will is usually not published (the node that held it is gone), but once was: recorded.
    - QoS 0 between survivors goes on at once (plain NATS).  A QoS 1 publisher on a surviving node
      stalls 4 s on its PUBLISH, even with no subscriber (every QoS 1 PUBLISH is stored in
      $MQTT_msgs, which has no leader), and loses its connection (server timeout, or its own
      keep-alive): recorded, not asserted.
    - Afterwards the retained state and the subscriptions made on the surviving nodes work, and
      the node, restarted, serves the retained messages set while it was down.
    """
    t = Topics(_robot())
    with start_nats_cluster() as lab:
        streams = _stream_leaders(lab)
        victim = next(n for n in lab.nodes if n.name == streams["$MQTT_msgs"])
        a, b = [n for n in lab.nodes if n is not victim]
        measured("stream leaders before the kill", f"{streams}, victim {victim.name}")
        wills, before_q0, before_q1, cmds_q0, cmds_q1 = Inbox(), Inbox(), Inbox(), Inbox(), Inbox()
        reconnected = asyncio.Event()
        lost = asyncio.Event()
        async with (
            mqtt(a, "watcher") as watcher,
            mqtt(a, "listener.q0") as listener_q0,
            mqtt(b, "listener.q1") as listener_q1,
            mqtt(b, "bystander", will=lambda _b: Will(t.part_state("bystander"), b"dead", retain=False)) as bystander,
            mqtt([victim, a, b], f"{t.robot}.part.main", reconnect_min_s=0.1, reconnect_max_s=1.0,
                 will=lambda _b: Will(t.part_state("main"), b"dead", retain=False)) as part,
        ):
            await watcher.subscribe(t.part_state("+"), wills, qos=0)
            await listener_q0.subscribe(t.robot_notice(), before_q0, qos=0)
            await listener_q1.subscribe(t.robot_notice(), before_q1, qos=1)
            await part.subscribe(t.part_control("primary", "main"), cmds_q0, qos=0)
            await part.subscribe(t.part_control("other", "main"), cmds_q1, qos=1)
            await part.publish(t.part_resources("main"), b"before", qos=1, retain=True)
            part.on_disconnect(lambda _r: lost.set())

            async def on_connect(_birth: int) -> None:
                reconnected.set()

            part.on_connect(on_connect)
            bystander_lost = asyncio.Event()
            bystander.on_disconnect(lambda _r: bystander_lost.set())
            killed = time.perf_counter()
            lab.kill(victim.index)
            await asyncio.wait_for(lost.wait(), WAIT)
            # QoS 0 between survivors is plain NATS: no JetStream, no wait for the elections
            quick = time.perf_counter()
            assert await _deliver(watcher, t.robot_notice(), before_q0, b"during-q0", qos=0, attempts=1)
            measured("QoS 0 publish to delivery between survivors right after the kill", time.perf_counter() - quick)
            stalled = time.perf_counter()
            with contextlib.suppress(TimeoutError, OrchestratorError):  # no $MQTT_msgs leader yet
                await bystander.publish(t.part_resources("bystander"), b"during", qos=1, timeout=6.0)
            measured("QoS 1 PUBLISH on a survivor right after the kill: stalled for", time.perf_counter() - stalled)
            measured("that publisher lost its connection", str(bystander_lost.is_set()))
            await asyncio.wait_for(reconnected.wait(), 40.0)
            measured("part on the killed node: kill to reconnected on a survivor", time.perf_counter() - killed)
            assert part.url in (a.url, b.url)

            # subscriptions made on the survivors before the kill, QoS 0 and QoS 1
            assert await _deliver(watcher, t.robot_notice(), before_q0, b"after-q0", qos=0)
            assert await _deliver(watcher, t.robot_notice(), before_q1, b"after-q1", qos=1)
            # the part's subscriptions, made again by the transport after the fail-over
            assert await _deliver(watcher, t.part_control("primary", "main"), cmds_q0, b"stop", qos=1)
            resubscribed_q1 = await _deliver(watcher, t.part_control("other", "main"), cmds_q1, b"stop", qos=1)
            measured("the part's QoS 1 subscription delivers after the fail-over", str(resubscribed_q1))
            # a restored subscription the cluster refused (SUBACK 0x80) is made again by the transport
            measured("restored subscriptions refused then made again by the transport", part.resubscribe_refusals)
            measured("kill to everything checked", time.perf_counter() - killed)

            # the retained messages live in a stream ($MQTT_rmsgs) whose leader may have been the dead node: read
            # them once the survivors have elected every stream's leader again (a CI run timed out the read at 10 s
            # while they had not)
            leaders = await asyncio.to_thread(_stream_leaders, lab)
            measured("stream leaders after the kill", str(leaders))
            late = Inbox()  # the retained state, from a survivor (QoS 0: no JetStream consumer)
            async with mqtt(b) as reader:
                await reader.subscribe(t.part_resources("main"), late, qos=0)
                assert (await late.get(10.0)).payload == b"before"
            await watcher.publish(t.part_state("marker"), b"m", qos=0)
            seen = [m.topic for m in await wills.until(t.part_state("marker"), 15.0)]
            # whether main's Will comes out depends on where the cluster kept its session (it did in one CI run
            # of three): recorded, not asserted; a part ignores a Will older than the birth it knows
            measured("Wills seen after the node kill", str(seen))

            # a retained message set while the node is down, then the node restarted
            await watcher.publish(t.robot_status(), b"while-down", qos=1, retain=True, timeout=WAIT)
            restarted = time.perf_counter()
            await asyncio.to_thread(lab.restart, victim.index)
            measured("restart of the killed node until the lab is usable again", time.perf_counter() - restarted)
            back = Inbox()
            async with mqtt(victim) as reader:
                await reader.subscribe(t.part_resources("main"), back, qos=0)
                await reader.subscribe(t.robot_status(), back, qos=0)
                assert sorted([(await back.get()).payload, (await back.get()).payload]) == [b"before", b"while-down"]


def _stream_leaders(lab: NatsLab) -> dict[str, str]:
    """The leader of each JetStream stream, once every MQTT stream has one (bounded, polled: the monitoring
    endpoint has nothing to await)."""
    deadline = time.monotonic() + 20
    while (leaders := lab.stream_leaders()) is None:
        assert time.monotonic() < deadline, "the cluster agreed on no JetStream leaders within 20 s"
        time.sleep(0.1)
    return leaders


# ============================================================================ users and permissions

# What the project's per-identity ACLs would look like for part `main` of robot `r`, in NATS
# subjects: publish only under its own identity; read the states, its own control and its replies.
AUTH = """
authorization {
  users = [
    {user: admin, password: admin-pw}
    {user: main, password: main-pw, permissions: {
      publish: { allow: ["orc.v1.r.part.main", "orc.v1.r.part.main.>"] }
      subscribe: {
        allow: ["orc.v1.r.part.*.state", "orc.v1.r.part.main.ctl", "orc.v1.r.part.main.ctl.>",
                "orc.v1.r.part.*.reply.part.main", "orc.v1.r.part.secret", "orc.v1.r.part.secret.>",
                "$MQTT.sub.>"]
        deny: ["orc.v1.r.part.secret.state"]
      }
    }}
    {user: half, password: half-pw, permissions: {
      publish: { allow: [">"] }
      subscribe: { allow: ["orc.v1.r.part.main.ctl.>", "orc.v1.r.part.*.state"] }
    }}
  ]
}
"""


@pytest.fixture(scope="module")
def secured() -> Iterator[NatsLab]:
    with start_nats(authorization=AUTH, probe_credentials=("admin", "admin-pw")) as lab:
        yield lab


async def test_username_password(secured: NatsLab) -> None:
    node = secured.nodes[0]
    async with mqtt(node, username="main", password="main-pw") as ok:
        assert ok.is_connected
    for user, password in (("main", "wrong"), (None, None)):
        with pytest.raises(BrokerUnavailable, match="refused"):
            async with mqtt(node, username=user, password=password, connect_timeout=3.0):
                pass


async def test_publish_permissions_per_identity(secured: NatsLab) -> None:
    """Own topics (QoS 0/1, retained, the Will) pass; another identity's topic is acknowledged and
    dropped, the connection stays (as mosquitto)."""
    t = Topics("r")
    inbox = Inbox()
    node = secured.nodes[0]
    async with mqtt(node, "admin.watch", username="admin", password="admin-pw") as admin:
        await admin.subscribe(f"{t.root}/#", inbox)
        part = MqttClient("r.part.main", [node.address], username="main", password="main-pw",
                          will=lambda b: Will(t.part_state("main"), b"offline", retain=True))
        try:
            await part.start()
            await part.publish(t.part_state("main"), b"running", qos=1, retain=True)
            await part.publish(t.part_heartbeat("main"), b"hb", qos=0)
            await part.publish(t.part_state("other"), b"spoofed", qos=1)  # PUBACK, dropped
            await part.publish(t.robot_status(), b"spoofed", qos=1)
            assert part.is_connected
            await part.publish(t.part_report("main"), b"marker", qos=1)
            seen = [(m.topic, m.payload) for m in await inbox.until(t.part_report("main"))]
            # MQTT orders messages per QoS level only: on NATS a QoS 1 message goes through JetStream, and
            # the QoS 0 heartbeat sent after its PUBACK reached the subscriber first in one CI run
            assert sorted(seen) == sorted([(t.part_state("main"), b"running"), (t.part_heartbeat("main"), b"hb")])
        finally:
            await part.close(disconnect=False)
        will = await inbox.get()
        assert (will.topic, will.payload) == (t.part_state("main"), b"offline")
    late = Inbox()
    async with mqtt(node, username="admin", password="admin-pw") as reader:
        await reader.subscribe(t.part_state("main"), late)
        m = await late.get()
        assert (m.payload, m.retain) == (b"offline", True)  # the Will was retained under permissions
        await reader.publish(t.part_state("main"), b"", qos=1, retain=True)


async def test_subscribe_permissions_mqtt_hash_needs_both_subjects(secured: NatsLab) -> None:
    """An MQTT filter `X/#` is two NATS subscriptions, `X` and `X.>`: a user allowed only `X.>`
    is refused `X/#` (SUBACK 0x80) but may subscribe `X/+` or deeper.  A filter wider than the
    allow list is refused.  A QoS 1 subscription also needs `$MQTT.sub.>`."""
    t = Topics("r")
    node = secured.nodes[0]
    async with mqtt(node, username="main", password="main-pw") as main:
        await main.subscribe(f"{t.root}/part/main/ctl/#")  # allowed: both subjects granted
        await main.subscribe(t.all_part_states())
        for wider in (f"{t.root}/part/#", f"{t.root}/part/+/hb", f"{t.root}/#"):
            with pytest.raises(OrchestratorError, match="refused subscription"):
                await main.subscribe(wider)
    with raws() as made:
        half = raw(made, node, username="half", password="half-pw").connect()
        assert half.subscribe((f"{t.root}/part/main/ctl/#", 0)) == [128]  # `orc.v1.r.part.main.ctl` missing
        assert half.subscribe((f"{t.root}/part/main/ctl/+", 0)) == [0]
        assert half.subscribe((t.all_part_states(), 0)) == [0]
        assert half.subscribe((t.all_part_states(), 1)) == [128]  # no `$MQTT.sub.>`


async def test_subscribe_deny_does_not_hold_for_mqtt(secured: NatsLab) -> None:
    """A subscribe `deny` under a wider `allow` refuses the exact filter, and filters live QoS 0
    deliveries of a wildcard subscription, but leaks retained messages (QoS 0 and 1) and live QoS 1
    deliveries (they come through a JetStream consumer).  Per-identity ACLs must be allow lists."""
    t = Topics("r")
    node = secured.nodes[0]
    secret, marker = t.part_state("secret"), t.part_heartbeat("secret")
    leaks: dict[int, list[tuple[bytes, bool]]] = {}
    async with mqtt(node, username="admin", password="admin-pw") as admin:
        await admin.publish(secret, b"retained-secret", qos=1, retain=True)
        try:
            for qos in (0, 1):
                inbox = Inbox()
                async with mqtt(node, username="main", password="main-pw") as main:
                    with pytest.raises(OrchestratorError, match="refused subscription"):
                        await main.subscribe(secret, qos=qos)  # the denied subject itself
                    await main.subscribe(f"{t.root}/part/secret/#", inbox, qos=qos)  # allowed, covers it
                    await admin.publish(secret, b"live-secret", qos=1)
                    await admin.publish(marker, b"m", qos=1)
                    leaks[qos] = [(m.payload, m.retain) for m in await inbox.until(marker)]
        finally:
            await admin.publish(secret, b"", qos=1, retain=True)
    measured("deny leaks by subscription QoS", str(leaks))
    assert leaks[0] == [(b"retained-secret", True)]
    assert leaks[1] == [(b"retained-secret", True), (b"live-secret", False)]


# ============================================================================= a fleet on the cluster


@pytest.mark.timeout(150)
async def test_fleet_two_robots_bridged_to_the_cluster_driven_by_a_remote_client(cluster: NatsLab,
                                                                                 tmp_path: Path) -> None:
    """The cluster as the upstream ("cloud") broker of a fleet: two robots, each on its own embedded
    broker, bridged to different nodes; a remote client on the third node drives a motor of either one
    through the cluster (and each robot's bridge)."""
    from orchestrator import Motor
    from orchestrator.client import RobotClient

    parts = [{"name": "main", "heartbeat_s": 0.1, "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
             {"name": "base", "parent": "main", "heartbeat_s": 0.1,
              "resources": [{"name": "left", "model": "orc:sim:motor"}]}]
    ups: list[Up] = []
    cfgs: list[Path] = []
    try:
        for i in range(2):
            d = tmp_path / f"robot{i}"
            d.mkdir()
            port = free_port()
            # anonymous cluster (its authorization is tested above): robots without broker identities
            cfg = write_config(d / "robot.yaml", unique_robot(), {"embedded": {"host": "127.0.0.1", "port": port}},
                               parts, security={"insecure": True}, clients=[{"name": "alice", "remote": True}],
                               upstream={"url": cluster.nodes[i].url, "keepalive_s": 2})
            cfgs.append(cfg)
            ups.append(Up(cfg, d))
        for cfg in cfgs:
            loaded = load_config(cfg)
            async with Watcher(loaded.config.robot, loaded.config.broker.client_urls()[0]) as w:
                await w.all_running(["main", "base"], timeout=60)
        started = time.perf_counter()
        for cfg in cfgs:  # the remote client is on node 2: neither robot's bridge is
            async with RobotClient.from_config(cfg, identity="alice", urls=[cluster.nodes[2].address],
                                               connect_timeout=30) as remote:
                motor = remote.resource("base/left", Motor)
                for attempt in range(30):  # the bridge's subscriptions reach the cluster (JetStream consumers)
                    try:
                        await motor.set_power(0.4)
                        break
                    except OrchestratorError:
                        assert attempt < 29
                        await asyncio.sleep(1.0)
                assert await motor.get_power() == 0.4
                assert await motor.is_moving()
                await motor.stop()
                assert not await motor.is_moving()
        measured("fleet: a remote client on node 3 drove both robots (bridges on nodes 1 and 2)",
                 time.perf_counter() - started)
    finally:
        for up in ups:
            up.close()


@pytest.mark.timeout(300)
async def test_parts_and_a_client_on_different_nodes_a_killed_node_moves_its_part(tmp_path: Path) -> None:
    """The primary on node 1, base on node 2, the camera and a client on node 3, each with every node in
    its fail-over list: the robot runs across the cluster; killing node 2 moves base to a surviving
    node, the primary sees it back online, and the client drives its motor again in the same session:
    a session window (here 20 s) longer than the fail-over lets the session survive it (base stopped its
    motor when it lost its node: a part that loses its broker stops its actuators)."""
    from orchestrator import Motor
    from orchestrator.client import RobotClient

    parts = [{"name": "main", "heartbeat_s": 0.1, "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
             {"name": "base", "parent": "main", "heartbeat_s": 0.1,
              "resources": [{"name": "left", "model": "orc:sim:motor"}]},
             {"name": "cam", "parent": "main", "heartbeat_s": 0.1,
              "resources": [{"name": "imager", "model": "orc:sim:sensor"}]}]
    with start_nats_cluster() as lab:
        robot = unique_robot()
        # QoS 0 subscriptions (broker.subscribe_qos, docs/brokers.md): with QoS 1 each of base's resubscriptions on a
        # survivor is a JetStream consumer replicated on three nodes, which cannot be made while one is dead; they
        # were refused (SUBACK 0x80, 4 s each, the connection's packets held meanwhile) and base, back online,
        # stayed deaf to calls (one CI run of about six; every run of three here)
        cfg = write_config(tmp_path / "robot.yaml", robot, {"urls": lab.urls, "keepalive_s": 2, "subscribe_qos": 0},
                           parts, sessions={"heartbeat_window_s": 20},
                           security={"insecure": True}, clients=[{"name": "alice"}])
        order = {"main": [0, 1, 2], "base": [1, 2, 0], "cam": [2, 0, 1]}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        logs = {p: (tmp_path / f"{p}.log").open("wb") for p in order}
        try:
            for part, nodes in order.items():
                urls = ",".join(lab.nodes[i].url for i in nodes)
                procs[part] = start_part_process(cfg, part, urls, log=logs[part])
            async with Watcher(robot, lab.nodes[2].address) as w:
                await w.all_running(list(order), timeout=60)

                def base_online() -> bool:
                    return w.status is not None and "base" in w.status.parts and w.status.parts["base"].online

                await w.until(base_online, 20, "the primary sees base online")
                async with RobotClient.from_config(cfg, identity="alice", urls=[lab.nodes[2].address],
                                                   connect_timeout=30) as client:
                    motor = client.resource("base/left", Motor)
                    await motor.set_power(0.3)
                    assert await motor.is_moving()
                    assert client.session is not None
                    session = client.session.id
                    births = set(w.births.get("base", set()))
                    killed = time.perf_counter()
                    lab.kill(1)
                    # base reconnects on a survivor (a new birth), the primary sees it online again
                    await w.until(lambda: bool(w.births.get("base", set()) - births) and w.state("base") == "running",
                                  60, "base back on a surviving node")  # seen: 0.3 to 8.4 s (QoS 1: 19 to 53 s)
                    measured("node kill to base running again on a survivor", time.perf_counter() - killed)
                    await w.until(base_online, 30, "the primary sees base online again")
                    # the motor stopped when base lost its node (safety); the session lived through the fail-over.
                    # JetStream may still move MQTT sessions between nodes for a while (a connection taken over
                    # comes back): the client retries its call for a bounded time, in the same session
                    recover_by = time.monotonic() + 30
                    moving_after: bool | None = None
                    for attempt in range(100):
                        try:
                            assert client.session is not None and client.session.alive, client.session
                            if moving_after is None:
                                moving_after = await motor.is_moving()
                            await motor.set_power(0.2)
                            break
                        except OrchestratorError as exc:
                            measured(f"call after the fail-over, attempt {attempt}", type(exc).__name__)
                            assert time.monotonic() < recover_by, "the client could not drive base again within 30 s"
                            await asyncio.sleep(0.5)
                    assert moving_after is False, "base did not stop its motor when it lost its node"
                    assert await motor.get_power() == 0.2
                    assert client.session is not None and client.session.id == session and client.session.alive
                    measured("node kill to the client driving base again, same session", time.perf_counter() - killed)
                    assert procs["main"].poll() is None and procs["cam"].poll() is None
        finally:
            stop_processes([procs[p] for p in ("cam", "base", "main") if p in procs])  # leaves first
            for f in logs.values():
                f.close()
