"""The deployment files: docker-compose.yml against the official Compose schema, and its part layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.config import load_config

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
        assert svc["healthcheck"]["test"][:6] == ["CMD", "orchestrator", "health", "-c", "/config/mine.yaml", "--part"]
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
