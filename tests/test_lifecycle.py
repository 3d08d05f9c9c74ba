"""Resources inside a part: degraded and retried, reload rebuilds exactly what changed, telemetry."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from inproc import client_for, running_robot

from orchestrator.errors import UnknownResource
from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import TelemetryReading
from orchestrator.resources.registry import Registry
from orchestrator.transport.client import Message

PARTS: list[dict[str, Any]] = [
    {"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor",
                                    "telemetry": {"period_s": 0.02}}]},
    {"name": "drive", "parent": "main", "resources": [
        {"name": "left", "model": "orc:sim:motor"},
        {"name": "right", "model": "orc:sim:motor"},
        {"name": "base", "model": "orc:sim:base", "attributes": {"left": "left", "right": "right"}},
        {"name": "broken", "model": "orc:sim:faulty", "attributes": {"fail_to_build": True}},
    ]},
    {"name": "nav", "parent": "main", "resources": [
        {"name": "follower", "model": "orc:sim:base", "attributes": {"left": "drive/left", "right": "drive/right"}},
        {"name": "lidar", "model": "orc:sim:sensor"},
    ]},
]


def test_registry_refuses_a_model_registered_twice() -> None:
    from orchestrator_sim import SimMotor, SimMotorAttributes

    reg = Registry()
    reg.register("acme:test:motor", SimMotor, SimMotorAttributes)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("acme:test:motor", SimMotor, SimMotorAttributes)


@pytest.mark.timeout(30)
async def test_a_resource_that_fails_to_build_is_degraded_and_the_part_runs(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "amqtt", PARTS) as (loaded, parts), \
            client_for(loaded) as client:
        listing = {r["name"]: r for r in (await client.resources())["drive"]}
        assert listing["broken"]["status"] == "degraded"
        assert "configured to fail to build" in listing["broken"]["reason"]
        assert listing["base"]["status"] == "ready"
        with pytest.raises(UnknownResource, match="degraded"):
            await client.call("drive/broken", "do_command", {"command": {}})
        assert parts["drive"].host.states["broken"].attempts >= 1
        assert await client.call("drive/left", "is_moving") is False


@pytest.mark.timeout(30)
async def test_a_resource_waiting_for_another_part_is_built_as_soon_as_that_part_runs(tmp_path: Path) -> None:
    """Regression (CI, test_a_primary_link_cut_...: KeyError 'chassis'): a resource on another part's motors
    was retried on its back-off only (up to ``retry_s`` late), so it was missing for a while after that part
    ran; now the part's running state wakes the retry."""
    from orchestrator.runtime.main import make_part

    async with running_robot(tmp_path, "amqtt", PARTS, start=False) as robot:
        started = []
        try:
            for name in ("main", "nav"):
                p = make_part(robot.loaded, name)
                if name == "nav":
                    p.host.first_retry_s = 60.0  # only the wake-up can build it within this test's bounds
                await p.start()
                started.append(p)
            nav = started[-1]
            assert nav.host.states["follower"].status == "degraded"
            assert "waiting for part drive" in (nav.host.states["follower"].reason or "")
            built = asyncio.Event()
            on_built = nav.host.on_built

            def seen(name: str, res: Any) -> None:
                if on_built is not None:
                    on_built(name, res)
                if name == "follower":
                    built.set()

            nav.host.on_built = seen
            drive = make_part(robot.loaded, "drive")
            await drive.start()
            started.insert(1, drive)
            await asyncio.wait_for(built.wait(), 5)
            assert nav.host.states["follower"].status == "ready"
        finally:
            for p in reversed(started):
                await asyncio.wait_for(p.close(), 10)


@pytest.mark.timeout(30)
async def test_reload_rebuilds_exactly_the_changed_resources_and_their_dependents(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "mosquitto", PARTS) as (loaded, parts):
        before = {(p, n): r for p, part in parts.items() for n, r in part.host.resources.items()}
        raw = yaml.safe_load(loaded.path.read_text())
        new = copy.deepcopy(raw)
        new["parts"][1]["resources"][0]["attributes"] = {"max_rpm": 42}  # drive/left changed
        new["parts"][2]["resources"].append({"name": "bumper", "model": "orc:sim:sensor"})  # added
        loaded.path.write_text(yaml.safe_dump(new))
        # the primary reloads and tells its children, which reload and tell theirs
        assert await parts["main"].reload("test") == ([], [])
        deadline = time.monotonic() + 10
        while any(p.last_reload is None for p in parts.values()):
            assert time.monotonic() < deadline, "not every part reloaded"
            await asyncio.sleep(0.01)
        by_part = {name: p.last_reload for name, p in parts.items()}
        # left changed; base depends on it locally, follower across parts
        assert by_part["drive"] is not None and sorted(by_part["drive"][0]) == ["base", "left"]
        assert by_part["nav"] == (["follower", "bumper"], [])
        assert by_part["main"] == ([], [])
        after = {(p, n): r for p, part in parts.items() for n, r in part.host.resources.items()}
        rebuilt = {k for k in before if before[k] is not after.get(k)}
        assert rebuilt == {("drive", "left"), ("drive", "base"), ("nav", "follower")}
        assert getattr(after[("drive", "left")], "attributes").max_rpm == 42  # noqa: B009
        assert ("nav", "bumper") in after


@pytest.mark.timeout(30)
async def test_an_invalid_file_is_not_reloaded(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "mosquitto", PARTS) as (loaded, parts):
        before = dict(parts["drive"].host.resources)
        loaded.path.write_text(loaded.path.read_text().replace("orc:sim:motor", "nope:no:motor"))
        assert await parts["drive"].reload("test") is None
        assert parts["drive"].host.resources == before


@pytest.mark.timeout(30)
async def test_sensor_telemetry_is_published_at_its_rate(tmp_path: Path) -> None:
    async with running_robot(tmp_path, "amqtt", PARTS) as (loaded, _), \
            client_for(loaded) as client:
        got: list[tuple[float, TelemetryReading]] = []
        enough = asyncio.Event()

        def on(msg: Message) -> None:
            got.append((time.monotonic(), decode(msg.payload).parse(TelemetryReading)))
            if len(got) >= 5:
                enough.set()

        await client.mqtt.subscribe(client.topics.telemetry("main", "health"), on, qos=0)
        await asyncio.wait_for(enough.wait(), 5)
        assert all(r.resource == "health" and set(r.readings) == {"value"} for _, r in got)
