"""Core benchmark: `up` to all-running, bottom-up shutdown time, memory per part process.

For 10 and 50 parts in a tree of depth 3, on the embedded broker and on mosquitto. The raw
baseline, measured in the same run on the same broker: N bare paho clients that connect and publish
one retained QoS 1 message each (the least a part must do to announce itself), started the same
way (one Python process each) — so the start-up figure is read as a ratio to what Python + paho
alone cost on this machine.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from brokers import free_port, start_mosquitto  # noqa: E402

from orchestrator.protocol.codec import decode  # noqa: E402
from orchestrator.protocol.messages import PartState  # noqa: E402
from orchestrator.protocol.topics import Topics  # noqa: E402
from orchestrator.transport.client import Message, MqttClient  # noqa: E402

RAW_CLIENT = """
import socket, sys, paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=sys.argv[3], protocol=m.MQTTv311)
c.on_socket_open = lambda c_, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.connect(sys.argv[1], int(sys.argv[2]), 2)
c.loop_start()
c.publish(sys.argv[4], b"running", qos=1, retain=True).wait_for_publish(10)
sys.stdin.read()
"""


def tree(n: int, depth: int = 3) -> list[dict[str, Any]]:
    """n parts: a primary, then levels filled breadth first up to ``depth`` levels below it."""
    parts: list[dict[str, Any]] = [{"name": "p0", "heartbeat_s": 0.2, "stop_deadline_s": 2,
                                    "resources": [{"name": "m", "model": "orc:sim:motor"}]}]
    level = [["p0"]]
    per_level = max(1, round((n - 1) ** (1 / depth)))
    i = 1
    while i < n:
        parents = level[-1] if len(level) <= depth else level[-2]
        nxt: list[str] = []
        for par in parents:
            for _ in range(per_level if len(level) < depth else n):
                if i >= n:
                    break
                name = f"p{i}"
                parts.append({"name": name, "parent": par, "heartbeat_s": 0.2, "stop_deadline_s": 2,
                              "resources": [{"name": "m", "model": "orc:sim:motor"},
                                            {"name": "s", "model": "orc:sim:sensor"}]})
                nxt.append(name)
                i += 1
        level.append(nxt)
    return parts


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


async def _watch_running(where: tuple[str, int], robot: str, names: set[str], timeout: float) -> dict[str, int]:
    t = Topics(robot)
    pids: dict[str, int] = {}
    running: set[str] = set()
    done = asyncio.Event()

    def on_state(msg: Message) -> None:
        part = t.part_of(msg.topic)
        st = decode(msg.payload).parse(PartState)
        if part and st.pid:
            pids[part] = st.pid
        if part and st.state.value == "running":
            running.add(part)
        if running >= names:
            done.set()

    async with MqttClient(f"bench.{uuid.uuid4().hex[:6]}", [where], connect_timeout=30) as c:
        await c.subscribe(t.all_part_states(), on_state)
        await asyncio.wait_for(done.wait(), timeout)
    return pids


def run_robot(kind: str, n: int) -> dict[str, Any]:
    robot = f"b{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ctx = start_mosquitto() if kind == "mosquitto" else None
        info = ctx.__enter__() if ctx else None
        try:
            if info is not None:
                broker: dict[str, Any] = {"urls": [info.url]}
                where = (info.host, info.port)
            else:
                port = free_port()
                broker = {"embedded": {"port": port}}
                where = ("127.0.0.1", port)
            cfg = tmp / "robot.yaml"
            parts = tree(n)
            cfg.write_text(yaml.safe_dump({"robot": robot, "broker": broker, "parts": parts,
                                           "shutdown_timeout_s": 60}))
            t0 = time.monotonic()
            up = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", str(cfg), "--timeline-json",
                                   str(tmp / "tl.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                pids = asyncio.run(_watch_running(where, robot, {p["name"] for p in parts}, 240))
                start_s = time.monotonic() - t0
                rss = [r for r in (rss_mb(p) for p in pids.values()) if r is not None]
                t1 = time.monotonic()
                up.send_signal(signal.SIGTERM)
                up.wait(120)
                total_stop_s = time.monotonic() - t1
                import json

                tl = json.loads((tmp / "tl.json").read_text())["timeline"]
                bottom_up_s = tl["finished_at"] - tl["started_at"]
                forced = sum(1 for e in tl["entries"] if e["forced"])
            finally:
                if up.poll() is None:
                    up.kill()
                    up.wait()
            return {"parts": n, "up_to_all_running_s": round(start_s, 3),
                    "bottom_up_shutdown_s": round(bottom_up_s, 4),
                    "up_exit_after_sigterm_s": round(total_stop_s, 3), "forced": forced,
                    "rss_mb_per_part": {"median": round(statistics.median(rss), 1), "max": round(max(rss), 1)}}
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)


def raw_baseline(kind: str, n: int) -> dict[str, Any]:
    """N bare paho processes connect and publish one retained QoS 1 message each."""
    ctx = start_mosquitto() if kind == "mosquitto" else None
    if ctx is None:
        port = free_port()
        broker_proc = subprocess.Popen([sys.executable, "-m", "orchestrator.broker", "--port", str(port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from brokers import wait_for_port

        wait_for_port("127.0.0.1", port)
        where = ("127.0.0.1", port)
    else:
        info = ctx.__enter__()
        where = (info.host, info.port)
    procs = []
    try:
        topic_root = f"raw/{uuid.uuid4().hex[:8]}"
        names = {f"c{i}" for i in range(n)}
        t0 = time.monotonic()
        for i in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", RAW_CLIENT, where[0], str(where[1]),
                                           f"raw{i}-{topic_root}", f"{topic_root}/c{i}"],
                                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL))

        async def wait_all() -> None:
            seen: set[str] = set()
            done = asyncio.Event()

            def on(msg: Message) -> None:
                seen.add(msg.topic.rsplit("/", 1)[-1])
                if seen >= names:
                    done.set()

            async with MqttClient(f"bench.{uuid.uuid4().hex[:6]}", [where]) as c:
                await c.subscribe(f"{topic_root}/+", on)
                await asyncio.wait_for(done.wait(), 240)

        asyncio.run(wait_all())
        start_s = time.monotonic() - t0
        rss = [r for r in (rss_mb(p.pid) for p in procs) if r is not None]
        return {"clients": n, "all_published_s": round(start_s, 3),
                "rss_mb_per_process": round(statistics.median(rss), 1)}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        else:
            broker_proc.send_signal(signal.SIGTERM)
            broker_proc.wait(10)


def run() -> dict[str, Any]:
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    sizes = [int(x) for x in os.environ.get("BENCH_PARTS", "10,50").split(",")]
    for kind in ("amqtt", "mosquitto"):
        res: dict[str, Any] = {}
        for n in sizes:
            robot = run_robot(kind, n)
            raw = raw_baseline(kind, n)
            robot["raw_paho_baseline"] = raw
            robot["start_ratio_to_raw"] = round(robot["up_to_all_running_s"] / raw["all_published_s"], 2)
            res[str(n)] = robot
        out[kind] = res
    return out
