"""Broker benchmark: raw paho throughput and round trip on each broker, with and without a robot's subscriptions.

amqtt 0.12.1 matched every publish against every subscription (field notes: 7,300 msg/s fell to
1,160 with 1,000 subscriptions); the embedded broker looks exact filters up directly and walks only
the wildcard ones.  Our protocol keeps subscriptions few (wildcards per part).  This measures what
that costs, on the embedded broker (``python -m orchestrator.broker`` in a process of its own) and on
mosquitto, in the same run, both with a queue bound of 100,000 messages per client (so nothing is
dropped) and TCP_NODELAY:

* ``publish_qos0`` / ``publish_qos1``: one bare paho publisher process (:mod:`bench.raw_publisher`)
  to one bare paho subscriber (this process): COUNT messages of SIZE bytes on a telemetry-shaped
  topic of the robot (``orc/v1/<robot>/part/bench/telemetry/m``); msg/s = messages received / (go
  to the last arrival).
* ``round_trip_us``: sequential request/response, QoS 1 both ways, TCP_NODELAY
  (:class:`bench.calls.RawRequester` here, :mod:`bench.raw_responder` in a process of its own), call-
  and reply-shaped topics of the robot (``.../client/bench/call/bench/m``, ``.../part/bench/reply/
  client/bench``) and our call's payload sizes; p50/p90/p99 in microseconds.

with the broker's subscription table in each of these states (held by :mod:`bench.sub_holder`, a
process of idle paho connections; none of the measured traffic matches any held filter):

* ``a_none``: no other subscriptions (measured first and again last: ``a_none_again``; ratios are
  against the mean of the two);
* ``b_robot_100``: the subscriptions a 100-part robot creates (one connection per part, the filters
  of orchestrator/runtime/part.py, primary.py, rpc/server.py, rpc/client.py and sessions/guard.py, one
  client connected): see ``subscriptions`` in the JSON for the count by kind;
* ``c_naive_exact``: the naive alternative, one exact-topic subscription per resource: 100
  connections x 10 resources (``orc/v1/<robot>/call/<part>/<resource>``);
* ``c_naive_wildcard``: the same per-resource design with the caller in the topic, as our calls
  carry it (``orc/v1/<robot>/+/+/call/<part>/<resource>``): 1,000 wildcard filters.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from bench.calls import RawRequester, process, summary_us
from bench.core import tree
from bench.rawpaho import Subscribed
from bench.sessions import read_line

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from brokers import BrokerInfo, start_embedded_process, start_mosquitto  # noqa: E402

from orchestrator.protocol.topics import Topics  # noqa: E402

N_QOS0 = int(os.environ.get("BENCH_PUBLISH_QOS0", "20000"))
N_QOS1 = int(os.environ.get("BENCH_PUBLISH_QOS1", "5000"))
N_RTT = int(os.environ.get("BENCH_RTT", "1000"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "200"))
PAYLOAD = 100  # bytes per published message (a small telemetry reading)
REQUEST_BYTES, REPLY_BYTES = 137, 91  # our call and reply on the wire (bench/calls.py `wire`)
PARTS = 100
RESOURCES_PER_PART = 10
CLIENT = "c"  # the one RobotClient connected to the 100-part robot
MAX_QUEUED = 100_000  # both brokers (mosquitto's test config has the same)
START_TIMEOUT_S = 60.0
IDLE_TIMEOUT_S = 10.0  # a throughput phase fails if no message arrives for this long
PHASE_TIMEOUT_S = 120.0


def log(msg: str) -> None:
    print(f"[bench.broker] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- subscriptions

def robot_subscriptions(t: Topics, n: int = PARTS) -> list[tuple[str, list[str]]]:
    """One connection per part of an n-part robot (core.py's tree: depth 3) plus one client, with its filters.

    Per part (orchestrator/runtime/part.py `_subscribe`, rpc/server.py, rpc/client.py `start`): its
    control topic from its parent (not the primary), calls to it, replies to it, every part's state,
    and for each child its report, state and heartbeat; the primary adds (primary.py `_subscribe`)
    every part's state and heartbeat, client shutdown and reload requests.  Sessions (guard.py
    `_follow`): every part follows the heartbeat topic of the one client's session that drives it.
    The client: replies to it, every part's state, robot notices.  Duplicates within a connection are
    sent once (as MqttClient does).
    """
    parts = tree(n)
    children: dict[str, list[str]] = {p["name"]: [] for p in parts}
    for p in parts:
        if p.get("parent"):
            children[p["parent"]].append(p["name"])
    client_hb = t.session_heartbeat(f"client/{CLIENT}")
    conns: list[tuple[str, list[str]]] = []
    for p in parts:
        me, parent = p["name"], p.get("parent")
        f: list[str] = []
        if parent is not None:
            f.append(t.part_control(parent, me))
        else:
            f += [t.all_part_states(), t.all_part_heartbeats(), *(t.part_report(c) for c in children[me]),
                  t.all_client_shutdowns(), t.all_client_reloads()]
        for c in children[me]:
            f += [t.part_report(c), t.part_state(c), t.part_heartbeat(c)]
        f += [t.calls_to(me), t.replies_to(f"part/{me}"), t.all_part_states(), client_hb]
        conns.append((f"{t.robot}.part.{me}", list(dict.fromkeys(f))))
    conns.append((f"{t.robot}.client.{CLIENT}",
                  [t.replies_to(f"client/{CLIENT}"), t.all_part_states(), t.robot_notice()]))
    return conns


def naive_subscriptions(t: Topics, wildcard: bool, n: int = PARTS,
                        per_part: int = RESOURCES_PER_PART) -> list[tuple[str, list[str]]]:
    def topic(p: int, r: int) -> str:
        return f"{t.root}/+/+/call/p{p}/r{r}" if wildcard else f"{t.root}/call/p{p}/r{r}"

    return [(f"{t.robot}.naive.p{p}", [topic(p, r) for r in range(per_part)]) for p in range(n)]


def count(conns: list[tuple[str, list[str]]]) -> dict[str, int]:
    subs = [f for _, fs in conns for f in fs]
    wild = [f for f in subs if "+" in f or "#" in f]
    return {"connections": len(conns), "subscriptions": len(subs), "wildcard_subscriptions": len(wild),
            "exact_subscriptions": len(subs) - len(wild), "distinct_filters": len(set(subs)),
            "distinct_wildcard_filters": len(set(wild))}


# ------------------------------------------------------------------------------------- processes

@contextlib.contextmanager
def broker(kind: str) -> Iterator[BrokerInfo]:
    if kind == "amqtt":
        with start_embedded_process(extra_args=["--max-queued", str(MAX_QUEUED)]) as info:
            yield info
    elif kind == "mosquitto":
        with start_mosquitto(max_queued=MAX_QUEUED) as info:
            yield info
    else:
        raise ValueError(f"unknown broker kind {kind!r}")


@contextlib.contextmanager
def holding(where: tuple[str, int], conns: list[tuple[str, list[str]]], tmp: Path) -> Iterator[dict[str, Any]]:
    """The subscriptions ``conns`` held by a process of idle paho connections while the block runs."""
    if not conns:
        yield {"received_by_held_subscriptions": 0}
        return
    spec = tmp / f"subs-{uuid.uuid4().hex[:6]}.json"
    spec.write_text(json.dumps(conns))
    log_path = tmp / "holder.log"
    out: dict[str, Any] = {}
    with process([sys.executable, "-m", "bench.sub_holder", where[0], str(where[1]), str(spec)], log_path,
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        t0 = time.monotonic()
        read_line(proc, b"ready ", START_TIMEOUT_S, log_path)
        out["subscribe_all_s"] = round(time.monotonic() - t0, 2)
        yield out
        assert proc.stdin is not None
        proc.stdin.close()
        with contextlib.suppress(RuntimeError):
            out["received_by_held_subscriptions"] = int(read_line(proc, b"received ", 10.0, log_path).split()[1])


class Subscriber(Subscribed):
    """The bare paho subscriber: counts arrivals on one topic, stamping first and last on paho's thread."""

    def __init__(self, where: tuple[str, int], topic: str, qos: int) -> None:
        super().__init__(where, f"bench-raw-sub-{uuid.uuid4().hex[:8]}", [(topic, qos)],
                         start_timeout_s=START_TIMEOUT_S)
        self.topic, self.qos = topic, qos
        self._cv = threading.Condition()
        self.n = 0
        self.last = 0.0

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        with self._cv:
            self.n += 1
            self.last = now
            self._cv.notify_all()

    def _moved(self, target: int, seen: int) -> bool:
        return self.n >= target or self.n > seen

    def wait(self, target: int) -> None:
        """Until ``target`` messages arrived; fails if none arrives for IDLE_TIMEOUT_S or after PHASE_TIMEOUT_S."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        with self._cv:
            while self.n < target:
                seen = self.n
                if not self._cv.wait_for(functools.partial(self._moved, target, seen), IDLE_TIMEOUT_S):
                    raise TimeoutError(f"{self.n} of {target} messages, none for {IDLE_TIMEOUT_S} s")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.n} of {target} messages after {PHASE_TIMEOUT_S} s")


def throughput(where: tuple[str, int], topic: str, n: int, qos: int, tmp: Path) -> dict[str, Any]:
    log_path = tmp / f"publisher-{qos}.log"
    with Subscriber(where, topic, qos) as sub, process(
            [sys.executable, "-m", "bench.raw_publisher", where[0], str(where[1]), topic, str(n), str(qos),
             str(PAYLOAD)], log_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as pub:
        read_line(pub, b"ready", START_TIMEOUT_S, log_path)
        assert pub.stdin is not None
        t0 = time.perf_counter()
        pub.stdin.write(b"go\n")
        pub.stdin.flush()
        sub.wait(n)
        elapsed = sub.last - t0
        sent_s = float(read_line(pub, b"sent ", PHASE_TIMEOUT_S, log_path).split()[1])
    return {"messages": n, "qos": qos, "payload_bytes": PAYLOAD, "msgs_per_s": round(n / elapsed),
            "seconds": round(elapsed, 3), "publisher_done_s": round(sent_s, 3)}


def round_trips(where: tuple[str, int], t: Topics, tmp: Path) -> dict[str, Any]:
    req_topic = t.call("client/bench", "bench", "m")
    rep_topic = t.reply("bench", "client/bench")
    log_path = tmp / "responder.log"
    with process([sys.executable, "-m", "bench.raw_responder", where[0], str(where[1]), req_topic, rep_topic,
                  str(REPLY_BYTES)], log_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as resp:
        read_line(resp, b"ready", START_TIMEOUT_S, log_path)
        with RawRequester(where, req_topic, rep_topic, REQUEST_BYTES) as raw:
            raw.round_trips(WARMUP)
            got = raw.round_trips(N_RTT)
            stray = raw.stray
    out: dict[str, Any] = summary_us(got)
    out["topics_chars"] = {"request": len(req_topic), "reply": len(rep_topic)}
    out["stray_replies"] = stray
    return out


def measure(where: tuple[str, int], t: Topics, tmp: Path) -> dict[str, Any]:
    topic = t.telemetry("bench", "m")
    return {"publish_qos0": throughput(where, topic, N_QOS0, 0, tmp),
            "publish_qos1": throughput(where, topic, N_QOS1, 1, tmp),
            "round_trip_us": round_trips(where, t, tmp)}


def ratios(x: dict[str, Any], base: dict[str, float]) -> dict[str, float]:
    return {"publish_qos0": round(x["publish_qos0"]["msgs_per_s"] / base["qos0"], 2),
            "publish_qos1": round(x["publish_qos1"]["msgs_per_s"] / base["qos1"], 2),
            "round_trip_p50": round(x["round_trip_us"]["p50"] / base["p50"], 2),
            "round_trip_p99": round(x["round_trip_us"]["p99"] / base["p99"], 2)}


def run_broker(kind: str) -> dict[str, Any]:
    t = Topics(f"bench{uuid.uuid4().hex[:6]}")
    states: dict[str, list[tuple[str, list[str]]]] = {"a_none": [], "b_robot_100": robot_subscriptions(t),
              "c_naive_exact": naive_subscriptions(t, wildcard=False),
              "c_naive_wildcard": naive_subscriptions(t, wildcard=True), "a_none_again": []}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as d, broker(kind) as info:
        tmp = Path(d)
        where = (info.host, info.port)
        t0 = time.monotonic()
        for name, conns in states.items():
            with holding(where, conns, tmp) as held:
                res = measure(where, t, tmp)
            res["subscriptions"] = count(conns)
            res.update(held)
            out[name] = res
            log(f"{kind} {name}: qos0 {res['publish_qos0']['msgs_per_s']} msg/s, qos1 "
                f"{res['publish_qos1']['msgs_per_s']} msg/s, rtt p50 {res['round_trip_us']['p50']} us")
        out["elapsed_s"] = round(time.monotonic() - t0, 1)
    a, a2 = out["a_none"], out["a_none_again"]
    base = {"qos0": statistics.fmean([a["publish_qos0"]["msgs_per_s"], a2["publish_qos0"]["msgs_per_s"]]),
            "qos1": statistics.fmean([a["publish_qos1"]["msgs_per_s"], a2["publish_qos1"]["msgs_per_s"]]),
            "p50": statistics.fmean([a["round_trip_us"]["p50"], a2["round_trip_us"]["p50"]]),
            "p99": statistics.fmean([a["round_trip_us"]["p99"], a2["round_trip_us"]["p99"]])}
    out["ratio_b_to_a"] = ratios(out["b_robot_100"], base)
    out["ratio_c_exact_to_a"] = ratios(out["c_naive_exact"], base)
    out["ratio_c_wildcard_to_a"] = ratios(out["c_naive_wildcard"], base)
    return out


def run() -> dict[str, Any]:
    out: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_1m_before": round(os.getloadavg()[0], 2)},
        "method": {"publish_qos0_messages": N_QOS0, "publish_qos1_messages": N_QOS1, "payload_bytes": PAYLOAD,
                   "round_trips": N_RTT, "warmup": WARMUP, "request_reply_bytes": [REQUEST_BYTES, REPLY_BYTES],
                   "max_queued_per_client": MAX_QUEUED, "client": f"paho-mqtt {paho_version()}",
                   "order": "a_none, b_robot_100, c_naive_exact, c_naive_wildcard, a_none_again on one broker "
                            "process per kind; ratios against the mean of the two a_none runs"},
    }
    for kind in ("amqtt", "mosquitto"):
        out[kind] = run_broker(kind)
    out["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    return out


def paho_version() -> str:
    from importlib.metadata import version

    return version("paho-mqtt")

