"""Offline operation: a robot takes its configuration from its upstream, signed by the fleet, caches it,
and restarts from the cache (authenticating on its local broker) while the upstream is unreachable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloud import FLEET_PASSWORD, FLEET_USER, PARTS, cloud_robot, running
from robot import Up

from orchestrator.protocol.codec import decode
from orchestrator.protocol.messages import Counters
from orchestrator.security.signed import (
    SignatureInvalid,
    cache_paths,
    load_effective,
    new_fleet_key,
    read_cache,
    sign,
    verify,
    write_cache,
)
from orchestrator.transport.client import MqttClient

CONFIG = "robot: r1\nparts:\n  - name: main\n"


# -- the signature -----------------------------------------------------------------------------------

def test_a_signed_configuration_is_believed_only_from_the_fleet_for_its_robot_and_unexpired(tmp_path: Path) -> None:
    priv, pub = new_fleet_key(tmp_path / "fleet")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    good = sign(CONFIG, "r1", 3, priv.read_bytes())
    verify(good, pub.read_bytes(), "r1")
    other_priv, _ = new_fleet_key(tmp_path / "other")
    with pytest.raises(SignatureInvalid, match="bad signature"):
        verify(sign(CONFIG, "r1", 3, other_priv.read_bytes()), pub.read_bytes(), "r1")
    with pytest.raises(SignatureInvalid, match="bad signature"):
        verify(good.model_copy(update={"config": CONFIG + "  - name: x\n    parent: main\n"}), pub.read_bytes(), "r1")
    with pytest.raises(SignatureInvalid, match="bad signature"):
        verify(good.model_copy(update={"serial": 99}), pub.read_bytes(), "r1")
    with pytest.raises(SignatureInvalid, match="not 'r2'"):
        verify(good, pub.read_bytes(), "r2")
    expired = sign(CONFIG, "r1", 4, priv.read_bytes(), not_after=time.time() - 1)
    with pytest.raises(SignatureInvalid, match="expired"):
        verify(expired, pub.read_bytes(), "r1")


def test_a_tampered_cache_is_not_used(tmp_path: Path) -> None:
    priv, pub = new_fleet_key(tmp_path / "fleet")
    cfg = tmp_path / "robot.yaml"
    signed = sign(CONFIG, "r1", 1, priv.read_bytes())
    yaml_path = write_cache(cfg, signed)
    assert stat.S_IMODE(yaml_path.stat().st_mode) == 0o600
    assert read_cache(cfg, pub.read_bytes(), "r1") is not None
    yaml_path.write_text(CONFIG + "  - name: extra\n    parent: main\n")
    assert read_cache(cfg, pub.read_bytes(), "r1") is None


# -- a robot that takes its configuration from the upstream ------------------------------------------

RESTARTS = {"policy": "always", "max_restarts": 5, "window_s": 60, "backoff_s": 0.05}


async def _resources(setup: Any) -> dict[str, list[str]]:
    r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator", "resources", "-c",
                                                 str(setup.cfg), "--json"], capture_output=True, text=True,
                                timeout=30)
    assert r.returncode == 0, r.stderr
    return {p: [x["name"] for x in rs] for p, rs in json.loads(r.stdout).items()}


async def _publish(upstream: tuple[str, int], signed_json: bytes, topic: str) -> None:
    async with MqttClient(f"fleet.{os.getpid()}", [upstream], username=FLEET_USER, password=FLEET_PASSWORD) as c:
        await c.publish(topic, signed_json, qos=1, retain=True, timeout=5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_a_part_restarts_from_the_cached_signed_configuration_while_the_upstream_is_unreachable(
        tmp_path: Path, kind: str) -> None:
    parts: list[dict[str, Any]] = [PARTS[0], {**PARTS[1], "restart": RESTARTS}]
    with cloud_robot(kind, tmp_path, parts, upstream={"signed_config": True}, start=False) as cloud:
        setup = cloud.setup
        creds = setup.cfg.parent / ".orchestrator" / setup.robot / "credentials"
        priv, _ = new_fleet_key(creds)  # the test is the fleet: its public key is in the robot's credentials
        fleet_key = tmp_path / "fleet.key"
        os.replace(priv, fleet_key)
        cloud.up = Up(setup.cfg, tmp_path)
        await running(cloud)
        topic = setup.watcher().topics.upstream_config()
        # the fleet's configuration adds a motor to base: cached beside the file, the robot reloads
        data = yaml.safe_load(setup.cfg.read_text())
        data["parts"][1]["resources"].append({"name": "right", "model": "orc:sim:motor"})
        new_text = yaml.safe_dump(data, sort_keys=False)
        assert load_effective(setup.cfg).origin == "file"  # nothing cached yet: the file itself
        await _publish(cloud.upstream, sign(new_text, setup.robot, 1, fleet_key.read_bytes()).to_json(), topic)
        deadline = time.monotonic() + 30
        while "right" not in (await _resources(setup)).get("base", []):
            assert time.monotonic() < deadline, cloud.up.output()
        assert cache_paths(setup.cfg)[0].read_text() == new_text
        # a configuration signed by anyone else is refused, counted, and changes nothing
        forged_priv, _ = new_fleet_key(tmp_path / "forger")
        forged = sign(new_text.replace("name: right", "name: rogue"), setup.robot, 2, forged_priv.read_bytes())
        await _publish(cloud.upstream, forged.to_json(), topic)
        access = setup.access("client", "watcher")
        async with MqttClient(f"{setup.robot}.count", [setup.where], username=access.username,
                              password=access.password) as c, \
                c.messages(setup.watcher().topics.part_counters("main")) as stream:
            deadline = time.monotonic() + 15
            while True:
                counters = decode((await stream.get(timeout=15)).payload).parse(Counters)
                if counters.counts.get("config:not_believed"):
                    break
                assert time.monotonic() < deadline
        assert load_effective(setup.cfg).origin == "upstream serial 1"
        # the upstream goes away; base crashes and `up` restarts it: it authenticates on the local broker and
        # starts from the cache (it has "right", which only the signed configuration has)
        cloud.proxy.stall()
        cloud.proxy.refuse = True
        async with setup.watcher() as w:
            await w.until(lambda: w.state("base") == "running", 10, "base running")
            birth, st = w.states["base"]
            assert st.pid is not None
            os.kill(st.pid, signal.SIGKILL)
            await w.until(lambda: w.states["base"][0] > birth and w.state("base") == "running", 30, "base back")
            assert "right" in w.states["base"][1].resources
        cloud.up.terminate()
        assert await cloud.up.wait(30) == 0
        cloud.up.close()
        # and the whole robot starts again without its upstream, from the cache
        (tmp_path / "again").mkdir()
        again = cloud.up = Up(setup.cfg, tmp_path / "again")  # closed by cloud_robot, also on failure
        try:
            async with setup.watcher() as w:
                await w.all_running(["main", "base"], timeout=30)
                assert "right" in w.states["base"][1].resources
            assert "the fleet's signed configuration (upstream serial 1)" in again.output()
            again.terminate()
            assert await again.wait(30) == 0
        finally:
            again.close()
