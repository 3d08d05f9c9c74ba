"""Hot path benchmark: what one message costs a reader, and what a robot's heartbeats cost the broker.

- ``reader``: the CPU (all threads of this process) one reader spends per message on 20,000
  heartbeat-sized QoS 0 messages (60-byte payload, 50 topics) sent by a bare paho publisher in another
  process: ours (``MqttClient`` in its event-loop mode, reading in batches as the primary's
  supervision does) beside a bare paho client on its own network thread, on each broker, in the same run.
- ``fanout``: the broker process's CPU over ``BENCH_HOTPATH_S`` seconds (default 10) while 50 bare paho
  clients publish a heartbeat 5 times a second, each subscribed to its own (a part's link check), and
  two more clients subscribed to all of them (the primary and a parent): 250 messages in, 750 out a
  second. The embedded broker (``python -m orchestrator.broker``) beside mosquitto under the same load.

The load comes from another process; both figures are ratios to the raw baseline of the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from brokers import start_embedded_process, start_mosquitto  # noqa: E402

MESSAGES = 20_000
READ_TIMEOUT_S = 60.0

PUBLISHER = """
import sys, time, paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2, client_id="hot-pub-%d" % time.monotonic_ns(), protocol=m.MQTTv311)
c.connect(sys.argv[1], int(sys.argv[2]), 30); c.loop_start()
sys.stdin.readline()  # "go": the reader is subscribed
for i in range(int(sys.argv[3])):
    c.publish("hot/part/p%d/hb" % (i % 50), b"x" * 60, qos=0)
    if i % 500 == 0:
        time.sleep(0.01)  # bursts a broker passes on whole (none dropped for a slow reader)
c.publish("hot/done", b"", qos=1).wait_for_publish(30)
time.sleep(0.5)
"""

FANOUT = """
import sys, threading, time, paho.mqtt.client as m
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def mk(cid):
    c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=cid, protocol=m.MQTTv311)
    c.connect(host, port, 30); c.loop_start(); return c
for i in range(2):
    mk("hot-w%d" % i).subscribe("hot/+/hb", 0)
pubs = [mk("hot-p%d" % i) for i in range(n)]
for i, p in enumerate(pubs):
    p.subscribe("hot/p%d/hb" % i, 0)
print("ready", flush=True)
nxt = time.monotonic()
while True:
    for i, p in enumerate(pubs):
        p.publish("hot/p%d/hb" % i, b"x" * 60, qos=0)
    nxt += 0.2
    time.sleep(max(0.0, nxt - time.monotonic()))
"""


def log(msg: str) -> None:
    print(f"[bench.hotpath] {msg}", file=sys.stderr, flush=True)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listener_pid(port: int) -> int:
    """The process listening on ``port`` (the broker a test helper started)."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    raise RuntimeError(f"no process listens on port {port}")


@contextlib.contextmanager
def _publishing(host: str, port: int) -> Iterator[None]:
    """The bare paho publisher in another process, told to go once started; killed on the way out."""
    pub = subprocess.Popen([sys.executable, "-c", PUBLISHER, host, str(port), str(MESSAGES)],
                           stdin=subprocess.PIPE, text=True)
    try:
        assert pub.stdin is not None
        pub.stdin.write("go\n")
        pub.stdin.flush()
        yield
    finally:
        pub.kill()
        pub.wait()


async def _ours(host: str, port: int) -> dict[str, Any]:
    from orchestrator.transport.client import Message, MqttClient

    got = 0
    done = asyncio.Event()

    def on(_m: Message) -> None:
        nonlocal got
        got += 1

    async with MqttClient(f"hot-ours-{time.monotonic_ns()}", [(host, port)], batch_reads_s=0.05) as c:
        await c.subscribe("hot/part/+/hb", on, qos=0)
        await c.subscribe("hot/done", lambda _m: done.set())
        with _publishing(host, port):
            t0 = time.process_time()
            await asyncio.wait_for(done.wait(), READ_TIMEOUT_S)
            cpu = time.process_time() - t0
    return {"received": got, "cpu_us_per_message": round(1e6 * cpu / max(got, 1), 2)}


def _raw(host: str, port: int) -> dict[str, Any]:
    import threading

    import paho.mqtt.client as paho

    got = 0
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        nonlocal got
        if msg.topic == "hot/done":
            done.set()
        else:
            got += 1

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"hot-raw-{time.monotonic_ns()}",
                    protocol=paho.MQTTv311)
    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect(host, port, 30)
    c.loop_start()
    try:
        c.subscribe([("hot/part/+/hb", 0), ("hot/done", 1)])
        if not subscribed.wait(10):
            raise RuntimeError("raw reader: no SUBACK")
        with _publishing(host, port):
            t0 = time.process_time()
            if not done.wait(READ_TIMEOUT_S):
                raise RuntimeError("raw reader: the publisher's last message never came")
            cpu = time.process_time() - t0
    finally:
        c.loop_stop()
        c.disconnect()
    return {"received": got, "cpu_us_per_message": round(1e6 * cpu / max(got, 1), 2)}


def _fanout(host: str, port: int, seconds: float, parts: int = 50) -> float:
    broker_pid = _listener_pid(port)
    load = subprocess.Popen([sys.executable, "-c", FANOUT, host, str(port), str(parts)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert load.stdout is not None
        if load.stdout.readline().strip() != "ready":
            raise RuntimeError("the fan-out load did not start")
        time.sleep(2.0)  # let every client's first heartbeats and subscriptions settle
        before = _cpu(broker_pid)
        time.sleep(seconds)
        return round(100 * (_cpu(broker_pid) - before) / seconds, 2)
    finally:
        load.kill()
        load.wait()


def run() -> dict[str, Any]:
    seconds = float(os.environ.get("BENCH_HOTPATH_S", "10"))
    out: dict[str, Any] = {"method": {"reader_messages": MESSAGES, "payload_bytes": 60, "fanout_parts": 50,
                                      "fanout_hz": 5, "fanout_subscribers_per_message": 3, "fanout_seconds": seconds}}
    for kind in ("amqtt", "mosquitto"):
        starter = start_embedded_process if kind == "amqtt" else start_mosquitto
        with starter() as info:
            log(f"{kind}: reader, ours")
            ours = asyncio.run(_ours(info.host, info.port))
            log(f"{kind}: reader, raw paho")
            raw = _raw(info.host, info.port)
            out.setdefault("reader", {})[kind] = {
                "ours": ours, "raw_paho": raw,
                "ratio": round(ours["cpu_us_per_message"] / max(raw["cpu_us_per_message"], 1e-9), 2)}
    fan: dict[str, Any] = {}
    for kind in ("amqtt", "mosquitto"):
        starter = start_embedded_process if kind == "amqtt" else start_mosquitto
        with starter() as info:
            log(f"{kind}: heartbeat fan-out for {seconds:g} s")
            fan[f"{kind}_broker_pct_of_a_core"] = _fanout(info.host, info.port, seconds)
    fan["ratio_embedded_to_mosquitto"] = round(fan["amqtt_broker_pct_of_a_core"]
                                               / max(fan["mosquitto_broker_pct_of_a_core"], 1e-9), 1)
    out["fanout"] = fan
    return out
