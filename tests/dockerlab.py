"""Docker for the tests: an engine and the images (installed or built when missing, never skipped),
and Compose v2 projects that are removed whole after each test, passed or failed.

- :func:`docker_lab` (session): runs ``docker/images.sh`` once (engine, Compose v2, wheelhouse, base,
  mosquitto and project images: seconds when all exist), gives a :class:`DockerLab` with the image
  names and the compose binary; stops the engine at the end only if this session started it.
  The hook :func:`pytest_collection_modifyitems` (imported by conftest.py) gives the first test that
  uses it the time of a cold build.
- :func:`compose` (function): ``compose(project_dir, *args)`` runs the Compose v2 binary in
  ``project_dir`` under a project name unique to the test; the compose file there can name the
  images as ``${ORCHESTRATOR_IMAGE}`` and ``${ORCHESTRATOR_MOSQUITTO_IMAGE}``.  At teardown every
  container, network and volume of that project is removed (:meth:`ComposeProject.remove`).

Containers are reached only through ports published on 127.0.0.1 (see :func:`brokers.free_port`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "ComposeProject",
    "DockerLab",
    "compose",
    "docker",
    "docker_lab",
    "engine_answers",
    "pytest_collection_modifyitems",
]

ROOT = Path(__file__).resolve().parent.parent
IMAGES_SH = ROOT / "docker" / "images.sh"
ENGINE_SH = ROOT / "docker" / "engine.sh"
# A cold build (engine install, debootstrap, wheelhouse, images) takes about 2 minutes here.
BUILD_TIMEOUT = 1200.0
DOCKER_TIMEOUT = 120.0
PROJECT_LABEL = "com.docker.compose.project"


@dataclasses.dataclass(frozen=True)
class DockerLab:
    """What ``docker/images.sh`` built, as it printed it."""

    image: str
    base_image: str
    mosquitto_image: str
    wheelhouse: Path
    compose_bin: Path

    def env(self) -> dict[str, str]:
        """The environment for docker compose: image names a compose file can interpolate."""
        return {**os.environ, "ORCHESTRATOR_IMAGE": self.image, "ORCHESTRATOR_MOSQUITTO_IMAGE": self.mosquitto_image}


def docker(*args: str, timeout: float = DOCKER_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the docker client; on ``check`` a failure raises with its output."""
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


def engine_answers() -> bool:
    try:
        return docker("info", "--format", "{{.ServerVersion}}", timeout=15, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_images() -> DockerLab:
    """``docker/images.sh``: install/start/build whatever is missing; fail (never skip) if it cannot."""
    env = {**os.environ, "VENV": sys.prefix}
    res = subprocess.run([str(IMAGES_SH)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=env,
                         stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise AssertionError(f"docker/images.sh exited {res.returncode}:\n{res.stderr[-4000:]}")
    out = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return DockerLab(
        image=out["IMAGE"], base_image=out["BASE_IMAGE"], mosquitto_image=out["MOSQUITTO_IMAGE"],
        wheelhouse=Path(out["WHEELHOUSE"]), compose_bin=Path(out["COMPOSE"]),
    )


@pytest.hookimpl(trylast=True)  # after any plugin that reorders the tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The first test to use :func:`docker_lab` sets it up, a cold build included: that test alone
    gets the build's time on top of its own; every other test keeps its timeout."""
    for item in items:
        if "docker_lab" in getattr(item, "fixturenames", ()):
            marker = item.get_closest_marker("timeout")
            own = float(marker.args[0]) if marker and marker.args else float(item.config.getini("timeout") or 0)
            item.add_marker(pytest.mark.timeout(own + BUILD_TIMEOUT))
            return


@pytest.fixture(scope="session")
def docker_lab() -> Iterator[DockerLab]:
    started_here = not engine_answers()
    try:
        yield build_images()
    finally:
        if started_here:
            subprocess.run([str(ENGINE_SH), "stop"], timeout=60, check=False, stdin=subprocess.DEVNULL)


class ComposeProject:
    """One compose project name, used for every directory a test runs compose in."""

    def __init__(self, lab: DockerLab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.dirs: list[Path] = []
        self.extra_env: dict[str, str] = {}  # more variables for the compose file (a port, a path)

    def __call__(self, project_dir: Path | str, *args: str, timeout: float = DOCKER_TIMEOUT,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        directory = Path(project_dir)
        if directory not in self.dirs:
            self.dirs.append(directory)
        cmd = [str(self.lab.compose_bin), "--project-name", self.name, "--project-directory", str(directory), *args]
        res = subprocess.run(cmd, cwd=directory, capture_output=True, text=True, timeout=timeout,
                             env={**self.lab.env(), **self.extra_env}, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def leftovers(self) -> dict[str, list[str]]:
        """Containers (running or not), networks and volumes still labelled with this project."""
        label = f"label={PROJECT_LABEL}={self.name}"
        return {
            "containers": docker("ps", "-aq", "--filter", label).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label).stdout.split(),
        }

    def remove(self) -> None:
        """``compose down`` where the compose file still exists, then whatever still carries the label
        (a broken or deleted compose file, a container started with ``compose run``...)."""
        for directory in self.dirs:
            if directory.is_dir():
                self(directory, "down", "--volumes", "--remove-orphans", "--timeout", "3", check=False)
        left = self.leftovers()
        if left["containers"]:
            docker("rm", "--force", "--volumes", *left["containers"], check=False)
        if left["networks"]:
            docker("network", "rm", *left["networks"], check=False)
        if left["volumes"]:
            docker("volume", "rm", "--force", *left["volumes"], check=False)
        left = self.leftovers()
        assert not any(left.values()), f"compose project {self.name} left {left}"


def project_name(nodeid: str) -> str:
    """A compose project name for a test: lowercase letters, digits, dashes; unique per call."""
    test = re.sub(r"[^a-z0-9]+", "-", nodeid.rsplit("::", 1)[-1].lower()).strip("-")[:40]
    return f"orctest-{test}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def compose(docker_lab: DockerLab, request: pytest.FixtureRequest) -> Iterator[ComposeProject]:
    project = ComposeProject(docker_lab, project_name(request.node.nodeid))
    try:
        yield project
    finally:
        project.remove()
