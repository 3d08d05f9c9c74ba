"""`orchestrator plugin new`: the package it writes installs, its own tests pass, `models` lists it,
and a robot that uses it runs under `orchestrator up` and answers calls.

The package goes into an environment of its own (a venv that sees this one's packages through
`site.addsitedir`, so nothing is downloaded), never into the test's environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from brokers import free_port

pytestmark = pytest.mark.timeout(180)


def run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the plugin's directory, the python of an environment with it installed in editable mode)."""
    root = tmp_path_factory.mktemp("plugin")
    res = run([sys.executable, "-m", "orchestrator", "plugin", "new", "acme-fans"], cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "acme:fans:motor" in res.stdout, res.stdout
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root).check_returncode()
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    ours = sysconfig.get_paths()["purelib"]
    (Path(purelib.stdout.strip()) / "with_test_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    res = run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
               "--no-build-isolation", "--no-index", "-e", str(root / "acme-fans")], cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    return root / "acme-fans", python


def test_plugin_new_writes_a_package_whose_own_tests_pass(plugin_env: tuple[Path, Path]) -> None:
    plugin, python = plugin_env
    assert (plugin / "pyproject.toml").is_file() and (plugin / "acme_fans" / "actuator.py").is_file()
    res = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=plugin)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 passed" in res.stdout, res.stdout


def test_models_lists_the_new_plugin_with_its_package_attributes_and_methods(plugin_env: tuple[Path, Path]) -> None:
    plugin, python = plugin_env
    res = run([str(python), "-m", "orchestrator", "models", "--json"], cwd=plugin)
    assert res.returncode == 0, res.stderr
    models = {m["model"]: m for m in json.loads(res.stdout)}
    motor = models["acme:fans:motor"]
    assert motor["package"] == "acme-fans" and motor["version"] == "0.1.0"
    assert motor["kind"] == "Motor" and motor["api"] == "orc:component:motor"
    assert motor["attributes"]["properties"]["max_rpm"]["default"] == 100.0
    assert motor["attributes"]["additionalProperties"] is False
    methods = {m["name"]: m for m in motor["methods"]}
    assert methods["set_power"]["actuating"] and not methods["get_power"]["actuating"]
    assert methods["go_for"]["args"][0] == {"name": "rpm", "type": "float", "required": True,
                                            "schema": {"type": "number"}}
    assert models["acme:fans:sensor"]["kind"] == "Sensor"
    # the configuration's schema checks the new model's attributes
    schema = json.loads(run([str(python), "-m", "orchestrator", "schema"], cwd=plugin).stdout)
    branches = schema["$defs"]["ResourceConfig"]["allOf"]
    assert any(b["if"]["properties"]["model"]["const"] == "acme:fans:motor" for b in branches)


def test_a_robot_using_the_new_plugin_runs_under_up(plugin_env: tuple[Path, Path]) -> None:
    plugin, python = plugin_env
    cli = [str(python), "-m", "orchestrator"]
    assert run([*cli, "validate", "example.yaml"], cwd=plugin).returncode == 0
    run([*cli, "credentials", "example.yaml"], cwd=plugin).check_returncode()
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    up = subprocess.Popen([*cli, "up", "example.yaml", "--port", str(port)], cwd=plugin, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    seen: list[str] = []
    try:
        assert up.stdout is not None
        while not any("running" in line and "parts" in line for line in seen):
            line = up.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
        res = run([*cli, "call", "main/counter", "get_readings", "-c", "example.yaml", "--broker", url], cwd=plugin)
        assert res.returncode == 0 and '"value"' in res.stdout, res.stdout + res.stderr
        # what the part lists: the API and the methods (with nothing but the listing: no plugin needed)
        res = run([*cli, "resources", "-c", "example.yaml", "--broker", url, "--json"], cwd=plugin)
        assert res.returncode == 0, res.stderr
        wheel = next(r for r in json.loads(res.stdout)["main"] if r["name"] == "wheel")
        assert wheel["api"] == "orc:component:motor", wheel
        listed = {m["name"]: m for m in wheel["methods"]}
        assert listed["go_for"]["actuating"] and [a["name"] for a in listed["go_for"]["args"]] == ["rpm", "revolutions"]
        res = run([*cli, "resources", "-c", "example.yaml", "--broker", url, "--methods"], cwd=plugin)
        assert res.returncode == 0 and "set_power" in res.stdout and "orc:component:motor" in res.stdout, res.stdout
        res = run([*cli, "call", "main/wheel", "go_for", "--args", '{"rpm": 60, "revolutions": 0.5}',
                   "-c", "example.yaml", "--broker", url], cwd=plugin)
        assert res.returncode == 0, res.stdout + res.stderr
        res = run([*cli, "call", "main/wheel", "set_power", "--args", '{"power": 3}', "-c", "example.yaml",
                   "--broker", url], cwd=plugin)
        assert res.returncode == 1 and "invalid_argument" in res.stderr, res.stdout + res.stderr
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert up.returncode == 0, "".join(seen) + out
