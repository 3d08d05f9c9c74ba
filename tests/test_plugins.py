"""Plugin packages: discovered through entry points, each installable on its own, real host readings."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from orchestrator.resources.base import Base, Motor, Sensor
from orchestrator.resources.registry import ENTRY_POINT_GROUP, Registry, default_registry

ROOT = Path(__file__).resolve().parent.parent


def test_every_plugin_package_declares_its_entry_point_and_is_installed() -> None:
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for pyproject in sorted((ROOT / "parts").glob("*/pyproject.toml")):
        meta = tomllib.loads(pyproject.read_text())
        eps = meta["project"]["entry-points"][ENTRY_POINT_GROUP]
        for name, value in eps.items():
            assert installed.get(name) == value, f"{pyproject.parent.name}: entry point {name} not installed"


def test_registry_loads_models_from_entry_points_with_their_kind() -> None:
    reg = Registry()
    reg.load_entry_points()
    assert not reg.load_errors
    assert reg.get("orc:sim:motor").kind is Motor
    assert reg.get("orc:sim:base").kind is Base
    assert reg.get("orc:host:system").kind is Sensor
    assert reg.get("orc:sim:base").plugin.startswith("plugin 'sim'")


def test_models_show_method_docs_as_plain_text_not_rest_markup() -> None:
    """Regression: ``orchestrator models`` printed docstrings raw (``:class:`~orchestrator.errors.UnknownMethod```
    and double back-quotes in the doc column)."""
    from orchestrator.resources.describe import describe_model

    for model in ("orc:sim:motor", "orc:dynamixel:servo"):
        docs = {m["name"]: m["doc"] for m in describe_model(default_registry().get(model))["methods"]}
        assert "UnknownMethod" in docs["do_command"]
        assert not [d for d in docs.values() if ":class:" in d or "``" in d], docs


def test_a_plugin_derives_its_dependencies_from_its_attributes() -> None:
    reg = default_registry().get("orc:sim:base")
    assert reg.implicit_dependencies({"left": "drive/l", "right": "r"}) == ["drive/l", "r"]


async def test_host_sensor_reads_the_real_machine() -> None:
    sensor = default_registry().get("orc:host:system").build("sys", {}, {})
    assert isinstance(sensor, Sensor)
    r = await sensor.get_readings()
    assert r["cpu_count"] >= 1
    assert 0 < r["memory_available_bytes"] <= r["memory_total_bytes"]
    assert r["uptime_s"] > 0
    assert 0.0 <= r["cpu_percent"] <= 100.0


async def test_host_sensor_cpu_percent_from_proc_stat(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
    (proc / "loadavg").write_text("0.5 0.4 0.3 1/100 42\n")
    (proc / "uptime").write_text("123.4 200.0\n")
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    sensor = default_registry().get("orc:host:system").build("sys", {"proc": str(proc),
                                                                       "thermal": str(tmp_path / "none")}, {})
    (proc / "stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # 100 busy of 200 ticks
    r = await sensor.get_readings()
    assert r["cpu_percent"] == pytest.approx(50.0)
    assert r["memory_available_bytes"] == 250 * 1024
    assert r["load_1m"] == 0.5
