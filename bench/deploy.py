"""`python -m bench deploy`: compose up/down of generated robots, calls and a node kill on a NATS cluster.

- **compose**: a generated robot of N parts (a tree of depth 3: the primary, up to 4 children, their
  children), `orchestrator credentials` and `orchestrator compose --chown-secrets` (root), then
  `docker compose up --wait` until every service is healthy and `docker compose down` until every
  container is gone.  Sizes from ``BENCH_DEPLOY_SIZES`` (default ``5,50``).  Images from
  ``docker/images.sh`` (built when missing).  ``BENCH_DEPLOY_NATS=0`` leaves out the NATS figures.
- **nats_calls**: on a three-node nats-server cluster (tests/natslab.py), a part (one simulated motor)
  on node 1 and the SDK's client on node 2, sequential ``is_moving`` round trips; beside it raw paho
  (bench.raw_responder on node 1, bench.calls.RawRequester on node 2), QoS 1 both.
- **nats_node_kill**: a part whose fail-over list starts with node 2; node 2 is killed (SIGKILL): the
  time until the part is ``running`` again with a new birth on a survivor.

Every figure comes with the load (``/proc/loadavg``) before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.calls import RawRequester, log, process, summary_us, wait_line

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
N_CALLS = 300


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _tests_path() -> None:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


def tree_parts(n: int) -> list[dict[str, Any]]:
    """``n`` parts, depth 3: main, then up to 4 children of main, the rest spread under those."""
    parts: list[dict[str, Any]] = [{"name": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]}]
    level1 = [f"p{i}" for i in range(1, min(n, 5))]
    for name in level1:
        parts.append({"name": name, "parent": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]})
    for i in range(len(parts), n):
        parts.append({"name": f"q{i}", "parent": level1[i % len(level1)],
                      "resources": [{"name": "m", "model": "orc:sim:motor"}]})
    return parts


def cli(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"orchestrator {' '.join(args)}: {res.stdout}{res.stderr}")


def compose_run(n: int, lab: Any) -> dict[str, Any]:
    from brokers import free_port

    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        d = Path(tmp)
        d.chmod(0o755)  # mounted at /config: the parts' user (10001) reads the configuration
        cfg = d / "robot.yaml"
        cfg.write_text(yaml.safe_dump({"robot": f"bench{n}", "parts": tree_parts(n)}, sort_keys=False))
        cli("credentials", str(cfg))
        cli("compose", str(cfg), "-o", str(d / "compose.yaml"), "--chown-secrets")
        name = f"orcbench-{n}-{uuid.uuid4().hex[:6]}"
        env = {**lab.env(), "ORCHESTRATOR_BROKER_PORT": str(free_port())}

        def compose(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(lab.compose_bin), "--project-name", name, "--project-directory", str(d),
                                   *args], cwd=d, capture_output=True, text=True, timeout=timeout, env=env,
                                  stdin=subprocess.DEVNULL)

        out: dict[str, Any] = {"parts": n, "load_before": load()}
        try:
            t0 = time.perf_counter()
            res = compose("up", "--detach", "--wait", "--wait-timeout", "600")
            out["up_to_all_healthy_s"] = round(time.perf_counter() - t0, 2)
            out["up_ok"] = res.returncode == 0
            if res.returncode != 0:
                out["up_error"] = res.stderr[-500:]
            out["load_healthy"] = load()
            t0 = time.perf_counter()
            res = compose("down", "--timeout", "30")
            out["down_to_all_stopped_s"] = round(time.perf_counter() - t0, 2)
            out["down_ok"] = res.returncode == 0
        finally:
            compose("down", "--volumes", "--remove-orphans", "--timeout", "3")
        out["load_after"] = load()
        log(f"compose {n} parts: {out}")
        return out


async def nats_calls(lab: Any, tmp: Path) -> dict[str, Any]:
    from robot import Watcher, unique_robot

    from orchestrator import Motor
    from orchestrator.client import RobotClient

    robot = unique_robot()
    cfg = tmp / "robot.yaml"
    cfg.write_text(yaml.safe_dump({"robot": robot, "broker": {"urls": lab.urls}, "security": {"insecure": True},
                                   "clients": [{"name": "bench"}],
                                   "parts": [{"name": "main",
                                              "resources": [{"name": "m", "model": "orc:sim:motor"}]}]}))
    node0, node1 = lab.nodes[0], lab.nodes[1]
    out: dict[str, Any] = {"load_before": load(), "calls": N_CALLS, "part_node": node0.name, "client_node": node1.name}
    with contextlib.ExitStack() as stack:
        stack.enter_context(process([sys.executable, "-m", "orchestrator", "part", str(cfg), "--name", "main",
                                     "--broker", node0.url], tmp / "part.log"))
        async with Watcher(robot, node1.address) as w:
            await w.all_running(["main"], timeout=60)
        async with RobotClient.from_config(cfg, identity="bench", urls=[node1.address], connect_timeout=30) as c:
            motor = c.resource("main/m", Motor)
            for _ in range(20):  # warm-up (JetStream consumers, first deliveries)
                await motor.is_moving()
            samples = []
            for _ in range(N_CALLS):
                t0 = time.perf_counter_ns()
                await motor.is_moving()
                samples.append((time.perf_counter_ns() - t0) / 1000)
        out["ours_us"] = summary_us(sorted(samples))
        req, rep = f"bench/{robot}/req", f"bench/{robot}/rep"
        resp = stack.enter_context(process([sys.executable, "-m", "bench.raw_responder", node0.address[0],
                                            str(node0.address[1]), req, rep, "64"], tmp / "resp.log",
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        await asyncio.to_thread(wait_line, resp, b"ready", 20, tmp / "resp.log")
        with RawRequester(node1.address, req, rep, 64) as raw:
            raw.round_trips(20)
            out["raw_paho_us"] = summary_us(sorted(await asyncio.to_thread(raw.round_trips, N_CALLS)))
    out["ratio_p50"] = round(out["ours_us"]["p50"] / out["raw_paho_us"]["p50"], 2)
    out["load_after"] = load()
    log(f"nats calls: {out}")
    return out


async def nats_node_kill(lab: Any, tmp: Path) -> dict[str, Any]:
    from robot import Watcher, unique_robot

    robot = unique_robot()
    cfg = tmp / "kill.yaml"
    cfg.write_text(yaml.safe_dump({"robot": robot, "broker": {"urls": lab.urls, "keepalive_s": 2},
                                   "security": {"insecure": True},
                                   "parts": [{"name": "main", "heartbeat_s": 0.1,
                                              "resources": [{"name": "m", "model": "orc:sim:motor"}]}]}))
    victim, other = lab.nodes[2], lab.nodes[0]
    urls = ",".join(n.url for n in (victim, lab.nodes[0], lab.nodes[1]))
    out: dict[str, Any] = {"load_before": load(), "killed": victim.name}
    with process([sys.executable, "-m", "orchestrator", "part", str(cfg), "--name", "main", "--broker", urls],
                 tmp / "kill-part.log"):
        async with Watcher(robot, other.address) as w:
            await w.all_running(["main"], timeout=60)
            births = set(w.births.get("main", set()))
            t0 = time.perf_counter()
            lab.kill(victim.index)
            await w.until(lambda: bool(w.births.get("main", set()) - births) and w.state("main") == "running", 120,
                          "the part running again on a survivor")
            out["kill_to_part_running_again_s"] = round(time.perf_counter() - t0, 2)
    out["load_after"] = load()
    log(f"nats node kill: {out}")
    return out


def run() -> dict[str, Any]:
    _tests_path()
    from dockerlab import build_images
    from natslab import start_nats_cluster

    sizes = [int(s) for s in os.environ.get("BENCH_DEPLOY_SIZES", "5,50").split(",") if s.strip()]
    out: dict[str, Any] = {"pyc": "PYTHONDONTWRITEBYTECODE" not in os.environ}
    if os.environ.get("BENCH_DEPLOY_NATS", "1") != "0":
        with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp, start_nats_cluster() as nats:
            out["nats_calls"] = asyncio.run(nats_calls(nats, Path(tmp)))
            out["nats_node_kill"] = asyncio.run(nats_node_kill(nats, Path(tmp)))
    if sizes:
        lab = build_images()
        out["compose"] = [compose_run(n, lab) for n in sizes]
    return out
