"""Call benchmark: SDK round trip and pipelined throughput, against a bare paho baseline on the same broker.

For each broker (the embedded amqtt broker and mosquitto), three processes share the machine the
same way:

* the broker, in a process of its own (``python -m orchestrator.broker`` or mosquitto);
* the serving side: a real part process (``python -m orchestrator part``) hosting one
  ``orc:sim:motor`` named ``m``, and the raw responder (:mod:`bench.raw_responder`, bare paho);
* the calling side, this process: a :class:`~orchestrator.client.RobotClient` calling
  ``drive/m``'s ``get_position`` through the typed proxy, and a bare paho requester.

Both sides use QoS 1 both ways, TCP_NODELAY, the same in-flight window, payloads and topics of the
same sizes (measured on the wire from the SDK's own call and reply). Ours and raw are measured in
alternating rounds so a burst of load from elsewhere on the machine hits both alike.

Figures: sequential round trip p50/p90/p99 in microseconds, and calls/s with 32 calls in flight;
ratios ours / raw (targets from the issue: round trip at most 1.25x, throughput at least 0.8x).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import selectors
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as paho
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from brokers import BrokerInfo, start_embedded_process, start_mosquitto  # noqa: E402

from bench.rawpaho import Subscribed  # noqa: E402
from orchestrator.client import RobotClient  # noqa: E402
from orchestrator.protocol.codec import decode  # noqa: E402
from orchestrator.protocol.messages import PartState  # noqa: E402
from orchestrator.protocol.topics import Topics  # noqa: E402
from orchestrator.resources.base import Motor  # noqa: E402
from orchestrator.transport.client import Message, MqttClient  # noqa: E402

N = int(os.environ.get("BENCH_CALLS", "2000"))  # sequential calls measured, per side and broker
WARMUP = int(os.environ.get("BENCH_WARMUP", "200"))
ROUNDS = 8  # ours and raw alternate, N / ROUNDS calls per round
PIPELINE_TOTAL = int(os.environ.get("BENCH_PIPELINE", "5000"))  # calls per side and broker, 32 in flight
PIPELINE_ROUNDS = 4
WINDOW = 32
CALL_TIMEOUT_S = 5.0  # any single call or reply slower than this fails the benchmark
PHASE_TIMEOUT_S = 60.0  # any measured phase
START_TIMEOUT_S = 20.0
TARGET_RTT_RATIO = 1.25
TARGET_THROUGHPUT_RATIO = 0.8
PART, RESOURCE = "drive", "m"
ID_BYTES = 8


def log(msg: str) -> None:
    print(f"[bench.calls] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- statistics

def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def summary_ms(samples_s: list[float], bound_s: float | None = None,
               raw_s: list[float] | None = None) -> dict[str, Any]:
    """p50/p99 (nearest rank) in ms of samples in seconds; with a bound, the ratios to it; with raw
    samples (the paho baseline of the same run), ours / raw at p50 and p99."""
    s = sorted(samples_s)
    if not s:
        return {"n": 0}
    p50, p99 = percentile(s, 50), percentile(s, 99)
    out: dict[str, Any] = {"n": len(s), "p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1),
                           "max_ms": round(s[-1] * 1000, 1)}
    if bound_s is not None:
        out |= {"bound_ms": round(bound_s * 1000, 1), "ratio_p50": round(p50 / bound_s, 3),
                "ratio_p99": round(p99 / bound_s, 3)}
    if raw_s:
        r = sorted(raw_s)
        out |= {"ratio_p50_to_raw": round(p50 / percentile(r, 50), 3),
                "ratio_p99_to_raw": round(p99 / percentile(r, 99), 3)}
    return out


def summary_us(samples_us: list[float]) -> dict[str, float | int]:
    s = sorted(samples_us)
    return {"n": len(s), "p50": round(percentile(s, 50), 1), "p90": round(percentile(s, 90), 1),
            "p99": round(percentile(s, 99), 1), "mean": round(statistics.fmean(s), 1),
            "min": round(s[0], 1), "max": round(s[-1], 1)}


# ------------------------------------------------------------------------------------- processes

@contextlib.contextmanager
def broker(kind: str) -> Iterator[BrokerInfo]:
    """The broker in a process of its own, for both kinds (mosquitto's test config: set_tcp_nodelay)."""
    if kind == "amqtt":
        with start_embedded_process() as info:
            yield info
    elif kind == "mosquitto":
        with start_mosquitto() as info:
            yield info
    else:
        raise ValueError(f"unknown broker kind {kind!r}")


@contextlib.contextmanager
def process(args: list[str], log_path: Path, *, stdin: int | None = subprocess.DEVNULL,
            stdout: int | IO[Any] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, always terminated (SIGTERM, then SIGKILL) and reaped when the block exits."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(args, stdin=stdin, stdout=stdout if stdout is not None else err, stderr=err,
                                cwd=str(ROOT), env=env)
        try:
            yield proc
        finally:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def tail(path: Path, n: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-n:]
    return ""


def wait_line(proc: subprocess.Popen[bytes], expected: bytes, timeout: float, log_path: Path) -> None:
    """Wait until ``proc`` prints ``expected`` on a line of its stdout (bounded)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while expected not in buf.splitlines():
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} not ready within {timeout} s:\n{tail(log_path)}")
            if sel.select(min(left, 0.2)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"{proc.args!r} closed its stdout:\n{tail(log_path)}")
                buf += chunk


async def wait_running(where: tuple[str, int], topics: Topics, part: str, proc: subprocess.Popen[bytes],
                       log_path: Path) -> None:
    """Until the part's retained state says running (bounded; fails early if the process exits)."""
    running = asyncio.Event()

    def on_state(msg: Message) -> None:
        st = decode(msg.payload).parse(PartState)
        if st.state.value == "running":
            running.set()

    async with MqttClient(f"bench.watch.{uuid.uuid4().hex[:6]}", [where], connect_timeout=START_TIMEOUT_S) as c:
        await c.subscribe(topics.part_state(part), on_state)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not running.is_set():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"part {part} not running within {START_TIMEOUT_S} s:\n{tail(log_path)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.wait(), 0.2)


# ------------------------------------------------------------------------------------- the wire

async def sniff_sizes(where: tuple[str, int], topics: Topics, motor: Motor) -> dict[str, Any]:
    """One SDK call observed on the wire: topic lengths and payload sizes of the request and its reply.

    The sniffer is closed before anything is measured (an extra subscriber costs the broker a copy).
    """
    seen: dict[str, Message] = {}
    both = asyncio.Event()

    def on(msg: Message) -> None:
        kind = "request" if "/call/" in msg.topic else "reply"
        seen.setdefault(kind, msg)
        if len(seen) == 2:
            both.set()

    async with MqttClient(f"bench.sniff.{uuid.uuid4().hex[:6]}", [where]) as c:
        await c.subscribe(f"{topics.root}/+/+/call/{PART}/+", on)
        await c.subscribe(f"{topics.root}/part/{PART}/reply/#", on)
        await motor.get_position()
        await asyncio.wait_for(both.wait(), CALL_TIMEOUT_S)
    return {k: {"topic_chars": len(m.topic), "payload_bytes": len(m.payload)} for k, m in sorted(seen.items())}


def same_length_topic(prefix: str, length: int) -> str:
    return prefix + "x" * max(0, length - len(prefix))


# ------------------------------------------------------------------------------------- raw paho

class RawRequester(Subscribed):
    """The bare paho requester: QoS 1, TCP_NODELAY, paho's own network thread, threading.Event waits."""

    def __init__(self, where: tuple[str, int], request_topic: str, reply_topic: str, request_size: int) -> None:
        super().__init__(where, f"bench-raw-requester-{uuid.uuid4().hex[:8]}", [(reply_topic, 1)], keepalive=10,
                         start_timeout_s=START_TIMEOUT_S)
        self.request_topic = request_topic
        self.reply_topic = reply_topic
        self._pad = b"\0" * max(0, request_size - ID_BYTES)
        self._ids = itertools.count(1)
        self._reply = threading.Event()
        self._expect = -1
        self._lock = threading.Lock()
        self._outstanding: set[int] = set()
        self._window = threading.Semaphore(WINDOW)
        self._answered = 0
        self._target = 0
        self._all = threading.Event()
        self._pipelined = False
        self.stray = 0

    # paho thread: never raise

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            (rid,) = struct.unpack_from(">Q", msg.payload)
            if not self._pipelined:
                if rid == self._expect:
                    self._reply.set()
                else:
                    self.stray += 1
                return
            with self._lock:
                if rid not in self._outstanding:
                    self.stray += 1
                    return
                self._outstanding.discard(rid)
                self._answered += 1
                done = self._answered >= self._target
            self._window.release()
            if done:
                self._all.set()
        except Exception:
            self.stray += 1

    def _request(self, rid: int) -> None:
        info = self._c.publish(self.request_topic, struct.pack(">Q", rid) + self._pad, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"raw publish failed: {paho.error_string(info.rc)}")

    def round_trips(self, n: int) -> list[float]:
        """``n`` sequential request/replies; microseconds each."""
        self._pipelined = False
        out: list[float] = []
        for _ in range(n):
            rid = next(self._ids)
            self._reply.clear()
            self._expect = rid
            t0 = time.perf_counter_ns()
            self._request(rid)
            if not self._reply.wait(CALL_TIMEOUT_S):
                raise TimeoutError(f"raw reply {rid} not received within {CALL_TIMEOUT_S} s")
            out.append((time.perf_counter_ns() - t0) / 1000)
        return out

    def pipelined(self, total: int) -> float:
        """``total`` requests, at most ``WINDOW`` outstanding; returns seconds until the last reply."""
        with self._lock:
            self._outstanding.clear()
            self._answered = 0
            self._target = total
        self._all.clear()
        self._window = threading.Semaphore(WINDOW)
        self._pipelined = True
        try:
            t0 = time.perf_counter()
            for _ in range(total):
                if not self._window.acquire(timeout=CALL_TIMEOUT_S):
                    raise TimeoutError(f"raw: no reply freed the window within {CALL_TIMEOUT_S} s")
                rid = next(self._ids)
                with self._lock:
                    self._outstanding.add(rid)
                self._request(rid)
            if not self._all.wait(CALL_TIMEOUT_S):
                raise TimeoutError(f"raw: {total - self._answered} replies missing")
            return time.perf_counter() - t0
        finally:
            self._pipelined = False


# ------------------------------------------------------------------------------------- ours

async def ours_round_trips(motor: Motor, n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await motor.get_position()
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def ours_pipelined(motor: Motor, total: int) -> float:
    """``total`` calls by ``WINDOW`` workers (so ``WINDOW`` in flight); returns seconds until the last reply."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await motor.get_position()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WINDOW))), PHASE_TIMEOUT_S)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------- one broker

StartResponder = Callable[[str, str, int], Awaitable[Callable[[], None]]]


async def measure(where: tuple[str, int], topics: Topics, part_ready: Callable[[], Awaitable[None]],
                  start_responder: StartResponder) -> dict[str, Any]:
    """Both sides on one broker: warm-up, alternating sequential rounds, then alternating pipelined rounds."""
    await part_ready()
    async with RobotClient(topics.robot, [where], name=f"bench-{uuid.uuid4().hex[:6]}",
                           timeout=CALL_TIMEOUT_S) as client:
        motor = client.resource(f"{PART}/{RESOURCE}", Motor)  # type: ignore[type-abstract]
        wire = await sniff_sizes(where, topics, motor)
        tag = uuid.uuid4().hex[:8]
        raw_req_topic = same_length_topic(f"raw/{tag}/req/", wire["request"]["topic_chars"])
        raw_rep_topic = same_length_topic(f"raw/{tag}/rep/", wire["reply"]["topic_chars"])
        stop_responder = await start_responder(raw_req_topic, raw_rep_topic, wire["reply"]["payload_bytes"])
        try:
            with RawRequester(where, raw_req_topic, raw_rep_topic, wire["request"]["payload_bytes"]) as raw:
                # warm-up: both paths, imports, caches, TCP windows
                await ours_round_trips(motor, WARMUP)
                await asyncio.to_thread(raw.round_trips, WARMUP)

                ours_rtt: list[float] = []
                raw_rtt: list[float] = []
                rounds: dict[str, list[float]] = {"ours_p50": [], "raw_p50": []}
                per_round = max(1, N // ROUNDS)
                for r in range(ROUNDS):
                    # alternate who goes first, so drifting load hits both alike
                    order = ("ours", "raw") if r % 2 == 0 else ("raw", "ours")
                    for who in order:
                        if who == "ours":
                            got = await asyncio.wait_for(ours_round_trips(motor, per_round), PHASE_TIMEOUT_S)
                            ours_rtt += got
                        else:
                            got = await asyncio.wait_for(asyncio.to_thread(raw.round_trips, per_round),
                                                         PHASE_TIMEOUT_S)
                            raw_rtt += got
                        rounds[f"{who}_p50"].append(round(statistics.median(got), 1))

                # pipelined throughput
                await ours_pipelined(motor, WINDOW * 10)
                await asyncio.to_thread(raw.pipelined, WINDOW * 10)
                per_pround = max(WINDOW, PIPELINE_TOTAL // PIPELINE_ROUNDS)
                t_ours = t_raw = 0.0
                tp_rounds: dict[str, list[float]] = {"ours": [], "raw": []}
                for r in range(PIPELINE_ROUNDS):
                    order = ("ours", "raw") if r % 2 == 0 else ("raw", "ours")
                    for who in order:
                        if who == "ours":
                            dt = await ours_pipelined(motor, per_pround)
                            t_ours += dt
                        else:
                            dt = await asyncio.wait_for(asyncio.to_thread(raw.pipelined, per_pround),
                                                        PHASE_TIMEOUT_S)
                            t_raw += dt
                        tp_rounds[who].append(round(per_pround / dt))
                stray = raw.stray
        finally:
            await asyncio.to_thread(stop_responder)

    ours_s, raw_s = summary_us(ours_rtt), summary_us(raw_rtt)
    calls = per_pround * PIPELINE_ROUNDS
    ours_tp, raw_tp = calls / t_ours, calls / t_raw
    rtt_p50_ratio = ours_s["p50"] / raw_s["p50"]
    rtt_p99_ratio = ours_s["p99"] / raw_s["p99"]
    tp_ratio = ours_tp / raw_tp
    return {
        "wire": wire,
        "round_trip_us": {
            "ours": ours_s, "raw_paho": raw_s,
            "ratio_p50": round(rtt_p50_ratio, 2), "ratio_p99": round(rtt_p99_ratio, 2),
            "p50_per_round": rounds,
            "within_target": rtt_p50_ratio <= TARGET_RTT_RATIO and rtt_p99_ratio <= TARGET_RTT_RATIO,
        },
        f"pipelined_{WINDOW}_in_flight": {
            "calls": calls,
            "ours_calls_per_s": round(ours_tp), "raw_paho_calls_per_s": round(raw_tp),
            "ratio": round(tp_ratio, 2), "calls_per_s_per_round": tp_rounds,
            "within_target": tp_ratio >= TARGET_THROUGHPUT_RATIO,
        },
        "raw_stray_replies": stray,
    }


def run_broker(kind: str) -> dict[str, Any]:
    robot = f"bench{uuid.uuid4().hex[:8]}"
    topics = Topics(robot)
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as d, contextlib.ExitStack() as stack:
        tmp = Path(d)
        info = stack.enter_context(broker(kind))
        where = (info.host, info.port)
        url = f"mqtt://{info.host}:{info.port}"
        cfg = tmp / "robot.yaml"
        cfg.write_text(yaml.safe_dump({
            # the brokers here admit anonymous clients (the raw paho baseline connects so too): the part and
            # the SDK's client as well, without credentials (a connection's password costs nothing per call)
            "robot": robot, "broker": {"urls": [url]}, "security": {"insecure": True},
            "parts": [{"name": PART, "resources": [{"name": RESOURCE, "model": "orc:sim:motor"}]}],
        }, sort_keys=False))
        part_log = tmp / "part.log"
        part = stack.enter_context(process(
            [sys.executable, "-m", "orchestrator", "part", str(cfg), "--name", PART, "--broker", url], part_log))

        async def part_ready() -> None:
            await wait_running(where, topics, PART, part, part_log)

        async def start_responder(req_topic: str, rep_topic: str, size: int) -> Callable[[], None]:
            """Start the raw responder; returns a blocking function that stops it."""
            resp_log = tmp / "responder.log"
            ctx = process([sys.executable, "-m", "bench.raw_responder", info.host, str(info.port), req_topic,
                           rep_topic, str(size)], resp_log, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            proc = stack.enter_context(ctx)  # also stopped by the ExitStack if anything fails
            await asyncio.to_thread(wait_line, proc, b"ready", START_TIMEOUT_S, resp_log)

            def stop() -> None:
                if proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        proc.stdin.close()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

            return stop

        log(f"{kind}: broker on {where[0]}:{where[1]}, part pid {part.pid}")
        t0 = time.monotonic()
        result = asyncio.run(measure(where, topics, part_ready, start_responder))
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        log(f"{kind}: done in {result['elapsed_s']} s")
        return result


def run() -> dict[str, Any]:
    out: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_1m_before": round(os.getloadavg()[0], 2)},
        "method": {"sequential_calls": (N // ROUNDS) * ROUNDS, "warmup": WARMUP, "rounds": ROUNDS,
                   "pipelined_calls": max(WINDOW, PIPELINE_TOTAL // PIPELINE_ROUNDS) * PIPELINE_ROUNDS,
                   "in_flight": WINDOW, "qos": 1, "call": f"{PART}/{RESOURCE} Motor.get_position via RobotClient",
                   "targets": {"round_trip_ratio_max": TARGET_RTT_RATIO,
                               "throughput_ratio_min": TARGET_THROUGHPUT_RATIO}},
    }
    for kind in ("amqtt", "mosquitto"):
        out[kind] = run_broker(kind)
    out["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return out
