"""Disconnection benchmark: how fast the robot reacts when a link goes away, on real links.

One robot as ``tests/netrobot.py`` builds it (broker, primary, sub-part, client each on a network
namespace of a ``NetLab``; every part a real process; the robot's default settings), then, repeated
a bounded number of times:

* ``link_cut_to_local_stop_ms`` (per fault, ``cut`` = interface down, ``blackhole`` = every packet
  dropped silently): the sub-part's link fails while its motor runs (driven in a session by a
  client on no faulty link) -> the motor's probe (``trace_file``, written by the motor itself)
  records power 0.  Bound: ``link_timeout_s + 2 x heartbeat_s`` (the part's own echo check; the
  session window would stop it later anyway).
* ``link_cut_to_offline_ms``: the same fault -> the primary's retained robot status marks the part
  offline (seen by an observer on no faulty link).  Bound: ``1.5 x heartbeat_s x heartbeat_misses``.
* ``call_to_offline_error_ms``: a call to the part while it is marked offline -> ``PartOffline``
  raised.  Bound: 100 ms (what tests/test_disconnection.py holds it to; no round trip is made).
* ``link_return_to_online_ms``: once the broker has published the part's Will (its connection is
  gone on both sides), the link is restored -> the status shows the part online with a new birth.
  Bound: the transport's longest reconnect back-off (2 s) + ``heartbeat_s``.
* ``kill9_to_offline_ms``: SIGKILL of the sub-part's process -> the status marks it offline (the
  broker publishes its Will at once: the socket closes).  Bound: ``heartbeat_s x heartbeat_misses``
  (the detection interval, which a Will beats).

Every figure is given as ``p50``/``p99`` (nearest rank over the runs: with few runs p99 is the
worst one) in milliseconds and as a ratio to its bound.  ``load`` records the machine's load
average before and after.  Knobs: ``BENCH_DISCONNECT_REPEATS`` (runs per fault, default 4),
``BENCH_DISCONNECT_BROKERS`` (default ``mosquitto``; ``mosquitto,amqtt`` adds the embedded broker).
Needs root (network namespaces), like the net lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from netrobot import NetRobot, net_robot  # noqa: E402
from robot import Watcher  # noqa: E402

from bench.calls import percentile  # noqa: E402
from orchestrator import Motor, PartOffline  # noqa: E402
from orchestrator.client import RobotClient  # noqa: E402

REPEATS = int(os.environ.get("BENCH_DISCONNECT_REPEATS", "4"))
BROKERS = [b for b in os.environ.get("BENCH_DISCONNECT_BROKERS", "mosquitto").split(",") if b]
RECONNECT_MAX_S = 2.0  # orchestrator.transport.client.MqttClient's default back-off ceiling
CALL_BOUND_S = 0.1
STEP_TIMEOUT_S = 20.0  # any single wait longer than this fails the run


def _stats(samples_s: list[float], bound_s: float) -> dict[str, Any]:
    s = sorted(samples_s)
    if not s:
        return {"n": 0}
    p50, p99 = percentile(s, 50), percentile(s, 99)
    return {"n": len(s), "p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1),
            "max_ms": round(s[-1] * 1000, 1), "bound_ms": round(bound_s * 1000, 1),
            "ratio_p50": round(p50 / bound_s, 3), "ratio_p99": round(p99 / bound_s, 3)}


async def _until(cond: Any, what: str, timeout: float = STEP_TIMEOUT_S, poll: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)  # a probe file or a watcher's dict: polled, bounded
    return time.time()


async def _drive(client: RobotClient, robot: NetRobot) -> None:
    if client.session is None or not client.session.alive or client.rpc.session_ended is not None:
        await client.renew_session()
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        try:
            await client.resource("drive/m1", Motor).set_power(0.4)
            break
        except PartOffline:  # the robot has not seen it back yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    await _until(lambda: robot.power("m1") == 0.4, "the motor to run")


async def _link_faults(robot: NetRobot, w: Watcher, client: RobotClient, checker: RobotClient, fault: str,
                       out: dict[str, list[float]]) -> None:
    sub = robot.host("sub")
    for _ in range(REPEATS):
        await w.until(lambda: w.status is not None and w.status.state == "running", STEP_TIMEOUT_S, "running")
        await _drive(client, robot)
        birth = w.states["drive"][0]
        t0 = time.time()
        sub.cut() if fault == "cut" else sub.blackhole()
        stopped = await _until(lambda t0=t0: robot.stopped_after("m1", t0) is not None, "the local stop")
        out[f"stop_{fault}"].append((robot.stopped_after("m1", t0) or stopped) - t0)
        await w.until(lambda: w.status is not None and not w.status.parts["drive"].online, STEP_TIMEOUT_S,
                      "offline at the primary")
        out[f"offline_{fault}"].append(w.status_at - t0)
        t1 = time.perf_counter()
        with contextlib.suppress(PartOffline):
            await checker.resource("drive/m1", Motor).is_moving()
            raise AssertionError("a call to an offline part did not fail")
        out["call"].append(time.perf_counter() - t1)
        await w.until(lambda: w.state("drive") == "offline", 3 * STEP_TIMEOUT_S, "the broker's Will")
        sub.restore()
        t2 = time.time()
        await w.until(lambda birth=birth: w.states["drive"][0] > birth and w.status is not None and
                      w.status.parts["drive"].online and w.status.parts["drive"].birth > birth, STEP_TIMEOUT_S,
                      "online again with a new birth")
        out["return"].append(w.status_at - t2)
        print(f"  {fault}: stop {out[f'stop_{fault}'][-1]:.3f} s, offline {out[f'offline_{fault}'][-1]:.3f} s, "
              f"back {out['return'][-1]:.3f} s", file=sys.stderr)


async def _kills(robot: NetRobot, w: Watcher, out: dict[str, list[float]]) -> None:
    for _ in range(REPEATS):
        await w.until(lambda: w.status is not None and w.status.state == "running", 3 * STEP_TIMEOUT_S, "running")
        birth = w.states["drive"][0]
        proc = robot.procs["drive"]
        t0 = time.time()
        os.kill(proc.pid, signal.SIGKILL)  # `ip netns exec` execs the part: this is its pid
        await w.until(lambda: w.status is not None and not w.status.parts["drive"].online, STEP_TIMEOUT_S,
                      "offline after the kill")
        out["kill"].append(w.status_at - t0)
        proc.wait(10)
        robot.start_part("drive", "sub")
        await w.until(lambda birth=birth: w.states["drive"][0] > birth and w.state("drive") == "running",
                      3 * STEP_TIMEOUT_S,
                      "the part restarted")
        print(f"  kill -9: offline {out['kill'][-1]:.3f} s", file=sys.stderr)


async def _one(kind: str) -> dict[str, Any]:
    out: dict[str, list[float]] = {k: [] for k in ("stop_cut", "stop_blackhole", "offline_cut", "offline_blackhole",
                                                   "call", "return", "kill")}
    with tempfile.TemporaryDirectory(prefix="bench-disconnection-") as tmp, net_robot(Path(tmp), kind) as robot:
        cfg = robot.loaded.config
        p = cfg.part("drive")
        detect = p.heartbeat_s * p.heartbeat_misses
        async with robot.watcher() as w:
            await w.all_running(["main", "drive"], timeout=40)
            async with robot.checker(sessions=True, identity="operator") as client, robot.checker() as checker:
                for fault in ("cut", "blackhole"):
                    await _link_faults(robot, w, client, checker, fault, out)
            await _kills(robot, w, out)
        local = cfg.link_timeout("drive") + 2 * p.heartbeat_s
        return {
            "settings": {"heartbeat_s": p.heartbeat_s, "heartbeat_misses": p.heartbeat_misses,
                         "link_timeout_s": cfg.link_timeout("drive"), "keepalive_s": cfg.broker.keepalive_s,
                         "heartbeat_window_s": cfg.sessions.heartbeat_window_s},
            "link_cut_to_local_stop_ms": {"cut": _stats(out["stop_cut"], local),
                                          "blackhole": _stats(out["stop_blackhole"], local)},
            "link_cut_to_offline_ms": {"cut": _stats(out["offline_cut"], 1.5 * detect),
                                       "blackhole": _stats(out["offline_blackhole"], 1.5 * detect)},
            "call_to_offline_error_ms": _stats(out["call"], CALL_BOUND_S),
            "link_return_to_online_ms": _stats(out["return"], RECONNECT_MAX_S + p.heartbeat_s),
            "kill9_to_offline_ms": _stats(out["kill"], detect),
        }


def run() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "needs root (network namespaces)"}
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for kind in BROKERS:
        print(f"disconnection: {kind}", file=sys.stderr)
        results[kind] = asyncio.run(_one(kind))
    return {"repeats": REPEATS, "cpus": os.cpu_count(), "pyc_written": not sys.dont_write_bytecode,
            "load": {"before": [round(x, 2) for x in load_before],
                     "after": [round(x, 2) for x in os.getloadavg()]},
            "brokers": results}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
