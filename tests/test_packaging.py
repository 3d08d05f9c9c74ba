"""Our distributions install from local wheels only, under our own name, and nothing foreign comes in.

The distribution is ``robot-orchestrator`` (the import package stays ``orchestrator``): the name
``orchestrator`` on PyPI belongs to an unrelated project, and a plugin that depended on it would
pull that project into a fresh environment.  Each plugin's wheel is installed with the core into an
environment of its own with ``--no-index``: only the wheelhouse (``docker/images.sh wheelhouse``,
the same one the images are built from) can supply anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = {"sim": "orc:sim:motor", "host": "orc:host:system", "dynamixel": "orc:dynamixel:servo"}

pytestmark = pytest.mark.timeout(300)

# Run inside the fresh environment: what is installed, who owns the `orchestrator` package, which
# models the entry points give.
PROBE = r"""
import json, sys
from importlib.metadata import distributions, distribution
import orchestrator
from orchestrator.resources import default_registry
own = distribution("robot-orchestrator")
files = {str(f) for f in (own.files or [])}
print(json.dumps({
    "installed": sorted(d.metadata["Name"].lower().replace("_", "-") for d in distributions()),
    "owner_has_init": "orchestrator/__init__.py" in files,
    "file": orchestrator.__file__,
    "version": orchestrator.__version__,
    "dist_version": own.version,
    "models": default_registry().models(),
    "prefix": sys.prefix,
}))
"""


def wheel_name(path: Path) -> str:
    return path.name.split("-", 1)[0].lower().replace("_", "-")


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    env = {**os.environ, "VENV": sys.prefix}
    res = subprocess.run([str(ROOT / "docker" / "images.sh"), "wheelhouse"], capture_output=True, text=True,
                         timeout=240, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-4000:]
    return ROOT / "build" / "wheelhouse"


def install_alone(wheelhouse: Path, plugin: str, where: Path, *, requirement: str | None = None,
                  more_wheels: Path | None = None) -> dict[str, object]:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
    python = where / "bin" / "python"
    links = [wheelhouse / "deps", wheelhouse / "local", *([more_wheels] if more_wheels is not None else [])]
    # The test's own pip drives the fresh environment (--python): no pip is installed into it.
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile", "--no-index",
         "--no-cache-dir", *(f"--find-links={link}" for link in links), requirement or f"robot-orchestrator-{plugin}"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_EXTRA_INDEX_URL": ""},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=where)
    assert probe.returncode == 0, probe.stderr
    out: dict[str, object] = json.loads(probe.stdout)
    cli = subprocess.run([str(where / "bin" / "orchestrator"), "--version"], capture_output=True, text=True,
                         timeout=60, cwd=where)
    out["cli"] = cli.stdout + cli.stderr
    return out


def test_each_plugin_installs_with_the_core_from_local_wheels_only(wheelhouse: Path, tmp_path: Path) -> None:
    ours = {wheel_name(w) for w in (wheelhouse / "local").glob("*.whl")}
    deps = {wheel_name(w) for w in (wheelhouse / "deps").glob("*.whl")}
    assert ours == {"robot-orchestrator", *(f"robot-orchestrator-{p}" for p in PLUGINS)}
    assert "orchestrator" not in deps, "the unrelated PyPI project 'orchestrator' is in the wheelhouse"
    with ThreadPoolExecutor(len(PLUGINS)) as pool:
        results = dict(zip(PLUGINS, pool.map(lambda p: install_alone(wheelhouse, p, tmp_path / p), PLUGINS),
                           strict=True))
    for plugin, got in results.items():
        installed = set(got["installed"])  # type: ignore[call-overload]
        assert "orchestrator" not in installed, f"{plugin}: the unrelated 'orchestrator' came in"
        assert {"robot-orchestrator", f"robot-orchestrator-{plugin}"} <= installed
        assert not installed & (ours - {"robot-orchestrator", f"robot-orchestrator-{plugin}"}), \
            f"{plugin} pulled another plugin: {sorted(installed)}"
        foreign = installed - ours - deps
        assert not foreign, f"{plugin}: installed from outside the wheelhouse: {sorted(foreign)}"
        assert got["owner_has_init"], f"{plugin}: the orchestrator package is not robot-orchestrator's"
        assert str(got["file"]).startswith(str(tmp_path / plugin)), got["file"]
        assert got["version"] == got["dist_version"]
        assert PLUGINS[plugin] in got["models"], (plugin, got["models"])  # type: ignore[operator]
        assert str(got["version"]) in str(got["cli"]), got["cli"]


def test_a_plugin_made_by_plugin_new_installs_with_the_core_from_local_wheels_only(wheelhouse: Path,
                                                                                  tmp_path: Path) -> None:
    """What a plugin author publishes: the template's wheel, whose dependency is our distribution, into a
    fresh environment with nothing but the wheelhouse and that wheel."""
    made = subprocess.run([sys.executable, "-m", "orchestrator", "plugin", "new", "acme-fans", "--dir",
                           str(tmp_path / "acme-fans")], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "wheels"), str(tmp_path / "acme-fans")],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert built.returncode == 0, built.stdout + built.stderr
    got = install_alone(wheelhouse, "acme-fans", tmp_path / "env", requirement="acme-fans",
                        more_wheels=tmp_path / "wheels")
    installed = set(got["installed"])  # type: ignore[call-overload]
    ours = {wheel_name(w) for w in (wheelhouse / "local").glob("*.whl")}
    deps = {wheel_name(w) for w in (wheelhouse / "deps").glob("*.whl")}
    assert "orchestrator" not in installed and {"robot-orchestrator", "acme-fans"} <= installed, sorted(installed)
    assert not installed - ours - deps - {"acme-fans"}, sorted(installed)
    assert not installed & (ours - {"robot-orchestrator"}), f"the template pulled a plugin: {sorted(installed)}"
    assert got["owner_has_init"] and {"acme:fans:motor", "acme:fans:sensor"} <= set(got["models"])  # type: ignore[call-overload]


def test_every_pyproject_depends_on_our_distribution_name_never_on_orchestrator() -> None:
    import tomllib

    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert core["name"] == "robot-orchestrator"
    for pyproject in sorted((ROOT / "parts").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        assert project["name"].startswith("robot-orchestrator-"), pyproject
        names = [d.split(";")[0].split("[")[0].strip() for d in project.get("dependencies", [])]
        bare = [n.split(">")[0].split("=")[0].split("<")[0].strip() for n in names]
        assert "robot-orchestrator" in bare and "orchestrator" not in bare, (pyproject, names)
