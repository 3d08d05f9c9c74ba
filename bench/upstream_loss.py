"""Upstream loss to every actuator stopped: the cloud link dies, how long until no motor of the robot moves.

Part of ``python -m bench disconnection`` (bench/disconnection.py calls :func:`run`).  The robot is the one
``tests/cloud.py`` builds: ``orchestrator up`` on this machine's loopback (the embedded broker with our
bridge, or mosquitto with its native bridge), its upstream link through a fault proxy to an upstream
mosquitto (the fleet broker), the robot's default settings (``upstream.keepalive_s`` 2 s).  Motors on two
parts: ``main/m0`` on the primary, ``base/left`` and ``base/right`` on its sub-part, each with a probe
(``trace_file``: every change of power, written by the motor itself).

* ``upstream_loss_to_all_stopped_ms``: a client on the local network drives every motor in its session;
  the uplink goes silent (the proxy stalls: half-open, as a dead modem) -> the last motor's probe records
  power 0.  Bound (docs/disconnection.md): ``1.5 x upstream.keepalive_s + upstream.keepalive_s / 4`` (no
  echo of the primary's probe for 1.5 keep-alives, checked once a probe period) + the halt, which is
  given ``HALT_S``.  ``upstream_loss_to_down_ms``: the same stall -> ``robot/upstream`` says ``down``.
  After each run the link returns: ``started_on_return`` counts motors that moved by themselves (0).
* ``default_off``: the same with ``sessions.default_management: false``: the motors run, the link goes
  silent for ``OFF_HOLD_S`` past its detection -> ``stops`` counts changes of power (0 expected).
* ``raw_paho_will_ms``: the baseline in the same run, over the same stalled link: a bare paho client
  connected to the upstream broker through the same proxy, with a Will and the same keep-alive -> the
  Will arrives at a bare paho observer connected to the upstream directly.  ``ratio_p50_to_raw``:
  ours (all stopped) / raw (Will seen upstream), p50 to p50.

Knobs: ``BENCH_DISCONNECT_REPEATS`` (shared with the rest, at least 5 here), ``BENCH_UPSTREAM_BROKERS``
(default ``amqtt,mosquitto``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from cloud import FLEET_PASSWORD, FLEET_USER, Cloud, LinkWatch, cloud_robot  # noqa: E402
from netrobot import read_trace  # noqa: E402

from bench.calls import percentile  # noqa: E402
from bench.calls import summary_ms as stats  # noqa: E402
from bench.rawpaho import raw_client  # noqa: E402
from orchestrator import Motor  # noqa: E402
from orchestrator.client import RobotClient  # noqa: E402

REPEATS = max(5, int(os.environ.get("BENCH_DISCONNECT_REPEATS", "5")))
BROKERS = [b for b in os.environ.get("BENCH_UPSTREAM_BROKERS", "amqtt,mosquitto").split(",") if b]
KEEPALIVE_S = 2  # the default of upstream.keepalive_s
HALT_S = 0.5  # what the bound allows the bottom-up halt (it takes a few ms on an idle robot)
OFF_HOLD_S = 10.0  # default management off: how long the link stays down past its detection
STEP_TIMEOUT_S = 30.0
MOTORS = {"main/m0": "m0", "base/left": "left", "base/right": "right"}


def parts(traces: Path) -> list[dict[str, Any]]:
    def motor(name: str) -> dict[str, Any]:
        return {"name": name, "model": "orc:sim:motor", "attributes": {"trace_file": str(traces / f"{name}.trace")}}

    return [{"name": "main", "resources": [motor("m0")]},
            {"name": "base", "parent": "main", "resources": [motor("left"), motor("right")]}]


def trace(traces: Path, motor: str) -> list[tuple[float, float]]:
    return read_trace(traces / f"{motor}.trace")


def power(traces: Path, motor: str) -> float:
    tr = trace(traces, motor)
    return tr[-1][1] if tr else 0.0


def stopped_after(traces: Path, motor: str, t0: float) -> float | None:
    tr = [e for e in trace(traces, motor) if e[0] >= t0]
    if not tr or tr[-1][1] != 0.0:
        return None
    return next(t for t, p in tr if p == 0.0)


async def _until(cond: Any, what: str, timeout: float = STEP_TIMEOUT_S) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)  # a probe file: polled, bounded
    return time.time()


class RawWill:
    """A bare paho client with a Will, through the proxy to the upstream, and an observer there directly."""

    def __init__(self, cloud: Cloud) -> None:
        self.topic = f"bench/rawwill/{uuid.uuid4().hex[:8]}"
        self.arrived = threading.Event()
        self.at = 0.0
        host, port = cloud.upstream
        self._obs = raw_client(f"obs-{uuid.uuid4().hex[:6]}", window=False)
        self._obs.username_pw_set(FLEET_USER, FLEET_PASSWORD)
        subscribed = threading.Event()
        self._obs.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, 1)
        self._obs.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        self._obs.on_message = self._on_message
        self._obs.connect(host, port, 30)
        self._obs.loop_start()
        self._raw = raw_client(f"raw-{uuid.uuid4().hex[:6]}", window=False)
        self._raw.username_pw_set(FLEET_USER, FLEET_PASSWORD)
        self._raw.will_set(self.topic, b"gone", qos=1)
        connected = threading.Event()
        self._raw.on_connect = lambda c, u, f, rc, p: connected.set()
        phost, pport = cloud.proxy.address
        self._raw.connect(phost, pport, KEEPALIVE_S)
        self._raw.loop_start()
        if not (subscribed.wait(10) and connected.wait(10)):
            self.close()
            raise RuntimeError("the raw paho baseline did not connect")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not self.arrived.is_set():
            self.at = time.time()
            self.arrived.set()

    def close(self) -> None:
        for c in (self._raw, self._obs):
            with contextlib.suppress(Exception):
                c.disconnect()
            with contextlib.suppress(Exception):
                c.loop_stop()


async def _drive(client: RobotClient, traces: Path) -> None:
    if client.session is None or not client.session.alive:
        await client.renew_session()
    for target in MOTORS:
        await client.resource(target, Motor).set_power(0.4)
    await _until(lambda: all(power(traces, m) == 0.4 for m in MOTORS.values()), "every motor to run")


async def _wait_running(cloud: Cloud) -> None:
    async with cloud.setup.watcher() as w:
        await w.all_running(["main", "base"], timeout=60)


async def _default_on(kind: str, tmp: Path) -> dict[str, Any]:
    traces = tmp / "traces"
    traces.mkdir()
    out: dict[str, list[float]] = {"stopped": [], "down": [], "raw": []}
    started_on_return = 0
    reasons: list[str] = []
    with cloud_robot(kind, tmp, parts(traces), upstream={"keepalive_s": KEEPALIVE_S}) as cloud:
        await _wait_running(cloud)
        async with LinkWatch(cloud.setup) as link, RobotClient.from_config(
                cloud.setup.loaded, urls=[cloud.setup.where], connect_timeout=15) as client:
            for i in range(REPEATS):
                await link.until("up", STEP_TIMEOUT_S)
                await _drive(client, traces)
                raw = RawWill(cloud)
                try:
                    t0 = time.time()
                    m0 = time.monotonic()
                    cloud.proxy.stall()
                    t_all = await _until(lambda t0=t0: all(stopped_after(traces, m, t0) is not None
                                                           for m in MOTORS.values()), "every motor stopped")
                    last = max(stopped_after(traces, m, t0) or t_all for m in MOTORS.values())
                    out["stopped"].append(last - t0)
                    out["down"].append(await link.until("down", STEP_TIMEOUT_S) - m0)
                    if not await asyncio.to_thread(raw.arrived.wait, STEP_TIMEOUT_S):
                        raise TimeoutError("the raw client's Will never arrived upstream")
                    out["raw"].append(raw.at - t0)
                    await _until(lambda: client.session is not None and client.session.ended is not None,
                                 "the SDK to be told its session ended")
                    assert client.session is not None
                    reasons.append(str(client.session.ended))
                finally:
                    cloud.proxy.resume()
                    raw.close()
                t1 = time.time()
                await link.until("up", STEP_TIMEOUT_S)
                await asyncio.sleep(0.5)  # anything that would start by itself on return has had its chance
                started_on_return += sum(1 for m in MOTORS.values() if any(p != 0.0 for t, p in trace(traces, m)
                                                                          if t >= t1))
                print(f"  upstream {kind} #{i + 1}: all stopped {out['stopped'][-1]:.3f} s, down "
                      f"{out['down'][-1]:.3f} s, raw Will {out['raw'][-1]:.3f} s ({reasons[-1]})", file=sys.stderr)
        if os.environ.get("BENCH_UPSTREAM_KEEP_LOGS") and cloud.up is not None:
            print(cloud.up.output()[-6000:], file=sys.stderr)
    bound = 1.5 * KEEPALIVE_S + KEEPALIVE_S / 4 + HALT_S
    res = {"upstream_loss_to_all_stopped_ms": stats(out["stopped"], bound),
           "upstream_loss_to_down_ms": stats(out["down"], 1.5 * KEEPALIVE_S + KEEPALIVE_S / 4),
           "raw_paho_will_ms": stats(out["raw"]),
           "started_on_return": started_on_return, "session_end_reasons": sorted(set(reasons))}
    if out["raw"]:
        res["ratio_p50_to_raw"] = round(percentile(sorted(out["stopped"]), 50) / percentile(sorted(out["raw"]), 50),
                                        3)
    return res


async def _default_off(kind: str, tmp: Path) -> dict[str, Any]:
    traces = tmp / "traces"
    traces.mkdir()
    with cloud_robot(kind, tmp, parts(traces), upstream={"keepalive_s": KEEPALIVE_S},
                     sessions={"default_management": False}) as cloud:
        await _wait_running(cloud)
        async with LinkWatch(cloud.setup) as link, RobotClient.from_config(
                cloud.setup.loaded, urls=[cloud.setup.where], connect_timeout=15) as client:
            await link.until("up", STEP_TIMEOUT_S)
            await _drive(client, traces)
            t0 = time.time()
            m0 = time.monotonic()
            cloud.proxy.stall()
            try:
                down = await link.until("down", STEP_TIMEOUT_S) - m0
                rule = link.state.rule if link.state is not None else ""
                await asyncio.sleep(OFF_HOLD_S)  # the duration under test: nothing to await
                t1 = time.time()
            finally:
                cloud.proxy.resume()
            stops = sum(len([e for e in trace(traces, m) if t0 <= e[0] <= t1]) for m in MOTORS.values())
            alive = client.session is not None and client.session.alive
    print(f"  upstream {kind} default off: {stops} changes of power over {t1 - t0:.1f} s", file=sys.stderr)
    return {"link_down_for_s": round(t1 - t0, 1), "upstream_loss_to_down_ms": round(down * 1000, 1),
            "rule": rule, "stops": stops, "session_alive": alive}


def run_kind(kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp:
        on = Path(tmp) / "on"
        off = Path(tmp) / "off"
        on.mkdir()
        off.mkdir()
        res = asyncio.run(_default_on(kind, on))
        res["default_off"] = asyncio.run(_default_off(kind, off))
        return res


def run() -> dict[str, Any]:
    load_before = os.getloadavg()
    results = {kind: run_kind(kind) for kind in BROKERS}
    return {"repeats": REPEATS, "settings": {"upstream_keepalive_s": KEEPALIVE_S, "halt_allowance_s": HALT_S,
                                             "off_hold_s": OFF_HOLD_S},
            "motors": list(MOTORS),
            "load": {"before": [round(x, 2) for x in load_before],
                     "after": [round(x, 2) for x in os.getloadavg()]},
            "brokers": results}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
