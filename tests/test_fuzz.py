"""Fuzzing: thousands of hostile messages to every topic a part, the primary, `up` and the SDK listen on,
while a client makes real calls; and hostile configuration files for the loader.

The wire fuzz runs its robot with ``security: {insecure: true}``: no broker identities, no topic rights,
so every message reaches the application's own checks (the envelope's sender against the topic's
identity, the codec's limits, the models' bounds) — those are what is under test.  Nothing sent is a
*valid* command from the identity a topic is reserved to (in insecure mode anyone may send those, and
obeying them is not a bug): every message is undecodable, malformed, carries at least one field no
model accepts, or claims a sender the topic is not reserved to.

``ORCHESTRATOR_FUZZ_SECONDS`` (default 15) sets how long the embedded-broker run sends; the mosquitto
run sends a third of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psutil
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from inproc import InprocRobot, running_robot
from typer.testing import CliRunner

from orchestrator import Motor
from orchestrator.cli import app
from orchestrator.protocol.codec import MAX_PAYLOAD, pack
from orchestrator.protocol.messages import PartStateName
from orchestrator.protocol.topics import Topics

FUZZ_SECONDS = float(os.environ.get("ORCHESTRATOR_FUZZ_SECONDS", "15"))
SEED = int(os.environ.get("ORCHESTRATOR_FUZZ_SEED", "61474"))
MB = 1024 * 1024

PARTS: list[dict[str, Any]] = [
    {"name": "main", "heartbeat_s": 0.25, "heartbeat_misses": 8,
     "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
    {"name": "base", "parent": "main", "heartbeat_s": 0.25, "heartbeat_misses": 8,
     "resources": [{"name": "left", "model": "orc:sim:motor"}, {"name": "right", "model": "orc:sim:motor"}]},
    {"name": "cam", "parent": "main", "heartbeat_s": 0.25, "heartbeat_misses": 8,
     "resources": [{"name": "imager", "model": "orc:sim:sensor"}]},
]
CHILDREN = {"main": ["base", "cam"], "base": [], "cam": []}


# ------------------------------------------------------------------------------------------- messages

BIG = "H" * (64 * 1024)

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
hostile_value = st.one_of(
    junk, st.sampled_from([BIG, "", "a/#/+", "../../etc", "\x00", 2**63, -1, -(2**63), math.nan, math.inf, 1e308,
                           [BIG] * 3, {"": None}, True]),
    st.text(min_size=100, max_size=3000),
)
# a value no field of any model takes (str, numbers, enums, bools, lists of names or of models, maps):
# a list whose item is a map without any required key
never_valid = st.builds(lambda j: [{"\x00hostile": j}], junk)
births = st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from([0, 2**63, -1, "x", None, 1.5, [1]]))


def examples(robot: str) -> dict[str, dict[str, Any]]:
    """A valid body of every model on the wire (each message below breaks at least one of its fields)."""
    return {
        "state": {"state": "running", "parent": "main", "pid": 1, "heartbeat_s": 0.2, "resources": ["x"]},
        "hb": {"uptime_s": 1.0},
        "ctl": {"cmd": "stop", "reason": "fuzz", "deadline_s": 1.0, "shutdown_id": "s", "end_id": "e",
                "session": "*"},
        "report": {"shutdown_id": "s", "began_at": 1.0, "stopped_at": 2.0, "resources_stopped": ["x"],
                   "children": [{"part": "base", "forced": True}]},
        "sessions/report": {"end_id": "e", "session": "s", "stopped": ["base/left"], "parts": ["base"]},
        "sessions/events": {"kind": "expired", "session": "abcdef", "owner": "client/operator", "part": "cam"},
        "sessions/state": {"tracked": [{"session": "s", "owner": "client/x", "window_s": 1.0}],
                           "ended": [{"session": "abcdef", "at": 1.0}]},
        "resources": {"resources": [{"name": "x", "model": "a:b:c", "status": "ready"}]},
        "status": {"robot": robot, "primary": "main", "state": "running",
                   "parts": {"base": {"state": "offline", "online": False, "birth": 2**62}}},
        "notice": {"kind": "going_down", "shutdown_id": "s", "reason": "fuzz"},
        "timeline": {"shutdown_id": "s", "started_at": time.time() + 10,
                     "entries": [{"part": "base", "forced": True, "killed": True}]},
        "upstream": {"state": "down", "since": 1.0},
        "request": {"reason": "fuzz"},
        "call": {"id": "fuzz", "method": "set_power", "args": {"power": 0.9}, "deadline": time.time() + 5},
        "reply": {"id": "fuzz", "ok": True, "result": 1},
        "session/hb": {"session": "s.1000.00", "n": 1, "tag": "00", "close": True},
    }


class Target:
    """One topic, what listens to it, who it is reserved to, and whether a valid message there is harmless."""

    def __init__(self, topic: str, kind: str, owner: str, harmless: bool = False, retain: bool = False) -> None:
        self.topic, self.kind, self.owner, self.harmless, self.retain = topic, kind, owner, harmless, retain


def targets(t: Topics) -> list[Target]:
    out: list[Target] = []
    for p in ("main", "base", "cam", "ghost"):
        me = f"part/{p}"
        out += [Target(t.part_state(p), "state", me, retain=True), Target(t.part_heartbeat(p), "hb", me),
                Target(t.part_report(p), "report", me), Target(t.session_report(p), "sessions/report", me),
                Target(t.session_events(p), "sessions/events", me),
                Target(t.session_state(p), "sessions/state", me, retain=True),
                Target(t.part_resources(p), "resources", me, harmless=True, retain=True),
                Target(t.part_counters(p), "resources", me, harmless=True, retain=True),
                Target(t.session_heartbeat(me), "session/hb", me),
                Target(t.reply(p, "client/operator"), "reply", me, harmless=True),
                Target(t.reply(p, "part/main"), "reply", me, harmless=True)]
        for child in CHILDREN.get(p, ["base"]):
            out.append(Target(t.part_control(p, child), "ctl", me))
    for caller in ("client/fuzz", "client/operator", "part/cam", "part/main"):
        for part, res in (("base", "left"), ("base", "right"), ("main", "health"), ("main", "_sessions"),
                          ("cam", "imager"), ("cam", "_sessions"), ("ghost", "x")):
            out.append(Target(t.call(caller, part, res), "call", caller, harmless=caller == "client/fuzz"))
    for client in ("operator", "fuzz", "up", "watcher"):
        out += [Target(t.client_shutdown(client), "request", f"client/{client}"),
                Target(t.client_reload(client), "request", f"client/{client}"),
                Target(t.session_heartbeat(f"client/{client}"), "session/hb", f"client/{client}")]
    out += [Target(t.robot_status(), "status", "part/main", retain=True),
            Target(t.robot_notice(), "notice", "part/main"),
            Target(t.robot_timeline(), "timeline", "part/main", retain=True),
            Target(t.robot_upstream(), "upstream", "part/main", retain=True),
            Target(t.bridge_state(), "bridge", "bridge/upstream", retain=True)]
    return out


SENDERS = ["part/main", "part/base", "part/cam", "part/ghost", "client/operator", "client/fuzz", "client/up",
           "bridge/upstream", "", "part/", "part/main/x", BIG[:300]]


@st.composite
def message(draw: st.DrawFn, targets: list[Target], bodies: dict[str, dict[str, Any]]) -> tuple[Target, bytes, bool]:
    """(target, payload, retain): a message that no receiver may act on."""
    tg = draw(st.sampled_from(targets))
    retain = tg.retain and draw(st.booleans())
    if tg.kind == "bridge":  # raw "1"/"0" (mosquitto's notifications): anything else
        raw = draw(st.binary(max_size=64) | st.sampled_from([b"2", b"01", b"\x00", b"up", b"true", b"-1"]))
        return tg, (raw if raw.strip() not in (b"0", b"1") else b"x" + raw), retain
    body = dict(bodies[tg.kind])
    how = draw(st.sampled_from(["hostile field", "wrong sender", "junk body", "junk envelope"]))
    src = tg.owner
    if how == "hostile field":
        for f in draw(st.lists(st.sampled_from([*body, "extra", BIG[:70]]), max_size=3)):
            body[f] = draw(hostile_value)
        body[draw(st.sampled_from(sorted(bodies[tg.kind])))] = draw(never_valid)  # at least one field no model takes
    elif how == "wrong sender":
        src = draw(st.sampled_from([s for s in SENDERS if s != tg.owner]))
    elif how == "junk body":
        junk_body = draw(junk)
        # a map of unknown keys is a valid request where every field has a default: sent as someone else
        if isinstance(junk_body, dict) and tg.kind in ("request", "hb", "sessions/state"):
            src = draw(st.sampled_from([s for s in SENDERS if s != tg.owner]))
        body = junk_body
    else:
        return tg, pack(draw(junk)), retain
    env: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, 2, 0, "1x", None])) if how != "wrong sender" else 1,
                           "src": src, "birth": draw(births), "seq": draw(births), "ts": draw(hostile_value),
                           "body": body}
    try:
        return tg, pack(env), retain
    except (OverflowError, TypeError, ValueError):
        return tg, pack({"v": 1, "src": src, "body": [1]}), retain


def random_payload(rng: random.Random, mutate: bool) -> bytes:
    """Random bytes, deep nesting, oversized; ``mutate``: also truncated and bit-flipped envelopes (a call
    of client/fuzz: sent only where a message that survives the flips is harmless)."""
    r = rng.random() if mutate else rng.random() * 0.62
    if r < 0.35:
        return rng.randbytes(rng.choice([0, 1, 7, 64, 512, 4096]))
    if r < 0.55:
        n = rng.choice([33, 100, 1000, 10_000, 100_000])
        return rng.choice([b"\x91", b"\x81\xa1a", b"\xdc\x00\x01"]) * n + b"\xc0"
    if r < 0.6:
        return b"\x92" + b"\xdb" + (MAX_PAYLOAD + 1024).to_bytes(4, "big") + b"x" * 100  # announces > the limit
    if r < 0.62:
        return rng.randbytes(MAX_PAYLOAD + rng.choice([1, 4000]))  # dropped by the broker's size limit
    env = bytearray(pack({"v": 1, "src": "client/fuzz", "birth": 1, "seq": 2, "ts": 3.0,
                          "body": {"id": "r", "method": "get_power", "args": {"x": [1, 2, {"y": "z"}]}}}))
    if r < 0.8:
        return bytes(env[: rng.randrange(len(env))])
    for _ in range(rng.randint(1, 4)):
        env[rng.randrange(len(env))] ^= 1 << rng.randrange(8)
    return bytes(env)


class Fuzzer:
    """Publishes from a thread of its own (paho's network thread and this one): hypothesis-generated
    messages in batches, each followed by a few random payloads, paced over ``seconds``."""

    def __init__(self, where: tuple[str, int], topics: Topics, seconds: float, seed: int) -> None:
        self.where, self.topics, self.seconds, self.seed = where, topics, seconds, seed
        self.sent = 0
        self.by_topic: dict[str, int] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:8]}")
        self.client.max_queued_messages_set(2000)
        self.client.reconnect_delay_set(0.05, 0.5)

    def publish(self, topic: str, payload: bytes, retain: bool = False, qos: int = 0) -> None:
        if len(payload) > MAX_PAYLOAD + 4096:
            # past the embedded broker's packet limit the connection is closed, not the message dropped: a few
            # of those are enough (random_payload sends them), the rest is cut to just over the payload limit
            payload = payload[: MAX_PAYLOAD + 1]
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            self.sent += 1
            self.by_topic[topic] = self.by_topic.get(topic, 0) + 1

    def run(self) -> None:
        try:
            self.client.connect(*self.where, keepalive=30)
            self.client.loop_start()
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                self.client.disconnect()
                self.client.loop_stop()
            self.done.set()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        tgs = targets(self.topics)
        bodies = examples(self.topics.robot)
        start = time.monotonic()
        examples_n = max(20, int(self.seconds * 25))
        step = self.seconds / examples_n
        count = [0]

        @settings(max_examples=examples_n, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), derandomize=False)
        @given(st.lists(message(tgs, bodies), min_size=1, max_size=12), st.randoms(use_true_random=False))
        def batch(msgs: list[tuple[Target, bytes, bool]], r: random.Random) -> None:
            i = count[0]
            count[0] += 1
            if time.monotonic() - start > self.seconds * 1.5:
                return
            for tg, payload, retain in msgs:
                self.publish(tg.topic, payload, retain, qos=r.choice([0, 0, 1]))
            for _ in range(rng.randint(2, 8)):
                tg = rng.choice(tgs)
                payload = random_payload(rng, mutate=tg.harmless)
                self.publish(tg.topic, payload, tg.retain and rng.random() < 0.2)
            delay = start + (i + 1) * step - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        batch()


# ------------------------------------------------------------------------------------------- the wire

async def real_calls(robot: InprocRobot, stop: asyncio.Event, stats: dict[str, Any]) -> None:
    """A client with a session making real calls in a loop: every one must be answered."""
    async with robot.client() as c:
        left = c.resource("base/left", Motor)
        while not stop.is_set():
            t0 = time.monotonic()
            await left.set_power(0.1)
            await left.get_power()
            assert "value" in await c.call("main/health", "get_readings", timeout=5)
            assert "value" in await c.call("cam/imager", "get_readings", timeout=5)
            await c.call("base/right", "is_moving", timeout=5)
            await c.rpc.call("main", "_sessions", "list", {}, timeout=5)
            stats["calls"] += 6
            stats["slowest"] = max(stats["slowest"], time.monotonic() - t0)
            await asyncio.sleep(0.02)
        await left.stop()


async def fuzz_the_wire(tmp_path: Path, kind: str, seconds: float, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    proc = psutil.Process()
    async with running_robot(tmp_path, kind, PARTS, security={"insecure": True},
                             upstream={"url": "mqtt://127.0.0.1:1"}, sessions={"heartbeat_window_s": 2.0}) as robot:
        from rich.console import Console

        from orchestrator.launcher.up import Launcher

        up = Launcher(robot.loaded, console=Console(file=io.StringIO()))  # `up`'s wire side, in this process
        up.urls = robot.loaded.config.broker.client_urls()
        await up._start_monitor()
        stop = asyncio.Event()
        stats: dict[str, Any] = {"calls": 0, "slowest": 0.0}
        caller = asyncio.create_task(real_calls(robot, stop, stats))
        try:
            await asyncio.sleep(1.0)  # warm: every part, the SDK and `up` subscribed and talking
            rss_before = proc.memory_info().rss
            # the fuzzer runs in a process of its own: its memory (hypothesis keeps what it generated) is not
            # the parts', and it gets a core of its own
            argv = [sys.executable, __file__, robot.where[0], str(robot.where[1]), robot.loaded.config.robot,
                    str(seconds), str(SEED)]
            fuzzer = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                          stderr=asyncio.subprocess.PIPE)
            t0 = time.monotonic()
            try:
                while fuzzer.returncode is None:
                    assert not caller.done(), f"the real calls stopped: {caller.exception()!r}"
                    assert time.monotonic() - t0 < seconds * 2 + 30, "the fuzzer did not finish (hang?)"
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(fuzzer.wait(), 0.2)
            finally:
                if fuzzer.returncode is None:
                    fuzzer.kill()
            out, err = await fuzzer.communicate()
            elapsed = time.monotonic() - t0
            assert fuzzer.returncode == 0, err.decode(errors="replace")[-3000:]
            report = json.loads(out.decode().strip().splitlines()[-1])
            assert report["error"] is None, report["error"]
            await asyncio.sleep(1.0)  # what was sent is processed
            assert not caller.done(), f"the real calls stopped: {caller.exception()!r}"
            rss_after = proc.memory_info().rss
            stop.set()
            await asyncio.wait_for(caller, 10)
            # nothing crashed, nothing went offline, nobody shut down
            main = robot.parts["main"]
            for p in robot.parts.values():
                assert p.state == PartStateName.RUNNING, p.name
                assert not p._stop_requested.is_set(), p.name
                assert p.client.connections == 1, f"part {p.name} lost its connection"
            assert all(main.liveness.status(p).online for p in ("base", "cam")), main.liveness.snapshot()
            assert main.robot_status().state == "running"
            assert not up._shutdown.is_set() and up.timeline is None
            async with robot.client(sessions=False) as fresh:  # a client that connects now, past retained garbage
                assert await fresh.call("base/left", "get_power") == 0.0
            refused = {p.name: p.refusals.total for p in robot.parts.values()}
        finally:
            stop.set()
            caller.cancel()
            with contextlib.suppress(BaseException):
                await caller
            assert up.monitor is not None
            await up.monitor.close()
    growth = (rss_after - rss_before) / MB
    traces = [r for r in caplog.records if r.exc_info and r.name.startswith("orchestrator")]
    longest = max((len(r.getMessage()) for r in caplog.records), default=0)
    with contextlib.suppress(Exception), capsys_disabled():
        print(f"\nfuzz[{kind}]: {report['sent']} messages to {report['topics']} topics in {elapsed:.1f} s; "
              f"{stats['calls']} real calls answered (slowest round {stats['slowest'] * 1000:.0f} ms); refused "
              f"{refused}, up {up.refusals.total}; RSS {rss_before / MB:.1f} -> {rss_after / MB:.1f} MB "
              f"({growth:+.1f}); {len(caplog.records)} log lines, longest {longest}")
    assert report["sent"] >= min(1000, 100 * seconds), report
    assert stats["calls"] >= 30, stats
    assert all(n > 0 for n in refused.values()), refused
    assert growth < 64, f"RSS grew {growth:.1f} MB"
    assert not traces, [r.getMessage() for r in traces[:5]]
    assert longest < 1000


_capsys: list[Any] = []


@contextlib.contextmanager
def capsys_disabled() -> Any:
    if _capsys:
        with _capsys[0].disabled():
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _keep_capsys(capsys: pytest.CaptureFixture[str]) -> Any:
    _capsys[:] = [capsys]
    yield
    _capsys.clear()


@pytest.mark.timeout(FUZZ_SECONDS * 2 + 90)
async def test_fuzz_every_topic_on_the_embedded_broker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await fuzz_the_wire(tmp_path, "amqtt", FUZZ_SECONDS, caplog)


@pytest.mark.timeout(FUZZ_SECONDS + 90)
async def test_fuzz_every_topic_on_mosquitto(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await fuzz_the_wire(tmp_path, "mosquitto", FUZZ_SECONDS / 3, caplog)


# ------------------------------------------------------------------------------------------- configs

GOOD: dict[str, Any] = {
    "robot": "r1",
    "broker": {"urls": ["mqtt://127.0.0.1:1883"], "keepalive_s": 2},
    "sessions": {"heartbeat_window_s": 2.0},
    "clients": [{"name": "operator"}, {"name": "viewer", "role": "viewer"}],
    "parts": [
        {"name": "main", "heartbeat_s": 0.2, "resources": [{"name": "m", "model": "orc:sim:motor"}]},
        {"name": "child", "parent": "main", "stop_deadline_s": 1.0,
         "resources": [{"name": "s", "model": "orc:sim:sensor", "depends_on": ["t"]},
                       {"name": "t", "model": "orc:sim:sensor"}]},
    ],
}


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(GOOD)


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        node = node[k]
    return node


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _copy(node: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(node))


# a value of the wrong type for the field at path: always invalid there
WRONG = {str: [[1], {"a": 1}, 3.5, True, None, "x" * 70_000, "a/b", "#", "+", "a b", ""],
         int: ["x", [1], {"a": 1}, 10**30, -(10**30), 1.5e300, None],
         float: ["x", [1], {"a": 1}, float("inf"), float("nan"), -1e300, None],
         bool: ["maybe", [1], {"a": 1}, 2, None],
         list: ["x", 5, {"a": 1}, [[[[[]]]]], None],
         dict: ["x", 5, [1, 2], None]}


def _invalid_for(path: tuple[Any, ...], value: Any) -> list[Any]:
    kind = type(value)
    choices = list(WRONG.get(kind, WRONG[str]))
    if path[-1] in ("parent",):  # a string, but no part of that name
        choices = ["nobody", "a/#", "+", "x" * 10_000, [1], {"a": 1}]
    if path[-1] == "name" or path[-1] == "robot":
        choices += ["a/b", "a#", "a+b", "x" * 65, "-x", ".", "é"]
    if path[-1] == "depends_on" or (len(path) > 1 and path[-2] == "depends_on"):
        choices = ["nope", "child/nope", "a/b/c", 5, [5], {"a": 1}]
    if path[-1] == "model":
        choices = ["motor", "a:b", "a:b:c:d", "::", "x:y:z", 5]
    if path[-1] == "urls" or (len(path) > 1 and path[-2] == "urls"):
        choices = ["http://x", "mqtt://:1", "mqtt://h:0", "mqtt://h:99999", "mqtt://h:-1", "x" * 5000, 5]
    return [c for c in choices if not (isinstance(c, float) and c != c and isinstance(value, str))]


@st.composite
def invalid_config(draw: st.DrawFn) -> bytes:
    """The text of a configuration that is invalid, by construction."""
    how = draw(st.sampled_from(["wrong type", "unknown key", "deep", "alias bomb", "duplicate key", "bad name",
                                "long string", "huge", "binary", "not a mapping", "missing", "cycle"]))
    cfg = _copy(GOOD)
    if how == "wrong type":
        path = draw(st.sampled_from(PATHS))
        _set(cfg, path, draw(st.sampled_from(_invalid_for(path, _get(GOOD, path)))))
    elif how == "unknown key":
        mappings = [p for p in [(), *PATHS] if isinstance(_get(cfg, p), dict) and (not p or p[-1] != "attributes")]
        where = _get(cfg, draw(st.sampled_from(mappings)))
        key = draw(st.text(min_size=1, max_size=30).filter(lambda k: k not in where and k.strip() == k))
        where[key] = draw(junk.filter(lambda v: not isinstance(v, float) or v == v))
    elif how == "deep":
        depth = draw(st.sampled_from([100, 1000, 20_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        field = draw(st.sampled_from(["robot", "parts", "broker", "x"]))
        return f"{field}: {opener * depth}1{closer * depth}\n".encode()
    elif how == "alias bomb":
        n = draw(st.integers(6, 12))
        text = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for i in range(1, n):
            text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n"
        where = draw(st.sampled_from(["robot", "clients", "parts"]))
        return (text + f"{where}: *a{n - 1}\n" + yaml.safe_dump({k: v for k, v in GOOD.items() if k != where})).encode()
    elif how == "duplicate key":
        text = yaml.safe_dump(cfg, sort_keys=False)
        lines = text.splitlines()
        keyed = [j for j, line in enumerate(lines) if ":" in line and not line.strip().startswith("-")]
        i = draw(st.sampled_from(keyed))
        return ("\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]) + "\n").encode()
    elif how == "bad name":
        target = draw(st.sampled_from([("robot",), ("parts", 0, "name"), ("parts", 1, "name"), ("clients", 0, "name"),
                                       ("parts", 0, "resources", 0, "name")]))
        bad = draw(st.text(min_size=1, max_size=20)) + draw(st.sampled_from(["/", "#", "+", " "]))
        _set(cfg, target, bad)
    elif how == "long string":
        target = draw(st.sampled_from([("robot",), ("parts", 0, "name"), ("parts", 1, "parent"),
                                       ("parts", 0, "resources", 0, "model"), ("broker", "urls", 0)]))
        _set(cfg, target, "x" * draw(st.sampled_from([65, 10_000, 200_000])))
    elif how == "huge":
        return b"robot: r\nparts: [" + b"{name: p}, " * draw(st.sampled_from([30_000, 100_000])) + b"]\n"
    elif how == "binary":
        return draw(st.binary(min_size=1, max_size=4096))
    elif how == "not a mapping":
        return draw(st.sampled_from([b"- a\n- b\n", b"just text\n", b"42\n", b"", b"~\n", b"[]\n", b"--- a\n--- b\n"]))
    elif how == "missing":
        del cfg[draw(st.sampled_from(["robot", "parts"]))]
    else:  # a parent cycle or a dependency cycle
        if draw(st.booleans()):
            cfg["parts"][0]["parent"] = "child"
        else:
            cfg["parts"][1]["resources"][1]["depends_on"] = ["s"]
    return yaml.safe_dump(cfg, sort_keys=draw(st.booleans()), allow_unicode=True).encode()


@pytest.mark.timeout(120)
def test_fuzz_the_config_loader(tmp_path: Path) -> None:
    runner = CliRunner()
    proc = psutil.Process()
    rss_before = proc.memory_info().rss
    tried = [0]
    slowest = [0.0]

    @settings(max_examples=int(os.environ.get("ORCHESTRATOR_FUZZ_CONFIGS", "150")), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(invalid_config())
    def one(text: bytes) -> None:
        path = tmp_path / f"c{tried[0]}.yaml"
        tried[0] += 1
        path.write_bytes(text)
        t0 = time.monotonic()
        res = runner.invoke(app, ["validate", str(path)], catch_exceptions=True)
        took = time.monotonic() - t0
        slowest[0] = max(slowest[0], took)
        out = res.output
        path.unlink()
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert res.exit_code == 2, out[:2000]
        assert str(path) in out, out[:2000]
        assert "Traceback" not in out
        assert len(out) < 40_000, f"{len(out)} characters of output"
        assert took < 5, f"{took:.1f} s"

    one()
    growth = (proc.memory_info().rss - rss_before) / MB
    with capsys_disabled():
        print(f"\nconfig fuzz: {tried[0]} invalid files, slowest {slowest[0]:.2f} s, RSS {growth:+.1f} MB")
    assert growth < 200, f"RSS grew {growth:.1f} MB"


@pytest.mark.timeout(120)
def test_a_few_invalid_configs_as_real_processes(tmp_path: Path) -> None:
    cases: dict[str, bytes] = {
        "deep.yaml": b"robot: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
        "bomb.yaml": b"a: &a [x,x,x,x,x,x,x,x,x]\n" + b"".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n".encode() for i in range(8))
        + b"robot: *i\n",
        "garbage.yaml": bytes(random.Random(7).randbytes(100_000)),
        "big.yaml": b"robot: r\n# " + b"x" * (1024 * 1024) + b"\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_bytes(text)
        res = subprocess.run([sys.executable, "-c", (
            "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True, "
            "timeout=60); print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.stderr.write(r.stdout + r.stderr)"), sys.executable, "-m", "orchestrator", "validate", str(path)],
            capture_output=True, text=True, timeout=90)
        code, rss_kb = res.stdout.split()
        assert code == "2", (name, res.stderr[-2000:])
        assert str(path) in res.stderr and "Traceback" not in res.stderr, (name, res.stderr[-2000:])
        assert int(rss_kb) < 250_000, (name, rss_kb)


def _fuzz_main(host: str, port: str, robot: str, seconds: str, seed: str) -> None:
    """``python tests/test_fuzz.py HOST PORT ROBOT SECONDS SEED``: the fuzzer of the wire tests."""
    f = Fuzzer((host, int(port)), Topics(robot), float(seconds), int(seed))
    f.run()
    print(json.dumps({"sent": f.sent, "topics": len(f.by_topic), "error": repr(f.error) if f.error else None}))


if __name__ == "__main__":
    _fuzz_main(*sys.argv[1:6])
