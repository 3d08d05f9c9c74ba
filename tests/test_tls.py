"""TLS: parts and clients that verify the broker, on the embedded broker (under `up`) and on mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from inproc import running_robot
from robot import Up, robot_setup

from orchestrator import BrokerUnavailable, Motor
from orchestrator.client import RobotClient
from orchestrator.security.tls import make_dev_certs
from orchestrator.transport.client import MqttClient, TlsSettings

PARTS: list[dict[str, Any]] = [
    {"name": "main", "resources": [{"name": "health", "model": "orc:sim:sensor"}]},
    {"name": "base", "parent": "main", "resources": [{"name": "left", "model": "orc:sim:motor"}]},
]
TLS = {"ca_file": "ca.crt"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["amqtt", "mosquitto"])
async def test_a_robot_runs_over_tls_and_its_clients_verify_the_broker(tmp_path: Path, kind: str) -> None:
    async with running_robot(tmp_path, kind, PARTS, broker_tls=TLS) as robot:
        assert robot.broker.tls and robot.broker.url.startswith("mqtts://")
        async with robot.client() as client:
            motor = client.resource("base/left", Motor)
            await motor.set_power(0.25)
            assert await motor.get_power() == 0.25
        # the SDK with no configuration file: RobotClient.at verifies an mqtts:// broker with ca.crt of the
        # credentials directory (as the CLI's --robot/--broker does)
        from orchestrator.security.access import store_for

        store = store_for(robot.loaded.config, robot.loaded.path)
        async with RobotClient.at(robot.loaded.config.robot, robot.broker.url, credentials=store.directory,
                                  connect_timeout=10) as bare:
            assert bare.mqtt.tls is not None and bare.mqtt.tls.ca_file == str(store.directory / "ca.crt")
            await bare.call("base/left", "set_power", {"power": 0.3})
            assert await bare.call("base/left", "get_power", {}) == 0.3
        # a client that trusts another CA refuses the broker: nobody in the middle passes for it
        other = make_dev_certs(tmp_path / "other-ca", ["127.0.0.1"])[0]
        access = robot.client().mqtt
        stranger = MqttClient("stranger", [robot.where], username=access.username, password=access.password,
                              tls=TlsSettings(str(other)), connect_timeout=2)
        with pytest.raises(BrokerUnavailable):
            await stranger.start()
        # and a client that does not speak TLS to the TLS port gets nowhere
        plain = MqttClient("plain", [robot.where], username=access.username, password=access.password,
                           connect_timeout=2)
        with pytest.raises(BrokerUnavailable):
            await plain.start()


@pytest.mark.timeout(90)
async def test_up_serves_tls_and_the_cli_uses_it(tmp_path: Path) -> None:
    with robot_setup("amqtt", tmp_path / "robot.yaml", PARTS, broker_tls=TLS) as setup:
        up = Up(setup.cfg, tmp_path)
        try:
            res = None
            for _ in range(100):  # bounded: until `up` has started its parts
                res = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator", "status",
                                                               str(setup.cfg), "--json"], capture_output=True,
                                              text=True, timeout=30)
                states = json.loads(res.stdout)["parts"].values() if res.returncode == 0 else []
                if states and all(p["state"] == "running" for p in states):
                    break
                await asyncio.sleep(0.2)  # polling a CLI's output: no event to await
            assert res is not None and res.returncode == 0, res.stderr if res else ""
            assert "TLS on" in up.output()
            async with RobotClient.from_config(setup.cfg) as client:
                assert client.mqtt.tls is not None
                assert await client.resource("base/left", Motor).get_power() == 0.0
            up.terminate()
            assert await up.wait(30) == 0
        finally:
            up.close()


@pytest.mark.timeout(60)
async def test_mosquitto_runs_the_robot_from_the_configuration_broker_config_writes(tmp_path: Path) -> None:
    """`orchestrator broker-config` + `orchestrator certs`: mosquitto started on exactly that file serves the robot
    over TLS, with its identities and topic rights, and refuses anonymous clients."""
    import shutil
    import tempfile

    from brokers import free_port, mosquitto_path, wait_for_port

    port, tls_port = free_port(), free_port()
    with robot_setup("amqtt", tmp_path / "robot.yaml", PARTS) as setup:  # (its own broker is not started)
        text = setup.cfg.read_text()
        text = text.replace(f"embedded:\n    host: 127.0.0.1\n    port: {setup.where[1]}",
                            f"urls:\n  - mqtts://127.0.0.1:{tls_port}\n  tls:\n    ca_file: ca.crt")
        setup.cfg.write_text(text)
        cli = [sys.executable, "-m", "orchestrator"]
        # what a deployment mounts for mosquitto, readable by its user (pytest's tmp_path is not: 0700 parents)
        mounted = Path(tempfile.mkdtemp(prefix="orc-mosquitto-"))
        os.chmod(mounted, 0o755)
        for argv in (["certs", str(setup.cfg)],
                     ["broker-config", str(setup.cfg), "--out", str(tmp_path / "conf"), "--port", str(port),
                      "--tls-port", str(tls_port), "--mount", str(mounted)]):
            res = await asyncio.to_thread(subprocess.run, [*cli, *argv], capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stderr
        creds = setup.cfg.parent / ".orchestrator" / setup.robot / "credentials"
        for name in ("passwd", "acl", "ca.crt", "broker.crt", "broker.key"):
            shutil.copy(creds / name, mounted / name)
            (mounted / name).chmod(0o644)
        conf = tmp_path / "conf" / "mosquitto.conf"
        assert "allow_anonymous false" in conf.read_text()
        log = (tmp_path / "mosquitto.log").open("w")
        proc = await asyncio.to_thread(subprocess.Popen, [mosquitto_path(), "-c", str(conf)], stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_port("127.0.0.1", tls_port, proc=proc)
            except RuntimeError:
                raise AssertionError((tmp_path / "mosquitto.log").read_text()) from None
            from orchestrator.config import load_config
            from orchestrator.runtime.main import make_part

            loaded = load_config(setup.cfg)
            parts = [make_part(loaded, n) for n in loaded.topology.start_order()]
            try:
                for p in parts:
                    await p.start()
                async with RobotClient.from_config(loaded) as client:
                    await client.resource("base/left", Motor).set_power(0.5)
                    assert await client.resource("base/left", Motor).get_power() == 0.5
                anonymous = MqttClient("anon", [("127.0.0.1", port)], connect_timeout=2)
                with pytest.raises(BrokerUnavailable):
                    await anonymous.start()
            finally:
                for p in reversed(parts):
                    await p.close()
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
            shutil.rmtree(mounted, ignore_errors=True)
