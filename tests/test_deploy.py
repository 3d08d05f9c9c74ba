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
        assert svc["command"][:4] == ["part", "/config/rover.yaml", "--name", part]
        parent = topo.parent(part)
        deps = svc["depends_on"]
        # compose stops in reverse depends_on order: a child depending on its parent stops first
        assert (parent in deps) if parent else ("broker" in deps)
        grace = float(svc["stop_grace_period"].rstrip("s"))
        assert grace >= topo.stop_budget(part), (part, grace, topo.stop_budget(part))
