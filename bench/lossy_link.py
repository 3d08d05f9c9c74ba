"""Loss and delay on the same hop: how many false stops and false offlines a lossy (Wi-Fi) link causes.

Opt-in part of ``python -m bench disconnection`` (``BENCH_DISCONNECT_LOSSY=1``; about 8 minutes with the
default grid).  The robot of ``tests/netrobot.py`` (real links, one network namespace per host, mosquitto),
with the sub-part ``drive``'s link made *shaped*: its frames cross ``tests/linkshaper.py``, a userspace
Ethernet link that holds each frame ``delay`` each way, and nftables drops ``loss`` of its packets each
way on the same interface.  Nothing terminates TCP on the way (unlike the fault proxy of the 30 s test),
so drive's connection to the broker has the delay in its own round trip (RTT = 2 x delay) and suffers
the loss there: TCP's retransmission timeouts are those of a real lossy link.

For each settings profile (``default``: the robot's defaults; ``lossy``: the settings docs/disconnection.md
recommends for Wi-Fi) and each cell of the grid (loss x delay, ``BENCH_DISCONNECT_LOSSY_S`` seconds each),
a client on a clean link keeps ``drive/m1`` running in a live session; counted over the cell:

* ``false_stops``: changes of the motor's power to 0 (its probe file, written by the motor itself);
* ``false_offlines``: times the primary's robot status marked drive offline, and ``new_births``: times
  drive reconnected (a new birth), as a clean-link observer saw them.

After each cell the link is clean again, the robot is let recover, and the motor driven again if it
stopped.  Knobs: ``BENCH_DISCONNECT_LOSSY_S`` (default 20), ``BENCH_DISCONNECT_LOSSY_LOSS`` (percent,
default ``5,10,20``), ``BENCH_DISCONNECT_LOSSY_DELAY_MS`` (each way, default ``50,100,200``),
``BENCH_DISCONNECT_LOSSY_PROFILES`` (default ``default,lossy``).  Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from netrobot import NetRobot, net_parts, net_robot  # noqa: E402

CELL_S = float(os.environ.get("BENCH_DISCONNECT_LOSSY_S", "20"))
LOSSES = [float(x) / 100 for x in os.environ.get("BENCH_DISCONNECT_LOSSY_LOSS", "5,10,20").split(",") if x]
DELAYS = [float(x) / 1000 for x in os.environ.get("BENCH_DISCONNECT_LOSSY_DELAY_MS", "50,100,200").split(",") if x]
PROFILES = [p for p in os.environ.get("BENCH_DISCONNECT_LOSSY_PROFILES", "default,lossy").split(",") if p]
RECOVER_S = 60.0
CAUSES = ("no echo", "lost the broker", "expired", "no heartbeat", "missed its heartbeats", "offline")

# docs/disconnection.md, "Settings for lossy links (Wi-Fi)"
LOSSY_BROKER = {"keepalive_s": 5}
LOSSY_SESSIONS = {"heartbeat_window_s": 3.0}
LOSSY_PART = {"heartbeat_s": 0.2, "heartbeat_misses": 8, "link_timeout_s": 2.0}


def _parts(traces: Path, profile: str) -> list[dict[str, Any]]:
    parts = net_parts(traces)
    if profile == "lossy":
        for p in parts:
            p.update(LOSSY_PART)
    return parts


class Driver:
    """A client process on host ``client`` keeping drive/m1 at power 0.5 in its session."""

    def __init__(self, robot: NetRobot) -> None:
        self.robot = robot
        self.proc: subprocess.Popen[str] | None = None

    def drive(self) -> None:
        old = self.proc
        self.proc, _ = self.robot.client_process("drive/m1", "set_power", '{"power": 0.5}')  # takes m1 over
        if old is not None:
            self._kill(old)

    @staticmethod
    def _kill(p: subprocess.Popen[str]) -> None:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stdout is not None:
            with contextlib.suppress(OSError):
                p.stdout.close()

    def close(self) -> None:
        if self.proc is not None:
            self._kill(self.proc)


def _online(w: Any) -> bool:
    drive = w.status.parts.get("drive") if w.status is not None else None
    return drive is not None and bool(drive.online)


async def _recover(robot: NetRobot, w: Any, driver: Driver) -> None:
    await w.until(lambda: w.state("drive") == "running" and w.status is not None and w.status.state == "running"
                  and _online(w), RECOVER_S, "drive back and the robot running")
    if robot.power("m1") != 0.5 or driver.proc is None or driver.proc.poll() is not None:
        driver.drive()


async def _cell(robot: NetRobot, w: Any, loss: float, delay: float) -> dict[str, Any]:
    sub = robot.host("sub")
    birth = w.states["drive"][0]
    births = {birth}
    offlines = 0
    online = True
    load_before = os.getloadavg()[0]
    logs = {part: robot.tmp / f"{part}.log" for part in ("drive", "main")}
    offsets = {part: f.stat().st_size if f.exists() else 0 for part, f in logs.items()}
    start = time.time()
    sub.delay(delay)
    sub.loss(loss)
    end = time.monotonic() + CELL_S
    while time.monotonic() < end:
        w.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.changed.wait(), max(0.0, end - time.monotonic()))
        now_online = _online(w)
        if online and not now_online:
            offlines += 1
        online = now_online
        births.add(w.states["drive"][0])
    stats = sub.shaper_stats()
    sub.restore()
    stop_at = time.time()
    stops = [t for t, p in robot.changes_between("m1", start, stop_at) if p == 0.0]
    why = []  # what the parts logged as the reason, when something stopped
    for part, f in logs.items():
        with contextlib.suppress(OSError), f.open("rb") as fh:
            fh.seek(offsets[part])
            for line in fh.read().decode(errors="replace").splitlines():
                if "WARNING" in line and any(k in line for k in CAUSES):
                    why.append(f"{part}: {line.split('] ', 1)[-1][:160]}")
    return {"loss_pct": round(loss * 100), "delay_ms_each_way": round(delay * 1000), "seconds": CELL_S,
            "false_stops": len(stops), "false_offlines": offlines, "new_births": len(births) - 1,
            "frames": stats["to_switch"] + stats["to_host"], "causes": why[:4],
            "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


async def _profile(profile: str, tmp: Path) -> dict[str, Any]:
    (tmp / "traces").mkdir(parents=True)
    kw: dict[str, Any] = {}
    if profile == "lossy":
        kw = {"broker": LOSSY_BROKER, "sessions": LOSSY_SESSIONS}
    with net_robot(tmp, "mosquitto", parts=_parts(tmp / "traces", profile), shaped_sub=True, **kw) as robot:
        cfg = robot.loaded.config
        p = cfg.part("drive")
        settings = {"keepalive_s": cfg.broker.keepalive_s, "heartbeat_window_s": cfg.sessions.heartbeat_window_s,
                    "heartbeat_s": p.heartbeat_s, "heartbeat_misses": p.heartbeat_misses,
                    "link_timeout_s": cfg.link_timeout("drive")}
        driver = Driver(robot)
        cells = []
        try:
            async with robot.watcher() as w:
                await w.all_running(["main", "drive"], timeout=40)
                driver.drive()
                for delay in DELAYS:
                    for loss in LOSSES:
                        await _recover(robot, w, driver)
                        cell = await _cell(robot, w, loss, delay)
                        cells.append(cell)
                        print(f"  lossy link, {profile}: loss {cell['loss_pct']} %, delay {cell['delay_ms_each_way']} "
                              f"ms: {cell['false_stops']} stops, {cell['false_offlines']} offline, "
                              f"{cell['new_births']} births (load {cell['load_1m']})", file=sys.stderr)
        finally:
            driver.close()
    return {"settings": settings, "cells": cells}


def run() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "needs root (network namespaces)"}
    from netlab import ensure_tools

    ensure_tools()  # nftables and iproute2, from Debian's packages, when missing
    load_before = os.getloadavg()
    out: dict[str, Any] = {}
    for profile in PROFILES:
        with tempfile.TemporaryDirectory(prefix=f"bench-lossy-{profile}-") as tmp:
            out[profile] = asyncio.run(_profile(profile, Path(tmp)))
    return {"cell_s": CELL_S, "broker": "mosquitto", "delay": "each way, inside drive's TCP round trip (link shaper)",
            "loss": "each way, nftables on drive's interface", "load": {
                "before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
            "profiles": out}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
