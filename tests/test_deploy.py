"""The deployment files: docker-compose.yml against the official Compose schema, and its part layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from brokers import listener_blocks

from orchestrator.config import load_config
from orchestrator.web.server import health_check

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_matches_the_official_schema() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_services_mirror_the_robot_topology() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    topo = load_config(ROOT / "examples" / "rover.yaml").topology
    services = compose["services"]
    for part in topo.parts:
        svc = services[part]
        assert svc["command"][:5] == ["part", "-c", "/config/rover.yaml", "--name", part]
        parent = topo.parent(part)
        deps = svc["depends_on"]
        # compose stops in reverse depends_on order: a child depending on its parent stops first
        assert (parent in deps) if parent else ("broker" in deps)
        grace = float(svc["stop_grace_period"].rstrip("s"))
        assert grace >= topo.stop_budget(part), (part, grace, topo.stop_budget(part))


def test_committed_compose_file_is_what_orchestrator_compose_generates() -> None:
    from orchestrator.launcher.compose import ComposeOptions, compose_header, generate

    gen = generate(load_config(ROOT / "examples" / "rover.yaml"), ComposeOptions(out_dir=ROOT))
    expected = gen.compose_text(compose_header("rover", "examples/rover.yaml"))
    assert (ROOT / "docker-compose.yml").read_text() == expected, \
        "docker-compose.yml is stale: run `orchestrator compose -c examples/rover.yaml -o docker-compose.yml`"
    assert gen.mosquitto_conf_path == ROOT / "broker_config" / "rover" / "mosquitto.conf"
    assert gen.mosquitto_conf_path.read_text() == gen.mosquitto_conf, "broker_config/rover/mosquitto.conf is stale"


def test_compose_command_writes_a_valid_file_for_any_robot(tmp_path: Path) -> None:
    # a robot of its own, deeper than the example, with a part that must never be restarted
    parts = [{"name": "hub", "stop_deadline_s": 4},
             {"name": "a", "parent": "hub", "restart": {"policy": "never"}},
             {"name": "b", "parent": "a", "stop_deadline_s": 7},
             {"name": "c", "parent": "b"}]
    cfg = tmp_path / "robots" / "mine.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({"robot": "mine", "parts": parts}))
    out = tmp_path / "deploy" / "compose.yaml"
    out.parent.mkdir()
    res = subprocess.run([sys.executable, "-m", "orchestrator", "compose", str(cfg), "-o", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                          str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = yaml.safe_load(out.read_text())
    topo = load_config(cfg).topology
    services = doc["services"]
    assert doc["name"] == "mine" and set(services) == {"broker", *topo.parts}
    for part in topo.parts:
        svc = services[part]
        parent = topo.parent(part)
        # children depend on a healthy parent: compose stops them first (bottom-up), starts them after
        assert svc["depends_on"] == {parent or "broker": {"condition": "service_healthy"}}
        # the health line the part keeps (a shell read, no Python per check), on a tmpfs of the part's user: a
        # restarted container's tmpfs is not writable by it otherwise (docker compose stop, then up)
        check = svc["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL" and "/run/orchestrator/health" in check[1]
        assert svc["environment"]["ORCHESTRATOR_HEALTH_FILE"] == "/run/orchestrator/health"
        assert svc["tmpfs"] == ["/run/orchestrator:size=64k,mode=0700,uid=10001,gid=10001"]
        assert svc["read_only"] is True
        assert float(svc["stop_grace_period"].rstrip("s")) > topo.stop_budget(part)
        assert svc["restart"] == ("no" if part == "a" else "on-failure:3")
        assert svc["logging"] == {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}
        assert svc["volumes"] == ["../robots:/config:ro"]
        assert svc["user"] == "10001:10001" and svc["environment"]["ORCHESTRATOR_CREDENTIALS"] == "/run/secrets"
        # a part gets the session key and its own password, nothing else
        assert svc["secrets"] == ["session.key", f"part.{part}.secret"]
    assert services["broker"]["secrets"] == ["passwd", "acl"]
    creds = "${ORCHESTRATOR_CREDENTIALS:-../robots/.orchestrator/mine/credentials}"
    assert doc["secrets"]["acl"] == {"file": f"{creds}/acl"}
    conf = (out.parent / "broker_config" / "mine" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "password_file /run/secrets/passwd" in conf
    assert "acl_file /run/secrets/acl" in conf


def test_a_big_robots_health_checks_stay_within_what_the_engine_can_run(tmp_path: Path) -> None:
    """Regression (bench deploy, 100 parts): each health check is a `docker exec` (about 45 ms of the engine's
    CPU whatever the command); 100 part containers checked every 2 s kept both cores busy and the robot never
    came up healthy. The robot's checks together stay near HEALTH_CHECKS_PER_S; `--health-interval` overrides."""
    from orchestrator.launcher.compose import HEALTH_CHECKS_PER_S, health_interval_s

    assert health_interval_s(5) == 2.0 and health_interval_s(16) == 2.0
    for n in (17, 50, 100, 400):
        assert n / health_interval_s(n) <= HEALTH_CHECKS_PER_S < n / (health_interval_s(n) - 1)
    parts = [{"name": "main"}] + [{"name": f"p{i}", "parent": "main"} for i in range(1, 100)]
    cfg = tmp_path / "big.yaml"
    cfg.write_text(yaml.safe_dump({"robot": "big", "parts": parts}))
    for extra, interval in (([], "13s"), (["--health-interval", "30"], "30s")):
        out = tmp_path / f"compose{len(extra)}.yaml"
        res = subprocess.run([sys.executable, "-m", "orchestrator", "compose", str(cfg), "-o", str(out), *extra],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        services = yaml.safe_load(out.read_text())["services"]
        assert {services[p["name"]]["healthcheck"]["interval"] for p in parts} == {interval}
    example = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert example["base"]["healthcheck"]["interval"] == "2s"  # a small robot: a child starts 2 s after its parent


def test_compose_with_tls_and_an_upstream_emits_the_tls_listener_and_the_bridge(tmp_path: Path) -> None:
    # the parts reach the broker over TLS only (certificates as secrets); the bridge block is a secret too
    cfg = tmp_path / "tlsbot.yaml"
    cfg.write_text(yaml.safe_dump({
        "robot": "tlsbot",
        "broker": {"urls": ["mqtts://broker:8883"], "tls": {"ca_file": "ca.crt"}},
        "upstream": {"url": "mqtt://cloud.example:1883"},
        "parts": [{"name": "hub"}, {"name": "leaf", "parent": "hub"}],
    }))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    cli("credentials", str(cfg))
    cli("certs", str(cfg), "--host", "broker", "--host", "127.0.0.1")
    store = tmp_path / ".orchestrator" / "tlsbot" / "credentials"
    (store / "upstream.secret").write_text("cloud-password\n")
    (store / "upstream.secret").chmod(0o600)
    out = tmp_path / "compose.yaml"
    cli("compose", str(cfg), "-o", str(out))
    res = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                          str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = yaml.safe_load(out.read_text())
    broker = doc["services"]["broker"]
    assert broker["secrets"] == ["passwd", "acl", "ca.crt", "broker.crt", "broker.key", "bridge.conf"]
    assert broker["ports"] == ["127.0.0.1:${ORCHESTRATOR_BROKER_TLS_PORT:-18883}:8883"]  # no plain port published
    creds = "${ORCHESTRATOR_CREDENTIALS:-./.orchestrator/tlsbot/credentials}"
    assert doc["secrets"]["bridge.conf"] == {"file": f"{creds}/mosquitto.d/bridge.conf"}
    assert doc["secrets"]["broker.key"] == {"file": f"{creds}/broker.key"}
    for part in ("hub", "leaf"):
        svc = doc["services"][part]
        assert svc["command"][-2:] == ["--broker", "mqtts://broker:8883"]
        assert svc["environment"]["ORCHESTRATOR_BROKER"] == "mqtts://broker:8883"
        assert svc["healthcheck"]["test"][0] == "CMD-SHELL"  # the health line: no broker URL to carry
        assert svc["secrets"] == ["session.key", f"part.{part}.secret", "ca.crt"]  # never the broker's key
    conf = (tmp_path / "broker_config" / "tlsbot" / "mosquitto.conf").read_text()
    # plain MQTT only inside the broker's container (its health check), TLS for the network
    assert "listener 1883 127.0.0.1\n" in conf and "listener 8883\n" in conf
    for line in ("cafile /run/secrets/ca.crt", "certfile /run/secrets/broker.crt", "keyfile /run/secrets/broker.key",
                 "include_dir /run/secrets", "allow_anonymous false"):
        assert line + "\n" in conf, line
    bridge = (store / "mosquitto.d" / "bridge.conf").read_text()
    assert "connection tlsbot-upstream\n" in bridge and "address cloud.example:1883\n" in bridge
    assert "remote_password cloud-password\n" in bridge
    assert (store / "mosquitto.d" / "bridge.conf").stat().st_mode & 0o077 == 0


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.mark.timeout(60)
def test_compose_with_web_serves_the_panel_and_publishes_the_brokers_websocket_listener(tmp_path: Path) -> None:
    # the example rover enables the panel (make demo serves it): its compose file has the `web` service
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    web = doc["services"]["web"]
    assert web["image"] == doc["services"]["main"]["image"]  # the parts' image
    assert web["command"] == ["web", "-c", "/config/rover.yaml", "--host", "0.0.0.0", "--port", "8080",
                              "--websocket-port", "${ORCHESTRATOR_BROKER_WS_PORT:-18831}"]
    # the page is told the broker's port as published for the browser: the same variable, the same default
    assert doc["services"]["broker"]["ports"] == ["127.0.0.1:${ORCHESTRATOR_BROKER_PORT:-18830}:1883",
                                                  "127.0.0.1:${ORCHESTRATOR_BROKER_WS_PORT:-18831}:9001"]
    assert web["ports"] == ["127.0.0.1:${ORCHESTRATOR_WEB_PORT:-8080}:8080"]
    assert web["depends_on"] == {"broker": {"condition": "service_healthy"}}
    # the standard library alone (tests/test_web_server.py runs this very line against a served panel)
    assert web["healthcheck"]["test"] == health_check(8080, "rover")
    assert web["healthcheck"]["test"][:4] == ["CMD", "python3", "-I", "-c"]
    assert web["user"] == "10001:10001" and web["read_only"] is True and web["cap_drop"] == ["ALL"]
    assert web["security_opt"] == ["no-new-privileges:true"]
    assert "secrets" not in web  # the page logs in with a credential the user types: the service holds none
    conf = (ROOT / "broker_config" / "rover" / "mosquitto.conf").read_text()
    assert listener_blocks(conf) == [["listener 1883"], ["listener 9001", "protocol websockets"]]

    # an external broker's WebSocket URL: its port is published, the page gets the URL itself; the listener
    # is the very one `orchestrator broker-config` writes (one code path: main_conf)
    cfg = tmp_path / "wsbot.yaml"
    cfg.write_text(yaml.safe_dump({
        "robot": "wsbot", "broker": {"urls": ["mqtt://broker:1883"]},
        "web": {"host": "0.0.0.0", "port": 8099, "websocket_url": "ws://robot.local:9101/"},
        "parts": [{"name": "hub"}, {"name": "leaf", "parent": "hub"}],
    }))
    _run_cli("credentials", "-c", str(cfg))
    out = tmp_path / "compose.yaml"
    _run_cli("compose", "-c", str(cfg), "-o", str(out))
    res = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                          str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = yaml.safe_load(out.read_text())
    assert set(doc["services"]) == {"broker", "hub", "leaf", "web"}
    assert doc["services"]["broker"]["ports"][1] == "0.0.0.0:${ORCHESTRATOR_BROKER_WS_PORT:-9101}:9001"
    assert doc["services"]["web"]["ports"] == ["0.0.0.0:${ORCHESTRATOR_WEB_PORT:-8099}:8080"]
    assert "--websocket-port" not in doc["services"]["web"]["command"]
    composed = (tmp_path / "broker_config" / "wsbot" / "mosquitto.conf").read_text()
    _run_cli("broker-config", "-c", str(cfg), "--out", str(tmp_path / "bc"), "--websocket-port", "9001")
    written = (tmp_path / "bc" / "mosquitto.conf").read_text()
    assert listener_blocks(composed)[-1] == listener_blocks(written)[-1] == ["listener 9001", "protocol websockets"]

    # turned off: no service, no listener
    cfg.write_text(cfg.read_text().replace("host: 0.0.0.0", "enabled: false\n  host: 0.0.0.0"))
    _run_cli("compose", "-c", str(cfg), "-o", str(out))
    assert "web" not in yaml.safe_load(out.read_text())["services"]
    assert "protocol websockets" not in (tmp_path / "broker_config" / "wsbot" / "mosquitto.conf").read_text()


@pytest.mark.timeout(30)
def test_compose_with_a_wss_panel_needs_broker_tls_and_uses_its_certificate(tmp_path: Path) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.launcher.compose import ComposeOptions, generate

    body = {"robot": "wssbot", "broker": {"urls": ["mqtt://broker:1883"]},
            "web": {"websocket_url": "wss://robot.local:9443/"}, "parts": [{"name": "hub"}]}
    cfg = tmp_path / "wssbot.yaml"
    cfg.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match=r"needs broker\.tls"):
        generate(load_config(cfg), ComposeOptions(out_dir=tmp_path))
    cfg.write_text(yaml.safe_dump({**body, "broker": {"urls": ["mqtts://broker:8883"], "tls": {"ca_file": "ca.crt"}}}))
    gen = generate(load_config(cfg), ComposeOptions(out_dir=tmp_path))
    # plain MQTT inside the container only; TLS and wss:// on every address (both published)
    assert listener_blocks(gen.mosquitto_conf)[0] == ["listener 1883 127.0.0.1"]
    assert listener_blocks(gen.mosquitto_conf)[-1] == [
        "listener 9001", "protocol websockets", "certfile /run/secrets/broker.crt", "keyfile /run/secrets/broker.key",
        "tls_version tlsv1.2"]
    assert gen.compose["services"]["broker"]["ports"] == ["127.0.0.1:${ORCHESTRATOR_BROKER_TLS_PORT:-18883}:8883",
                                                         "127.0.0.1:${ORCHESTRATOR_BROKER_WS_PORT:-9443}:9001"]
    # HTTPS with the panel's own certificate and key (never the broker's key, which belongs to mosquitto's uid)
    from orchestrator.launcher.compose import PART_UID, secret_owners

    web = gen.compose["services"]["web"]
    assert "--plain-http" not in web["command"]
    assert web["secrets"] == ["ca.crt", "web.crt", "web.key"]
    assert web["environment"] == {"ORCHESTRATOR_CREDENTIALS": "/run/secrets"}
    assert web["healthcheck"]["test"] == health_check(8080, "wssbot", cafile="/run/secrets/ca.crt")
    assert "https://127.0.0.1:8080/" in web["healthcheck"]["test"][-1]
    assert secret_owners(load_config(cfg))["web.key"] == PART_UID
