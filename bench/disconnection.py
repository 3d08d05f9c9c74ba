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
* ``upstream``: upstream loss to every actuator stopped, and the default-off case (bench/upstream_loss.py,
  its own robot under ``orchestrator up``, the uplink through a fault proxy).

The other single faults of docs/disconnection.md, on a robot of their own whose primary drives the
sub-part's m3 and m4 by itself (``other_faults``):

* ``client_link_cut_to_stop_ms``: a client on host ``client`` drives m2 in its session; its link is cut ->
  m2's probe records 0.  Bound: ``window + grace`` (the session's expiry, ended robot-wide).
* ``primary_link_cut_to_stop_ms``: the primary drives m3 in its own session; its link is cut -> m3 stops
  on the sub-part.  Bound: ``window + grace``.
* ``primary_frozen_to_stop_ms``: the same with the primary's process frozen (SIGSTOP, its sockets open).
  Bound: ``window + grace``.
* ``part_frozen_to_offline_ms``: SIGSTOP of the sub-part -> the primary's status marks it offline.  Bound:
  ``1.5 x heartbeat_s x heartbeat_misses``; raw baseline ``raw_paho_frozen_to_will_ms`` (a bare paho client
  frozen on the same host at the same moment: its Will, at the broker's keep-alive check).
* ``broker_kill_to_stop_ms``: SIGKILL of the broker -> the sub-part stops m1 (driven in a session).  Bound:
  100 ms ("at once": the part sees its connection close); raw baseline ``raw_paho_broker_kill_to_own_notice_ms``
  (a bare paho client on the sub-part's host noticing the same kill).

The raw paho baseline, in the same run, over the same links (``raw_paho_*``): a bare paho process
(``bench/raw_will.py``) with a Will and the robot's broker keep-alive runs on the sub-part's host next to
the part and goes through the very same cut or blackhole; an observer on no faulty link stamps the Will.

* ``raw_paho_link_cut_to_will_ms``: the fault -> the bare client's Will arrives at the observer (what
  "offline" costs with MQTT alone: the broker's keep-alive check).  ``ratio_p50_to_raw`` in
  ``link_cut_to_offline_ms``: ours / raw, p50 to p50.
* ``raw_paho_link_cut_to_own_notice_ms``: the fault -> the bare client itself notices (paho's
  keep-alive): the baseline for ``link_cut_to_local_stop_ms`` (ours / raw in its ``ratio_p50_to_raw``).
* ``raw_paho_kill9_to_will_ms``: SIGKILL of a bare paho process on the same host -> its Will at the
  observer; ``kill9_to_offline_ms.ratio_p50_to_raw`` = ours / raw.

Every figure is given as ``p50``/``p99`` (nearest rank over the runs: with few runs p99 is the
worst one) in milliseconds and as a ratio to its bound.  ``load`` records the machine's load
average before and after.  Knobs: ``BENCH_DISCONNECT_REPEATS`` (runs per fault, default 5),
``BENCH_DISCONNECT_BROKERS`` (default ``mosquitto``; ``mosquitto,amqtt`` adds the embedded broker),
``BENCH_DISCONNECT_UPSTREAM`` (default 1; 0 leaves the upstream figures out), ``BENCH_DISCONNECT_OTHER`` (default 1;
0 leaves ``other_faults`` out; ``only`` runs nothing else), ``BENCH_DISCONNECT_LOSSY``
(default 0; 1 adds the loss x delay grid of bench/lossy_link.py, about 8 minutes: ``lossy_link``).
Needs root (network namespaces), like the net lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
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

from netrobot import NetRobot, net_robot  # noqa: E402
from robot import Watcher  # noqa: E402

from bench.calls import summary_ms as _stats  # noqa: E402
from bench.rawpaho import raw_client  # noqa: E402
from orchestrator import Motor, PartOffline  # noqa: E402
from orchestrator.client import RobotClient  # noqa: E402
from orchestrator.protocol.topics import ClientId, Identity, Topics  # noqa: E402
from orchestrator.security.access import Access  # noqa: E402

REPEATS = int(os.environ.get("BENCH_DISCONNECT_REPEATS", "5"))
UPSTREAM = os.environ.get("BENCH_DISCONNECT_UPSTREAM", "1") != "0"
OTHER = os.environ.get("BENCH_DISCONNECT_OTHER", "1")
LOSSY = os.environ.get("BENCH_DISCONNECT_LOSSY", "0") == "1"
BROKERS = [b for b in os.environ.get("BENCH_DISCONNECT_BROKERS", "mosquitto").split(",") if b]
RECONNECT_MAX_S = 2.0  # orchestrator.transport.client.MqttClient's default back-off ceiling
CALL_BOUND_S = 0.1
AT_ONCE_BOUND_S = 0.1  # a part that sees its connection close stops its actuators "at once"
STEP_TIMEOUT_S = 20.0  # any single wait longer than this fails the run


async def _until(cond: Any, what: str, timeout: float = STEP_TIMEOUT_S, poll: float = 0.005) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)  # a probe file or a watcher's dict: polled, bounded
    return time.time()


class RawWills:
    """Bare paho processes with a Will on the sub-part's host, and an observer of their Wills on no faulty link.

    They log in as the sub-part (its identity may write ``part/drive/#``) under client ids of their own, and
    their Wills go to ``part/drive/json/bench-raw-will/<n>``, which the robot's viewer may read and no part
    reads."""

    def __init__(self, robot: NetRobot) -> None:
        self.robot = robot
        cfg, path = robot.loaded.config, robot.loaded.path
        self.part = Access.of(cfg, path, Identity(cfg.robot, "part", "drive"))
        viewer = Access.of(cfg, path, ClientId(cfg.robot, "watcher"))
        self.prefix = f"{Topics(cfg.robot).root}/part/drive/json/bench-raw-will"
        self.arrived: dict[str, float] = {}
        self._lock = threading.Lock()
        self._obs = raw_client(f"bench-raw-obs-{uuid.uuid4().hex[:6]}", window=False)
        self._obs.username_pw_set(viewer.username, viewer.password)
        subscribed = threading.Event()
        self._obs.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.prefix}/#", 1)
        self._obs.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
        self._obs.on_message = self._on_message
        host, port = robot.where
        self._obs.connect(host, port, 30)
        self._obs.loop_start()
        if not subscribed.wait(STEP_TIMEOUT_S):
            self.close()
            raise RuntimeError("the raw Will observer did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.arrived.setdefault(msg.topic, time.time())

    def start(self) -> tuple[subprocess.Popen[str], str]:
        """A bare paho client with a Will on host ``sub``, connected; returns it and its Will topic."""
        topic = f"{self.prefix}/{uuid.uuid4().hex[:8]}"
        host, port = self.robot.where
        keepalive = self.robot.loaded.config.broker.keepalive_s
        p = self.robot.host("sub").popen([sys.executable, "-m", "bench.raw_will", host, str(port), str(keepalive),
                                          topic], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         cwd=str(ROOT))
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(f"{self.part.username}\n{self.part.password}\n")
        p.stdin.flush()
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise RuntimeError(f"the raw paho client said {line!r}")
        return p, topic

    async def will(self, topic: str, timeout: float = 3 * STEP_TIMEOUT_S) -> float:
        await _until(lambda: topic in self.arrived, f"the raw Will on {topic}", timeout)
        return self.arrived[topic]

    @staticmethod
    async def own_notice(p: subprocess.Popen[str], timeout: float = 3 * STEP_TIMEOUT_S) -> float:
        """When the bare client said it lost its connection (its own keep-alive check)."""
        assert p.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), timeout)
        if not line.startswith("disconnected "):
            raise RuntimeError(f"the raw paho client said {line!r}")
        return float(line.split()[1])

    @staticmethod
    def kill(p: subprocess.Popen[str]) -> None:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        for pipe in (p.stdin, p.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._obs.disconnect()
        with contextlib.suppress(Exception):
            self._obs.loop_stop()


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
                       out: dict[str, list[float]], raw: RawWills) -> None:
    sub = robot.host("sub")
    for _ in range(REPEATS):
        await w.until(lambda: w.status is not None and w.status.state == "running", STEP_TIMEOUT_S, "running")
        await _drive(client, robot)
        birth = w.states["drive"][0]
        bare, topic = raw.start()  # the same host, the same link, the same fault
        notice = asyncio.ensure_future(raw.own_notice(bare))
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
        try:
            out[f"raw_will_{fault}"].append(await raw.will(topic) - t0)
            out[f"raw_notice_{fault}"].append(await notice - t0)
        finally:
            notice.cancel()
            raw.kill(bare)
        sub.restore()
        t2 = time.time()
        await w.until(lambda birth=birth: w.states["drive"][0] > birth and w.status is not None and
                      w.status.parts["drive"].online and w.status.parts["drive"].birth > birth, STEP_TIMEOUT_S,
                      "online again with a new birth")
        out["return"].append(w.status_at - t2)
        print(f"  {fault}: stop {out[f'stop_{fault}'][-1]:.3f} s, offline {out[f'offline_{fault}'][-1]:.3f} s, "
              f"back {out['return'][-1]:.3f} s; raw paho: own notice {out[f'raw_notice_{fault}'][-1]:.3f} s, Will "
              f"{out[f'raw_will_{fault}'][-1]:.3f} s", file=sys.stderr)


async def _kills(robot: NetRobot, w: Watcher, out: dict[str, list[float]], raw: RawWills) -> None:
    for _ in range(REPEATS):
        bare, topic = raw.start()
        t0 = time.time()
        os.kill(bare.pid, signal.SIGKILL)
        out["raw_kill"].append(await raw.will(topic, STEP_TIMEOUT_S) - t0)
        raw.kill(bare)
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
        print(f"  kill -9: offline {out['kill'][-1]:.3f} s; raw paho Will {out['raw_kill'][-1]:.3f} s", file=sys.stderr)


async def _one(kind: str) -> dict[str, Any]:
    out: dict[str, list[float]] = {k: [] for k in ("stop_cut", "stop_blackhole", "offline_cut", "offline_blackhole",
                                                   "call", "return", "kill", "raw_will_cut", "raw_will_blackhole",
                                                   "raw_notice_cut", "raw_notice_blackhole", "raw_kill")}
    with tempfile.TemporaryDirectory(prefix="bench-disconnection-") as tmp, net_robot(Path(tmp), kind) as robot:
        cfg = robot.loaded.config
        p = cfg.part("drive")
        detect = p.heartbeat_s * p.heartbeat_misses
        raw = RawWills(robot)
        try:
            async with robot.watcher() as w:
                await w.all_running(["main", "drive"], timeout=40)
                async with robot.checker(sessions=True, identity="operator") as client, robot.checker() as checker:
                    for fault in ("cut", "blackhole"):
                        await _link_faults(robot, w, client, checker, fault, out, raw)
                await _kills(robot, w, out, raw)
        finally:
            raw.close()
        local = cfg.link_timeout("drive") + 2 * p.heartbeat_s
        return {
            "settings": {"heartbeat_s": p.heartbeat_s, "heartbeat_misses": p.heartbeat_misses,
                         "link_timeout_s": cfg.link_timeout("drive"), "keepalive_s": cfg.broker.keepalive_s,
                         "heartbeat_window_s": cfg.sessions.heartbeat_window_s},
            "link_cut_to_local_stop_ms": {f: _stats(out[f"stop_{f}"], local, out[f"raw_notice_{f}"])
                                          for f in ("cut", "blackhole")},
            "link_cut_to_offline_ms": {f: _stats(out[f"offline_{f}"], 1.5 * detect, out[f"raw_will_{f}"])
                                       for f in ("cut", "blackhole")},
            "call_to_offline_error_ms": _stats(out["call"], CALL_BOUND_S),
            "link_return_to_online_ms": _stats(out["return"], RECONNECT_MAX_S + p.heartbeat_s),
            "kill9_to_offline_ms": _stats(out["kill"], detect, out["raw_kill"]),
            "raw_paho_link_cut_to_will_ms": {f: _stats(out[f"raw_will_{f}"]) for f in ("cut", "blackhole")},
            "raw_paho_link_cut_to_own_notice_ms": {f: _stats(out[f"raw_notice_{f}"]) for f in ("cut", "blackhole")},
            "raw_paho_kill9_to_will_ms": _stats(out["raw_kill"]),
        }


async def _client_cuts(robot: NetRobot, w: Watcher, out: dict[str, list[float]]) -> None:
    client_host = robot.host("client")
    for _ in range(REPEATS):
        await w.until(lambda: w.status is not None and w.status.state == "running", STEP_TIMEOUT_S, "running")
        proc, _ = await asyncio.to_thread(robot.client_process, "drive/m2", "set_power", '{"power": -0.5}')
        try:
            await _until(lambda: robot.power("m2") == -0.5, "m2 to run")
            t0 = time.time()
            client_host.cut()
            await _until(lambda t0=t0: robot.stopped_after("m2", t0) is not None, "m2 to stop")
            out["client_cut"].append((robot.stopped_after("m2", t0) or t0) - t0)
        finally:
            client_host.restore()
            proc.kill()
            proc.wait(10)
        print(f"  client link cut: m2 stopped {out['client_cut'][-1]:.3f} s", file=sys.stderr)


async def _primary_faults(robot: NetRobot, w: Watcher, out: dict[str, list[float]]) -> None:
    primary = robot.host("primary")
    main = robot.procs["main"]
    for fault in ("cut", "frozen"):
        for _ in range(REPEATS):
            await w.until(lambda: w.status is not None and w.status.state == "running" and
                          w.status.parts["drive"].online, 3 * STEP_TIMEOUT_S, "running")
            deadline = time.monotonic() + 3 * STEP_TIMEOUT_S
            while True:  # right after the last fault the primary may still be reconnecting: it says so, retry
                try:
                    await asyncio.to_thread(robot.drive_from_part, "main", "chassis", 0.4, 0.0)
                    break
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            await _until(lambda: robot.power("m3") == 0.4, "m3 to run")
            t0 = time.time()
            primary.cut() if fault == "cut" else os.kill(main.pid, signal.SIGSTOP)
            try:
                await _until(lambda t0=t0: robot.stopped_after("m3", t0) is not None, "m3 to stop")
                out[f"primary_{fault}"].append((robot.stopped_after("m3", t0) or t0) - t0)
            finally:
                primary.restore() if fault == "cut" else os.kill(main.pid, signal.SIGCONT)
            print(f"  primary {fault}: m3 stopped {out[f'primary_{fault}'][-1]:.3f} s", file=sys.stderr)


async def _part_frozen(robot: NetRobot, w: Watcher, out: dict[str, list[float]], raw: RawWills) -> None:
    for _ in range(REPEATS):
        await w.until(lambda: w.status is not None and w.status.state == "running" and
                      w.status.parts["drive"].online, 3 * STEP_TIMEOUT_S, "running")
        bare, topic = raw.start()
        drive = robot.procs["drive"]
        t0 = time.time()
        os.kill(bare.pid, signal.SIGSTOP)
        os.kill(drive.pid, signal.SIGSTOP)
        try:
            await w.until(lambda: w.status is not None and not w.status.parts["drive"].online, STEP_TIMEOUT_S,
                          "offline at the primary")
            out["part_frozen"].append(w.status_at - t0)
            out["raw_frozen"].append(await raw.will(topic) - t0)
        finally:
            os.kill(drive.pid, signal.SIGCONT)
            raw.kill(bare)
        print(f"  part frozen: offline {out['part_frozen'][-1]:.3f} s; raw paho Will {out['raw_frozen'][-1]:.3f} s",
              file=sys.stderr)


async def _broker_kills(robot: NetRobot, client: RobotClient, raw: RawWills, out: dict[str, list[float]]) -> None:
    for _ in range(REPEATS):
        async with robot.watcher() as w:
            await w.until(lambda: w.status is not None and w.status.state == "running" and
                          w.status.parts["drive"].online, 3 * STEP_TIMEOUT_S, "running")
        await _drive(client, robot)
        bare, _ = raw.start()
        notice = asyncio.ensure_future(raw.own_notice(bare))
        try:
            t0 = robot.kill_broker()
            await _until(lambda t0=t0: robot.stopped_after("m1", t0) is not None, "m1 to stop")
            out["broker_kill"].append((robot.stopped_after("m1", t0) or t0) - t0)
            out["raw_broker_kill"].append(await notice - t0)
        finally:
            notice.cancel()
            raw.kill(bare)
            if robot.broker_proc is None or robot.broker_proc.poll() is not None:
                robot.start_broker()
        print(f"  broker killed: m1 stopped {out['broker_kill'][-1] * 1000:.1f} ms; raw paho own notice "
              f"{out['raw_broker_kill'][-1] * 1000:.1f} ms", file=sys.stderr)


async def _other(kind: str) -> dict[str, Any]:
    from orchestrator.sessions.guard import grace_of

    out: dict[str, list[float]] = {k: [] for k in ("client_cut", "primary_cut", "primary_frozen", "part_frozen",
                                                   "raw_frozen", "broker_kill", "raw_broker_kill")}
    with tempfile.TemporaryDirectory(prefix="bench-disconnection-") as tmp, \
            net_robot(Path(tmp), kind, primary_driver=True) as robot:
        cfg = robot.loaded.config
        p = cfg.part("drive")
        detect = p.heartbeat_s * p.heartbeat_misses
        window = cfg.sessions.heartbeat_window_s
        raw = RawWills(robot)
        try:
            async with robot.watcher() as w:
                await w.all_running(["main", "drive"], timeout=40)
                await _client_cuts(robot, w, out)
                await _primary_faults(robot, w, out)
                await _part_frozen(robot, w, out, raw)
        finally:
            raw.close()
        # the broker restarts below: a new observer for the raw clients, and a client that renews its session
        async with robot.checker(sessions=True, identity="operator") as client:
            raw = RawWills(robot)
            try:
                await _broker_kills(robot, client, raw, out)
            finally:
                raw.close()
        ended = window + grace_of(window)
        return {
            "settings": {"heartbeat_s": p.heartbeat_s, "heartbeat_misses": p.heartbeat_misses,
                         "heartbeat_window_s": window, "grace_s": grace_of(window),
                         "keepalive_s": cfg.broker.keepalive_s},
            "client_link_cut_to_stop_ms": _stats(out["client_cut"], ended),
            "primary_link_cut_to_stop_ms": _stats(out["primary_cut"], ended),
            "primary_frozen_to_stop_ms": _stats(out["primary_frozen"], ended),
            "part_frozen_to_offline_ms": _stats(out["part_frozen"], 1.5 * detect, out["raw_frozen"]),
            "broker_kill_to_stop_ms": _stats(out["broker_kill"], AT_ONCE_BOUND_S, out["raw_broker_kill"]),
            "raw_paho_frozen_to_will_ms": _stats(out["raw_frozen"]),
            "raw_paho_broker_kill_to_own_notice_ms": _stats(out["raw_broker_kill"]),
        }


def run() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "needs root (network namespaces)"}
    from netlab import ensure_tools

    ensure_tools()  # nftables and iproute2, from Debian's packages, when missing
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for kind in BROKERS:
        if OTHER != "only":
            print(f"disconnection: {kind}", file=sys.stderr)
            results[kind] = asyncio.run(_one(kind))
        if OTHER != "0":
            print(f"disconnection: {kind}, the other faults", file=sys.stderr)
            results.setdefault(kind, {})["other_faults"] = asyncio.run(_other(kind))
    upstream: dict[str, Any] = {}
    if UPSTREAM and OTHER != "only":
        from bench import upstream_loss

        print("disconnection: upstream loss", file=sys.stderr)
        upstream = upstream_loss.run()
    lossy: dict[str, Any] = {}
    if LOSSY:
        from bench import lossy_link

        print("disconnection: loss and delay on the same hop", file=sys.stderr)
        lossy = lossy_link.run()
    return {"repeats": REPEATS, "cpus": os.cpu_count(), "pyc_written": not sys.dont_write_bytecode,
            "load": {"before": [round(x, 2) for x in load_before],
                     "after": [round(x, 2) for x in os.getloadavg()]},
            "brokers": results, **({"upstream": upstream} if upstream else {}),
            **({"lossy_link": lossy} if lossy else {})}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
