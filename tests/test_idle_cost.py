"""What an idle robot does not pay for (issue 10 item 0), and that the detection it keeps still works."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from brokers import BrokerInfo
from inproc import running_robot

from orchestrator.protocol.messages import LivenessReport
from orchestrator.runtime.liveness import Liveness
from orchestrator.runtime.part import BEAT_SLACK, next_beat_delay
from orchestrator.transport.client import Message, MqttClient


def test_heartbeats_go_out_on_the_shared_beat() -> None:
    assert next_beat_delay(0.2, 100.05) == pytest.approx(0.15)
    assert next_beat_delay(0.2, 100.19) == pytest.approx(0.21)  # too close: the next beat but one
    for now in (0.0, 0.013, 7.77, 1e9 + 0.123):
        d = next_beat_delay(0.2, now)
        assert BEAT_SLACK * 0.2 <= d <= (1 + BEAT_SLACK) * 0.2 + 1e-9
        assert (now + d) / 0.2 == pytest.approx(round((now + d) / 0.2), abs=1e-6)


def test_the_liveness_pulse_dict_is_a_valid_report_and_jitter_follows_the_senders_clock() -> None:
    lv = Liveness([("a", 0.2, 3)])
    lv.on_heartbeat("a", 5, now=10.0, sent=1.0)
    for i, arrival in enumerate([10.25, 10.25, 10.7]):  # read in bunches: arrivals say nothing of the sender
        lv.on_heartbeat("a", 5, now=arrival, sent=1.2 + 0.2 * i)
    report = LivenessReport.model_validate({"at": 11.0, "parts": lv.pulse_dict(now=11.0)})
    assert report.parts["a"].online and report.parts["a"].jitter_s < 0.001
    assert report.parts["a"].age_s == pytest.approx(0.3)


@pytest.mark.timeout(30)
async def test_batched_reads_deliver_every_message_in_order_in_few_batches(broker: BrokerInfo) -> None:
    topic, n = f"idle/{uuid.uuid4().hex[:8]}/x", 200
    got: list[int] = []
    batches = 0
    done = asyncio.Event()

    def on(msg: Message) -> None:
        got.append(int(msg.payload))
        if len(got) == n:
            done.set()

    def batch() -> None:
        nonlocal batches
        batches += 1

    where = [(broker.host, broker.port)]
    async with MqttClient(f"sub-{uuid.uuid4().hex[:6]}", where, batch_reads_s=0.05) as sub:
        sub.after_batch = batch
        await sub.subscribe(topic, on, qos=1)
        async with MqttClient(f"pub-{uuid.uuid4().hex[:6]}", where) as pub:
            for i in range(n):
                pub.publish_nowait(topic, b"%d" % i, qos=1)
            await asyncio.wait_for(done.wait(), 20)
    assert got == list(range(n))
    assert batches < n / 4


def _three_levels() -> list[dict[str, Any]]:
    return [{"name": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]},
            {"name": "mid", "parent": "main", "resources": [{"name": "m", "model": "orc:sim:motor"}]},
            {"name": "leaf", "parent": "mid", "stop_deadline_s": 0.5,
             "resources": [{"name": "m", "model": "orc:sim:motor"}]}]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_a_parent_hears_its_childrens_heartbeats_only_once_stopping(tmp_path: Path, kind: str) -> None:
    async with running_robot(tmp_path, kind, _three_levels()) as robot:
        mid, main = robot.parts["mid"], robot.parts["main"]
        hb = mid.topics.part_heartbeat("leaf")
        assert hb not in mid.client._subs
        assert hb not in main.client._subs  # the primary hears every part's on its supervision connection
        deadline = time.monotonic() + 5
        while main.liveness.status("leaf").last_heartbeat is None or \
                time.time() - (main.liveness.status("leaf").last_heartbeat or 0) > 0.4:
            assert time.monotonic() < deadline, "the primary hears no heartbeat of the leaf"
            await asyncio.sleep(0.05)
        mid.follow_children()
        before = mid.children_liveness.status("leaf").last_heartbeat or 0.0
        while (mid.children_liveness.status("leaf").last_heartbeat or 0.0) <= before + 0.2:
            assert time.monotonic() < deadline + 5, "the parent hears no heartbeat of its child once following"
            await asyncio.sleep(0.05)
        assert hb in mid.client._subs


@pytest.mark.timeout(60)
async def test_the_primary_marks_a_silent_part_offline_within_the_bound_with_batched_reads(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "mosquitto", _three_levels()) as robot:
        main, leaf = robot.parts["main"], robot.parts["leaf"]
        deadline = time.monotonic() + 5
        while not main.liveness.status("leaf").online:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        beat = next(t for t in leaf._tasks if t.get_name().endswith(".heartbeat"))
        beat.cancel()  # the part goes silent (as frozen), its connection stays up
        silent_at = time.time()
        cfg = leaf.part_config
        bound = 1.5 * cfg.heartbeat_s * cfg.heartbeat_misses
        while main.liveness.status("leaf").online:
            assert time.time() - silent_at < bound + 1.0, "not offline within the bound"
            await asyncio.sleep(0.01)
        assert time.time() - silent_at <= bound + 0.25
