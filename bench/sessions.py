"""Session benchmark: how late after its deadline an expired session's motor is stopped, and what heartbeats cost.

For each broker (the embedded amqtt broker in a process of its own, and mosquitto) and each
heartbeat window (0.1 s and 2 s, the robot's ``sessions: {heartbeat_window_s: W}``):

* two part processes (``python -m orchestrator part``): the primary ``main`` (no resources; it opens
  the sessions) and its sub-part ``drive`` hosting the ``orc:sim:motor`` ``m``;
* repeatedly, a client process (:mod:`bench.session_client`, a real ``RobotClient``: session with the
  primary, heartbeats at window / 5 from a thread) sets ``drive/m`` moving and is then SIGKILLed at a
  random phase of its heartbeat period;
* an observer in this process, a bare paho client (its ``on_message`` stamps arrivals on paho's
  thread), subscribed to every session heartbeat (``orc/v1/<robot>/+/+/session/hb``) and to the
  parts' session events (``orc/v1/<robot>/part/+/sessions/events``).

Figures, all from the wire, in milliseconds:

* ``deadline_to_stop_ms``: ``event.at - (last heartbeat seen + window)``, where ``event`` is
  ``drive``'s ``expired`` event for that session (``at`` is the part's wall clock right after
  ``stop()`` returned) and the last heartbeat is the last one of that session the observer received
  (it reaches the part through the same broker at the same moment, give or take the broker's
  fan-out order).  This is what the part records in ``SessionGuard.stop_latencies``, observed from
  another process.  Target from the issue: p99 at most 10 ms (the modelled system checks every 10 ms).
* ``kill_to_stop_ms``: SIGKILL of the client to ``event.at`` (window minus the time since the last
  heartbeat, plus the lateness above).
* ``heartbeat_traffic``: heartbeats of one client counted on the wire over a bounded interval:
  messages/s, payload bytes/s, and MQTT bytes/s (PUBLISH fixed header + topic + payload, QoS 0) for
  one hop; the broker forwards one copy to each part following the session.  The parts' own session
  heartbeats (every part heartbeats its own session at window / 5) are counted too.
* raw paho baseline, same run and broker: ``raw_paho_will``: SIGKILL of a bare paho process that
  connected with a Will (QoS 1, TCP_NODELAY) to the Will's arrival at the observer: the broker's own
  floor for "detect a dead client".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import selectors
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import yaml

from bench.calls import broker, percentile, process, tail, wait_running
from bench.rawpaho import Subscribed

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from orchestrator.protocol.codec import decode  # noqa: E402
from orchestrator.protocol.messages import SessionEvent, SessionHeartbeat  # noqa: E402
from orchestrator.protocol.topics import Topics  # noqa: E402
from orchestrator.sessions.tokens import SessionKey, short  # noqa: E402

WINDOWS = (0.1, 2.0)
REPEATS = {0.1: int(os.environ.get("BENCH_SESSION_REPEATS_FAST", "30")),
           2.0: int(os.environ.get("BENCH_SESSION_REPEATS_SLOW", "8"))}
TRAFFIC_S = {0.1: 1.5, 2.0: 4.0}  # the first client of each window lives this long, its heartbeats counted
WILL_REPEATS = int(os.environ.get("BENCH_WILL_REPEATS", "10"))
TARGET_LATE_MS = 10.0
PRIMARY, PART, MOTOR = "main", "drive", "m"
START_TIMEOUT_S = 20.0
EXPIRY_MARGIN_S = 5.0  # an expiry event later than window + this fails the run
KEY_ENV = "ORCHESTRATOR_SESSION_KEY"

RAW_WILL_CLIENT = """
import socket, sys, paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2, client_id=sys.argv[3], protocol=m.MQTTv311)
c.on_socket_open = lambda c_, u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.will_set(sys.argv[4] + "/will", b"dead", qos=1, retain=False)
c.connect(sys.argv[1], int(sys.argv[2]), 60)
c.loop_start()
c.publish(sys.argv[4] + "/alive", b"up", qos=1).wait_for_publish(10)
print("ready", flush=True)
sys.stdin.read()
"""


def log(msg: str) -> None:
    print(f"[bench.sessions] {msg}", file=sys.stderr, flush=True)


def summary_ms(seconds: list[float]) -> dict[str, float | int]:
    s = sorted(x * 1000 for x in seconds)
    return {"n": len(s), "p50": round(percentile(s, 50), 2), "p90": round(percentile(s, 90), 2),
            "p99": round(percentile(s, 99), 2), "max": round(s[-1], 2), "min": round(s[0], 2),
            "mean": round(statistics.fmean(s), 2)}


def mqtt_publish_bytes(topic_chars: int, payload_bytes: int, qos: int = 0) -> int:
    """Size of an MQTT 3.1.1 PUBLISH packet: fixed header (1 + remaining-length varint) + topic + payload."""
    remaining = 2 + topic_chars + (2 if qos else 0) + payload_bytes
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + varint + remaining


# ------------------------------------------------------------------------------------- the observer

@dataclass(frozen=True)
class Beat:
    wall: float
    mono: float
    session: str
    n: int
    payload_bytes: int
    topic_chars: int


class Observer(Subscribed):
    """A bare paho subscriber; every arrival is stamped on paho's thread before anything else."""

    def __init__(self, where: tuple[str, int], topics: Topics, will_root: str) -> None:
        filters = [(topics.all_session_heartbeats(), 0), (topics.all_session_events(), 1), (f"{will_root}/#", 1)]
        super().__init__(where, f"bench-observer-{uuid.uuid4().hex[:8]}", filters, window=False,
                         start_timeout_s=START_TIMEOUT_S)
        self.topics = topics
        self.will_root = will_root
        self._cv = threading.Condition()
        self.beats: dict[str, list[Beat]] = {}  # heartbeat topic -> arrivals
        self.events: list[tuple[float, SessionEvent]] = []  # (monotonic arrival, event)
        self.wills: dict[str, float] = {}  # will topic -> monotonic arrival
        self.alive: set[str] = set()
        self.errors = 0

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        wall, mono = time.time(), time.monotonic()
        try:  # never raise on paho's thread
            topic = msg.topic
            with self._cv:
                if topic.startswith(self.will_root + "/"):
                    if topic.endswith("/will"):
                        self.wills[topic] = mono
                    else:
                        self.alive.add(topic)
                elif topic.endswith("/session/hb"):
                    hb = decode(bytes(msg.payload)).parse(SessionHeartbeat)
                    self.beats.setdefault(topic, []).append(
                        Beat(wall, mono, hb.session, hb.n, len(msg.payload), len(topic)))
                else:
                    self.events.append((mono, decode(bytes(msg.payload)).parse(SessionEvent)))
                self._cv.notify_all()
        except Exception:
            self.errors += 1

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(predicate, timeout)

    def beats_of(self, topic: str) -> list[Beat]:
        with self._cv:
            return list(self.beats.get(topic, []))

    def has_expiry(self, part: str, session: str) -> bool:
        return self.expiry(part, session) is not None

    def has_will(self, root: str) -> bool:
        return f"{root}/will" in self.wills

    def has_alive(self, root: str) -> bool:
        return f"{root}/alive" in self.alive

    def expiry(self, part: str, session: str) -> SessionEvent | None:
        with self._cv:
            for _, ev in self.events:
                if ev.kind == "expired" and ev.part == part and ev.session == short(session):
                    return ev
        return None


# ------------------------------------------------------------------------------------- helpers

def read_line(proc: subprocess.Popen[bytes], prefix: bytes, timeout: float, log_path: Path) -> bytes:
    """The first line of ``proc``'s stdout starting with ``prefix`` (bounded)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            for line in buf.splitlines():
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r}: no {prefix!r} line within {timeout} s:\n{tail(log_path)}")
            if sel.select(min(left, 0.2)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"{proc.args!r} closed its stdout:\n{tail(log_path)}")
                buf += chunk


def traffic(beats: list[Beat], interval_s: float) -> dict[str, Any]:
    """Rate and size of one publisher's heartbeats seen on the wire."""
    if len(beats) < 2:
        return {"heartbeats_seen": len(beats), "note": "fewer than 2 heartbeats seen"}
    span = beats[-1].mono - beats[0].mono
    rate = (len(beats) - 1) / span
    payload = statistics.fmean(b.payload_bytes for b in beats)
    topic = beats[0].topic_chars
    packet = mqtt_publish_bytes(topic, round(payload))
    return {"heartbeats_seen": len(beats), "over_s": round(span, 3), "configured_interval_s": interval_s,
            "msgs_per_s": round(rate, 2), "payload_bytes": round(payload, 1), "topic_chars": topic,
            "payload_bytes_per_s": round(rate * payload), "mqtt_packet_bytes": packet,
            "mqtt_bytes_per_s": round(rate * packet),
            # one PUBLISH per TCP segment on an idle link: + 20 IPv4 + 32 TCP (with timestamps) bytes
            "with_tcp_ipv4_headers_bytes_per_s": round(rate * (packet + 52))}


# ------------------------------------------------------------------------------------- measurements

def expiries(where: tuple[str, int], cfg: Path, topics: Topics, obs: Observer, window: float, repeats: int,
             tmp: Path, rng: random.Random) -> dict[str, Any]:
    """``repeats`` clients, each set ``drive/m`` moving and is SIGKILLed; the part's expiry seen on the wire."""
    interval = window / 5
    late: list[float] = []
    kill_to_stop: list[float] = []
    since_last_beat: list[float] = []
    not_stopped = 0
    beat_after_kill = 0
    traffic_out: dict[str, Any] = {}
    for i in range(repeats):
        name = f"bench-{uuid.uuid4().hex[:6]}"
        hb_topic = topics.session_heartbeat(f"client/{name}")
        log_path = tmp / f"client-{window}-{i}.log"
        with process([sys.executable, "-m", "bench.session_client", str(cfg), where[0], str(where[1]), name,
                      f"{PART}/{MOTOR}"], log_path, stdout=subprocess.PIPE) as proc:
            sid = read_line(proc, b"ready ", START_TIMEOUT_S, log_path).split()[1].decode()
            ready = time.monotonic()

            def beat_since_ready(topic: str = hb_topic, t: float = ready) -> bool:
                return any(b.mono > t for b in obs.beats_of(topic))

            if not obs.wait(beat_since_ready, interval + 2.0):
                raise RuntimeError(f"no heartbeat of client {name} within {interval + 2.0} s:\n{tail(log_path)}")
            if i == 0:  # the traffic interval: this client lives longer, its heartbeats (and the parts') counted
                t0 = time.monotonic()
                time.sleep(TRAFFIC_S[window])
                t1 = time.monotonic()
                traffic_out["client"] = traffic([b for b in obs.beats_of(hb_topic) if t0 <= b.mono <= t1], interval)
                for p in (PRIMARY, PART):
                    own = [b for b in obs.beats_of(topics.session_heartbeat(f"part/{p}")) if t0 <= b.mono <= t1]
                    traffic_out[f"part_{p}_own_session"] = traffic(own, interval)
            time.sleep(rng.uniform(0, interval))  # a random phase of the heartbeat period
            kill_wall, kill_mono = time.time(), time.monotonic()
            proc.kill()
            proc.wait(10)
            if not obs.wait(functools.partial(obs.has_expiry, PART, sid), window + EXPIRY_MARGIN_S):
                raise RuntimeError(f"no expiry event from part {PART} for session {short(sid)} within "
                                   f"{window + EXPIRY_MARGIN_S} s")
            ev = obs.expiry(PART, sid)
            assert ev is not None
            mine = [b for b in obs.beats_of(hb_topic) if b.session == sid]
            last = mine[-1]
            beat_after_kill += last.mono > kill_mono
            if MOTOR not in ev.resources:
                not_stopped += 1
            late.append(ev.at - (last.wall + window))
            kill_to_stop.append(ev.at - kill_wall)
            since_last_beat.append(kill_wall - last.wall)
    s_late = summary_ms(late)
    return {"expiries": repeats, "motor_not_in_stopped": not_stopped,
            "deadline_to_stop_ms": s_late, "within_target": s_late["p99"] <= TARGET_LATE_MS,
            "kill_to_stop_ms": summary_ms(kill_to_stop),
            "kill_after_last_heartbeat_ms": summary_ms(since_last_beat),
            "last_heartbeat_arrived_after_kill": beat_after_kill,
            "heartbeat_traffic": traffic_out}


def raw_will(where: tuple[str, int], obs: Observer, tmp: Path) -> dict[str, Any]:
    """SIGKILL of a bare paho process with a Will, to the Will's arrival at the observer."""
    out: list[float] = []
    for i in range(WILL_REPEATS):
        root = f"{obs.will_root}/c{i}"
        log_path = tmp / f"will-{i}.log"
        with process([sys.executable, "-c", RAW_WILL_CLIENT, where[0], str(where[1]),
                      f"bench-will-{uuid.uuid4().hex[:8]}", root], log_path, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE) as proc:
            read_line(proc, b"ready", START_TIMEOUT_S, log_path)
            if not obs.wait(functools.partial(obs.has_alive, root), 5.0):
                raise RuntimeError("raw will client: its first message never reached the observer")
            time.sleep(0.02)
            kill = time.monotonic()
            proc.kill()
            proc.wait(10)
            if not obs.wait(functools.partial(obs.has_will, root), 10.0):
                raise RuntimeError(f"no Will within 10 s of the kill ({root})")
            out.append(obs.wills[f"{root}/will"] - kill)
    return {"kill_to_will_ms": summary_ms(out)}


def run_window(kind: str, window: float, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any] | None]:
    robot = f"bench{uuid.uuid4().hex[:8]}"
    topics = Topics(robot)
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        info = stack.enter_context(broker(kind))
        where = (info.host, info.port)
        url = f"mqtt://{info.host}:{info.port}"
        cfg = tmp / "robot.yaml"
        cfg.write_text(yaml.safe_dump({
            "robot": robot, "broker": {"urls": [url]}, "sessions": {"heartbeat_window_s": window},
            "parts": [{"name": PRIMARY},
                      {"name": PART, "parent": PRIMARY, "resources": [{"name": MOTOR, "model": "orc:sim:motor"}]}],
        }, sort_keys=False))
        procs = {}
        for name in (PRIMARY, PART):
            procs[name] = stack.enter_context(process(
                [sys.executable, "-m", "orchestrator", "part", str(cfg), "--name", name, "--broker", url],
                tmp / f"{name}.log"))
        for name, p in procs.items():
            asyncio.run(wait_running(where, topics, name, p, tmp / f"{name}.log"))
        obs = stack.enter_context(Observer(where, topics, f"bench-will/{uuid.uuid4().hex[:8]}"))
        log(f"{kind}: window {window} s, broker {where[0]}:{where[1]}, parts running")
        t0 = time.monotonic()
        res = expiries(where, cfg, topics, obs, window, REPEATS[window], tmp, rng)
        res["elapsed_s"] = round(time.monotonic() - t0, 1)
        will = raw_will(where, obs, tmp) if window == WINDOWS[0] else None
        res["observer_decode_errors"] = obs.errors
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"part {name} exited during the run:\n{tail(tmp / f'{name}.log')}")
        log(f"{kind}: window {window} s: deadline->stop p50 {res['deadline_to_stop_ms']['p50']} ms, "
            f"p99 {res['deadline_to_stop_ms']['p99']} ms")
        return res, will


def run() -> dict[str, Any]:
    out: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_1m_before": round(os.getloadavg()[0], 2)},
        "method": {"windows_s": list(WINDOWS), "expiries_per_window": {str(k): v for k, v in REPEATS.items()},
                   "raw_will_kills": WILL_REPEATS, "target_deadline_to_stop_p99_ms": TARGET_LATE_MS,
                   "robot": f"primary {PRIMARY} (opens sessions) + sub-part {PART} hosting orc:sim:motor {MOTOR}, "
                            "each a process of its own; client: RobotClient in a process SIGKILLed at a random "
                            "phase of its heartbeat period"},
    }
    rng = random.Random(20261124)
    saved = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = SessionKey.generate()  # the same key for every process this benchmark starts
    try:
        for kind in ("amqtt", "mosquitto"):
            res: dict[str, Any] = {}
            for window in WINDOWS:
                got, will = run_window(kind, window, rng)
                res[f"window_{window:g}s"] = got
                if will is not None:
                    res["raw_paho_will"] = will
            will_p50 = res["raw_paho_will"]["kill_to_will_ms"]["p50"]
            for window in WINDOWS:
                w = res[f"window_{window:g}s"]
                w["ratio_deadline_to_stop_p50_to_will_p50"] = round(w["deadline_to_stop_ms"]["p50"] / will_p50, 1)
                w["ratio_kill_to_stop_p50_to_will_p50"] = round(w["kill_to_stop_ms"]["p50"] / will_p50, 1)
            out[kind] = res
    finally:
        if saved is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = saved
    out["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return out
