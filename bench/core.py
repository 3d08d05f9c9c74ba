"""Core benchmark: `up` to all-running, bottom-up shutdown time, memory per part process.

For 10 and 50 parts (``BENCH_PARTS=10,50``) in a tree of depth 3, on the embedded broker and on
mosquitto. The raw baseline, measured in the same run on the same broker: N bare paho clients that
connect and publish one retained QoS 1 message each (the least a part must do to announce itself),
started the same way (one Python process each) — so the start-up figure is read as a ratio to what
Python + paho alone cost on this machine.

With the embedded broker, `up` runs the broker inside its own process (what a user gets); the raw
baseline runs ``python -m orchestrator.broker`` in a process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from brokers import start_embedded_process, start_mosquitto  # noqa: E402
from robot import RobotSetup, robot_setup  # noqa: E402

from orchestrator.transport.client import Message, MqttClient  # noqa: E402

DEPTH = 3
START_TIMEOUT_S = 120.0  # `up` to all running, or the raw clients to all published
STOP_TIMEOUT_S = 120.0  # `up` to exit after SIGTERM

RAW_CLIENT = """
import socket, sys, paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=sys.argv[3], protocol=m.MQTTv311)
c.on_socket_open = lambda c_, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.connect(sys.argv[1], int(sys.argv[2]), 2)
c.loop_start()
c.publish(sys.argv[4], b"running", qos=1, retain=True).wait_for_publish(10)
sys.stdin.read()
"""


def log(msg: str) -> None:
    print(f"[bench.core] {msg}", file=sys.stderr, flush=True)


def branching(n: int, depth: int = DEPTH) -> int:
    """The smallest fan-out b with b + b^2 + ... + b^depth >= n - 1 (room for every non-primary part)."""
    b = 1
    while sum(b**k for k in range(1, depth + 1)) < n - 1:
        b += 1
    return b


def tree(n: int, depth: int = DEPTH) -> list[dict[str, Any]]:
    """n parts: a primary ``p0`` and a b-ary tree filled breadth first, at most ``depth`` levels below it.

    Part ``i``'s parent is ``p((i - 1) // b)`` with the smallest fan-out ``b`` that fits n parts in
    ``depth`` levels: 10 parts give 2 + 4 + 3, 50 give 4 + 16 + 29, no parent with more than b children.
    """
    b = branching(n, depth)
    parts: list[dict[str, Any]] = [{"name": "p0", "heartbeat_s": 0.2, "stop_deadline_s": 2,
                                    "resources": [{"name": "m", "model": "orc:sim:motor"}]}]
    for i in range(1, n):
        parts.append({"name": f"p{i}", "parent": f"p{(i - 1) // b}", "heartbeat_s": 0.2, "stop_deadline_s": 2,
                      "resources": [{"name": "m", "model": "orc:sim:motor"},
                                    {"name": "s", "model": "orc:sim:sensor"}]})
    return parts


def tree_depth(parts: list[dict[str, Any]]) -> int:
    parent: dict[str, str | None] = {p["name"]: p.get("parent") for p in parts}

    def depth(name: str) -> int:
        d = 0
        up = parent[name]
        while up is not None:
            up, d = parent[up], d + 1
        return d

    return max(depth(p["name"]) for p in parts)


def memory_mb(pid: int) -> dict[str, float] | None:
    """RSS, PSS and USS of a process (USS: pages only it holds; PSS: its share of shared pages)."""
    import psutil

    try:
        m = psutil.Process(pid).memory_full_info()
    except (psutil.Error, OSError):
        return None
    return {"rss": m.rss / 2**20, "pss": m.pss / 2**20, "uss": m.uss / 2**20}


def rss_mb(pid: int) -> float | None:
    m = memory_mb(pid)
    return None if m is None else m["rss"]


def rss_summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def cpu_seconds(pid: int) -> float | None:
    """CPU time a process (all its threads) has run so far, in seconds, from the scheduler's own
    nanosecond accounting (/proc/PID/task/*/schedstat): clock ticks (10 ms) are too coarse for an idle
    client that uses a tenth of a percent."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return total / 1e9


def idle_cpu(pids: dict[str, int], seconds: float, during: Callable[[], Any] | None = None) -> dict[str, float]:
    """Percent of one core each process used over ``seconds`` of doing nothing (read from /proc), or over
    the time ``during()`` takes, when given (what it returns: :func:`cpu_during`)."""
    return cpu_during(pids, during or (lambda: time.sleep(seconds)))[0]  # the interval itself


def cpu_during(pids: dict[str, int], work: Callable[[], T]) -> tuple[dict[str, float], T]:
    """Percent of one core each process used while ``work()`` ran in this one, and what it returned."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    result = work()
    elapsed = time.monotonic() - t0
    after = {k: cpu_seconds(p) for k, p in pids.items()}
    return ({k: round(100 * ((after[k] or 0) - (before[k] or 0)) / elapsed, 2)
             for k in pids if before[k] is not None and after[k] is not None}, result)


def tail(path: Path, n: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:]
    return ""


@contextlib.contextmanager
def broker_process(kind: str) -> Iterator[tuple[str, int]]:
    """A broker in a process of its own (the raw baseline's)."""
    if kind == "mosquitto":
        with start_mosquitto() as info:
            yield info.host, info.port
    else:
        with start_embedded_process() as info:
            yield info.host, info.port


def _reap_parts(pids: dict[str, int], cfg: Path) -> None:
    """Safety net: `up` makes its parts die with it, but never leave one behind (checked by command line)."""
    for pid in pids.values():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(cfg).encode() in cmdline or b"orchestrator" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def _watch_running(setup: RobotSetup, names: set[str], timeout: float, pids: dict[str, int],
                         up: subprocess.Popen[bytes]) -> None:
    """Until every part's retained state says running; fills ``pids`` as states arrive."""
    async with setup.watcher() as w:
        deadline = time.monotonic() + timeout
        while not all(w.state(n) == "running" for n in names):
            if up.poll() is not None:
                raise RuntimeError(f"`up` exited with {up.returncode} before every part was running")
            if time.monotonic() > deadline:
                running = sum(w.state(n) == "running" for n in names)
                raise TimeoutError(f"{running} of {len(names)} parts running after {timeout:g} s")
            w.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.changed.wait(), 0.2)
        pids.update({p: st.pid for p, (_, st) in w.states.items() if st.pid})


def run_robot(kind: str, n: int, idle_s: float = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-core-") as d:
        tmp = Path(d)
        parts = tree(n)
        with robot_setup(kind, tmp / "robot.yaml", parts, shutdown_timeout_s=60) as setup:
            cfg = setup.cfg
            up_log = tmp / "up.log"
            pids: dict[str, int] = {}
            with open(up_log, "wb") as out:
                t0 = time.monotonic()
                up = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", str(cfg), "--timeline-json",
                                       str(tmp / "tl.json")], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                try:
                    try:
                        asyncio.run(_watch_running(setup, {p["name"] for p in parts}, START_TIMEOUT_S, pids, up))
                    except (RuntimeError, TimeoutError) as exc:
                        raise RuntimeError(f"{kind}, {n} parts: {exc}\n{tail(up_log)}") from None
                    start_s = time.monotonic() - t0
                    idle: dict[str, Any] = {}
                    if idle_s:
                        time.sleep(1.0)  # let the start-up settle
                        cpu = idle_cpu({**pids, "up": up.pid}, idle_s)
                        sub = [v for k, v in cpu.items() if k not in ("up", "p0")]
                        idle = {"seconds": idle_s, "part_pct_median": round(statistics.median(sub), 2),
                                "parts_pct_total": round(sum(sub), 1), "primary_pct": cpu.get("p0"),
                                "up_pct": cpu.get("up"), "total_pct": round(sum(cpu.values()), 1)}
                    mem = [m for m in (memory_mb(p) for p in pids.values()) if m is not None]
                    t1 = time.monotonic()
                    up.send_signal(signal.SIGTERM)
                    code = up.wait(STOP_TIMEOUT_S)
                    total_stop_s = time.monotonic() - t1
                finally:
                    if up.poll() is None:
                        up.kill()
                        up.wait()
                    _reap_parts(pids, cfg)
            result: dict[str, Any] = {"parts": n, "depth": tree_depth(parts), "fan_out": branching(n),
                                      "up_to_all_running_s": round(start_s, 3)}
            keep = os.environ.get("BENCH_KEEP")
            if keep:  # the timeline and `up`'s log of each robot, for reading afterwards
                dest = Path(keep) / f"{kind}-{n}-{time.strftime('%H%M%S')}"
                dest.mkdir(parents=True, exist_ok=True)
                for f in ("tl.json", "up.log"):
                    if (tmp / f).exists():
                        (dest / f).write_bytes((tmp / f).read_bytes())
                log(f"kept {dest}")
            tl = json.loads((tmp / "tl.json").read_text()).get("timeline") if (tmp / "tl.json").exists() else None
            if tl is None or tl.get("finished_at") is None:
                result.update({"bottom_up_shutdown_s": None, "forced": None,
                               "note": "no complete shutdown timeline was written: " + tail(up_log, 500)})
            else:
                forced = sorted((e["part"] for e in tl["entries"] if e["forced"]), key=lambda p: int(p[1:]))
                result.update({"bottom_up_shutdown_s": round(tl["finished_at"] - tl["started_at"], 4),
                               "forced": len(forced), "forced_parts": forced})
            result.update({"up_exit_after_sigterm_s": round(total_stop_s, 3), "up_exit_code": code,
                           "memory_mb_per_part": {k: rss_summary([m[k] for m in mem]) for k in ("rss", "pss", "uss")}})
            if idle:
                result["idle_cpu"] = idle
            return result


RAW_HEARTBEATS = """
import socket, sys, time, paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=sys.argv[3], protocol=m.MQTTv311)
c.on_socket_open = lambda c_, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.connect(sys.argv[1], int(sys.argv[2]), 2)
c.loop_start()
period = float(sys.argv[4])
while True:
    c.publish(sys.argv[3] + "/hb", b"x" * 60, qos=0)
    time.sleep(period)
"""


def raw_idle(kind: str, seconds: float, period_s: float = 0.2) -> float:
    """Percent of a core a bare paho client uses publishing the same heartbeats as an idle part."""
    with broker_process(kind) as where:
        p = subprocess.Popen([sys.executable, "-c", RAW_HEARTBEATS, where[0], str(where[1]),
                              f"rawhb-{uuid.uuid4().hex[:6]}", str(period_s)], stdout=subprocess.DEVNULL)
        try:
            time.sleep(1.0)  # past its start-up
            return idle_cpu({"raw": p.pid}, seconds)["raw"]
        finally:
            p.kill()
            p.wait()


def raw_baseline(kind: str, n: int) -> dict[str, Any]:
    """N bare paho processes connect and publish one retained QoS 1 message each."""
    procs: list[subprocess.Popen[bytes]] = []
    with broker_process(kind) as where:
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

                async with MqttClient(f"bench.{uuid.uuid4().hex[:6]}", [where], connect_timeout=30) as c:
                    await c.subscribe(f"{topic_root}/+", on)
                    await asyncio.wait_for(done.wait(), START_TIMEOUT_S)

            asyncio.run(wait_all())
            start_s = time.monotonic() - t0
            rss = [r for r in (rss_mb(p.pid) for p in procs) if r is not None]
            return {"clients": n, "all_published_s": round(start_s, 3),
                    "rss_mb_per_process": rss_summary(rss)["median"]}
        finally:
            for p in procs:
                if p.stdin is not None:
                    with contextlib.suppress(OSError):
                        p.stdin.close()
                p.kill()
                p.wait()


def run() -> dict[str, Any]:
    out: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                       "loadavg_1m_before": round(os.getloadavg()[0], 2)}}
    sizes = [int(x) for x in os.environ.get("BENCH_PARTS", "10,50,100").split(",")]
    idle_s = float(os.environ.get("BENCH_IDLE_S", "10"))
    kinds = os.environ.get("BENCH_BROKERS", "amqtt,mosquitto").split(",")
    for kind in kinds:
        res: dict[str, Any] = {}
        if idle_s:
            res["raw_paho_heartbeats_pct"] = raw_idle(kind, idle_s)
        for n in sizes:
            log(f"{kind}: {n} parts")
            robot = run_robot(kind, n, idle_s)
            if idle_s and robot.get("idle_cpu"):
                robot["idle_cpu"]["part_ratio_to_raw"] = round(
                    robot["idle_cpu"]["part_pct_median"] / max(res["raw_paho_heartbeats_pct"], 0.01), 2)
            raw = raw_baseline(kind, n)
            robot["raw_paho_baseline"] = raw
            robot["start_ratio_to_raw"] = round(robot["up_to_all_running_s"] / raw["all_published_s"], 2)
            res[str(n)] = robot
        out[kind] = res
    out["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return out
