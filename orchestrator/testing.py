"""Test a plugin's resources inside a real part, on a real (embedded) broker, in a few lines.

For plugin authors' own tests (pytest with pytest-asyncio, or any asyncio code)::

    from orchestrator import Motor
    from orchestrator.testing import robot_with

    async def test_my_motor_stops(tmp_path):
        async with robot_with([{"name": "m", "model": "acme:fans:motor"}], directory=tmp_path) as robot:
            motor = robot.resource("m", Motor)      # a proxy: every call crosses MQTT
            await motor.set_power(0.5)
            assert await motor.is_moving()
            await motor.stop()

What runs is what a deployed robot runs: an embedded broker on a free port of 127.0.0.1 that enforces
the robot's identities and topic rights, a part (the primary, ``main``) hosting the resources as
``orchestrator up`` would, and a :class:`~orchestrator.client.RobotClient` with a session, as the
configuration's operator.  Everything is stopped in reverse order when the block ends, even on error.
The models must be installed (their entry points are read as in a part).
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from orchestrator.broker import EmbeddedBroker
from orchestrator.client import RobotClient
from orchestrator.config import LoadedConfig, load_config
from orchestrator.errors import InternalError, UnknownResource
from orchestrator.resources.base import Resource
from orchestrator.runtime.main import make_part
from orchestrator.runtime.part import Part

__all__ = ["TestRobot", "robot_with"]

R = TypeVar("R", bound=Resource)

PART = "main"
HOST = "127.0.0.1"


@dataclass
class TestRobot:
    """What :func:`robot_with` yields: the part, its broker and a connected client."""

    __test__ = False  # not a pytest test class

    loaded: LoadedConfig
    part: Part
    client: RobotClient
    broker: EmbeddedBroker

    def resource(self, name: str, kind: type[R], *, timeout: float | None = None) -> R:
        """A remote proxy of the resource ``name`` (every call goes over the broker, as from a client)."""
        return self.client.resource(f"{PART}/{name}", kind, timeout=timeout)

    def local(self, name: str) -> Resource:
        """The resource object itself, inside the part (to check what the hardware side saw)."""
        try:
            return self.part.host.resources[name]
        except KeyError:
            state = self.part.host.states.get(name)
            why = f"{state.status}: {state.reason}" if state is not None else "not in the configuration"
            raise UnknownResource(f"part {PART} hosts no resource {name!r} ({why})") from None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.broker.port}"


def _credentials(loaded: LoadedConfig) -> Any:
    from orchestrator.security.access import store_for
    from orchestrator.security.acl import mosquitto_acl, rights
    from orchestrator.security.credentials import identities_of

    store = store_for(loaded.config, loaded.path)
    store.ensure(identities_of(loaded.config), acl=mosquitto_acl(rights(loaded.config, loaded.topology)))
    return store


def _refuse_degraded(part: Part) -> None:
    """A resource that failed to build is a failed test, with what the plugin raised as its cause (a
    deployed part only logs it and retries)."""
    # the resource that raised first, not one that only waits for it as a dependency
    for name, state in sorted(part.host.states.items(), key=lambda item: item[1].error is None):
        if state.status == "degraded":
            raise InternalError(f"resource {name} ({state.model}) failed to build: {state.reason}",
                                resource=name) from state.error


@contextlib.asynccontextmanager
async def robot_with(resources: list[dict[str, Any]], *, directory: str | Path | None = None,
                     robot: str | None = None, allow_degraded: bool = False,
                     **config: Any) -> AsyncIterator[TestRobot]:
    """A one-part robot hosting ``resources`` (entries as in a configuration: ``name``, ``model``,
    ``attributes``, ``depends_on``), its broker and a client; ``config`` adds top-level sections
    (``sessions``, ``monitoring``...).  ``directory`` holds the configuration and its credentials
    (default: a temporary directory removed afterwards).

    A resource whose constructor or ``start()`` raises makes it raise :class:`InternalError` whose
    ``__cause__`` is the plugin's exception (with its traceback); ``allow_degraded=True`` runs the
    robot anyway, as a deployed part would (the resource is then retried every second)."""
    from orchestrator.security.acl import AclChecker, rights

    with contextlib.ExitStack() as stack:
        where = Path(directory) if directory is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        name = robot or f"t{uuid.uuid4().hex[:10]}"
        document = {
            "robot": name,
            "broker": {"urls": [f"mqtt://{HOST}:1"], "keepalive_s": 2},
            "parts": [{"name": PART, "resources": resources}],
            "clients": [{"name": "operator"}],
            **config,
        }
        path = where / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        loaded = load_config(path)
        store = _credentials(loaded)
        broker = EmbeddedBroker(HOST, 0, passwords=store.password_file(),
                                acl=AclChecker(rights(loaded.config, loaded.topology)))
        await broker.start()
        try:
            urls = [(HOST, broker.port)]
            part = make_part(loaded, PART, urls=urls)
            await part.start()
            try:
                if not allow_degraded:
                    _refuse_degraded(part)
                async with RobotClient.from_config(loaded, urls=urls) as client:
                    yield TestRobot(loaded, part, client, broker)
            finally:
                await part.close()
        finally:
            await broker.close()
