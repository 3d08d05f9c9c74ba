"""What watching a robot costs (issue 12): the JSON mirror, `monitor --json`, the Prometheus endpoint.

One robot of ``BENCH_OP_PARTS`` parts (default 50, a tree of depth 3, one simulated motor each and a
sensor publishing telemetry at 2 Hz on every part), started three times by `orchestrator up` on the same
broker: with the JSON mirror off, with it on, and with it on while ``orchestrator monitor --json`` runs.
For each: the CPU of the parts, the broker (mosquitto's process, or `up` that hosts the embedded one) and
the monitor over ``BENCH_OP_IDLE_S`` seconds (default 5) of nothing moving, and the messages per second a
viewer identity receives on every topic it may read.  Then the metrics endpoint: scrape time over 30
scrapes, p50 and p99.  Figures are read as the difference (or ratio) between the runs of the same
benchmark, on the same machine, at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.core import _reap_parts, _watch_running, cpu_during, tail, tree

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from brokers import free_port  # noqa: E402
from robot import RobotSetup, robot_setup  # noqa: E402

from orchestrator.protocol.topics import Topics  # noqa: E402
from orchestrator.security.acl import _public_reads  # noqa: E402
from orchestrator.transport.client import Message, MqttClient  # noqa: E402

SCRAPES = 30


def log(msg: str) -> None:
    print(f"[bench.operating] {msg}", file=sys.stderr, flush=True)


def _parts(n: int) -> list[dict[str, Any]]:
    parts = tree(n)
    for p in parts:
        p["resources"].append({"name": "gauge", "model": "orc:sim:sensor", "attributes": {"readings": ["v"]},
                               "telemetry": {"period_s": 0.5}})
    return parts


async def _viewer_rate(setup: RobotSetup, seconds: float) -> float:
    """Messages per second a viewer identity receives on everything it may read."""
    t = Topics(setup.robot)
    access = setup.access("client", "watcher")
    n = 0

    def count(_m: Message) -> None:
        nonlocal n
        n += 1

    async with MqttClient(f"{setup.robot}.bench-viewer", [setup.where], username=access.username,
                          password=access.password, connect_timeout=10) as c:
        for f in _public_reads(t):
            await c.subscribe(f, count, qos=0)
        await asyncio.sleep(1.0)  # past the retained messages
        n = 0
        t0 = time.monotonic()
        await asyncio.sleep(seconds)  # the measurement interval itself
        return n / (time.monotonic() - t0)


def _cpu(pids: dict[str, int], seconds: float, setup: RobotSetup) -> tuple[dict[str, float], float]:
    """CPU of each process while a viewer counts the messages it receives (the interval)."""
    return cpu_during(pids, lambda: asyncio.run(_viewer_rate(setup, seconds)))


def _broker_pid(kind: str, setup: RobotSetup, up_pid: int) -> int:
    if kind == "amqtt":
        return up_pid  # the embedded broker runs inside `up`
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{setup.where[1]}"], capture_output=True, text=True).stdout
    for chunk in out.split("pid=")[1:]:
        return int(chunk.split(",")[0])
    return up_pid


def _scrape_times(port: int) -> dict[str, float]:
    times = []
    for _ in range(SCRAPES):
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            size = len(r.read())
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2),
            "bytes": size}


def run_case(kind: str, n: int, idle_s: float, mirror: bool, with_monitor: bool, metrics: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-op-") as d:
        tmp = Path(d)
        parts = _parts(n)
        mon: dict[str, Any] = {"json_mirror": mirror}
        port = free_port()
        if metrics:
            mon["metrics"] = {"host": "127.0.0.1", "port": port}
        with robot_setup(kind, tmp / "robot.yaml", parts, shutdown_timeout_s=60, monitoring=mon) as setup:
            pids: dict[str, int] = {}
            up_log = tmp / "up.log"
            with open(up_log, "wb") as out:
                up = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", str(setup.cfg)],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                monitor = None
                try:
                    try:
                        asyncio.run(_watch_running(setup, {p["name"] for p in parts}, 120, pids, up))
                    except (RuntimeError, TimeoutError) as exc:
                        raise RuntimeError(f"{kind}, {n} parts: {exc}\n{tail(up_log)}") from None
                    watched = {**pids, "broker": _broker_pid(kind, setup, up.pid)}
                    if with_monitor:
                        monitor = subprocess.Popen([sys.executable, "-m", "orchestrator", "monitor", "-c",
                                                    str(setup.cfg), "--json"], stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
                        watched["monitor"] = monitor.pid
                    time.sleep(2.0)  # let the start-up (and the monitor's) settle
                    cpu, rate = _cpu(watched, idle_s, setup)
                    sub = [v for k, v in cpu.items() if k not in ("broker", "monitor")]
                    result: dict[str, Any] = {
                        "json_mirror": mirror, "monitor": with_monitor,
                        "parts_cpu_pct_total": round(sum(sub), 1), "broker_cpu_pct": round(cpu["broker"], 2),
                        "monitor_cpu_pct": round(cpu["monitor"], 2) if "monitor" in cpu else None,
                        "viewer_msgs_per_s": round(rate, 1)}
                    if metrics:
                        result["metrics_scrape"] = _scrape_times(port)
                    return result
                finally:
                    if monitor is not None:
                        monitor.kill()
                        monitor.wait()
                    up.terminate()
                    try:
                        up.wait(60)
                    except subprocess.TimeoutExpired:
                        up.kill()
                        up.wait()
                    _reap_parts(pids, setup.cfg)


def run() -> dict[str, Any]:
    n = int(os.environ.get("BENCH_OP_PARTS", "50"))
    idle_s = float(os.environ.get("BENCH_OP_IDLE_S", "5"))
    kinds = os.environ.get("BENCH_BROKERS", "mosquitto,amqtt").split(",")
    out: dict[str, Any] = {"parts": n, "idle_s": idle_s, "load_before": os.getloadavg()[0], "brokers": {}}
    for kind in kinds:
        cases = {}
        for label, mirror, monitor, metrics in (("mirror_off", False, False, False), ("mirror_on", True, False, True),
                                                ("mirror_on_monitor", True, True, False)):
            log(f"operating: {kind}, {n} parts, {label}")
            cases[label] = run_case(kind, n, idle_s, mirror, monitor, metrics)
        off, on, mon = cases["mirror_off"], cases["mirror_on"], cases["mirror_on_monitor"]
        with contextlib.suppress(ZeroDivisionError, TypeError):
            cases["ratios"] = {
                "mirror_parts_cpu": round(on["parts_cpu_pct_total"] / off["parts_cpu_pct_total"], 2),
                "mirror_broker_cpu": round(on["broker_cpu_pct"] / off["broker_cpu_pct"], 2),
                "mirror_viewer_msgs": round(on["viewer_msgs_per_s"] / off["viewer_msgs_per_s"], 2),
                "monitor_broker_cpu": round(mon["broker_cpu_pct"] / on["broker_cpu_pct"], 2),
            }
        out["brokers"][kind] = cases
    return out
