"""Abstract bases of resources.  A plugin implements one; a remote proxy subclasses the same base,
so a local and a remote motor are interchangeable in user code.

Everything that can move is an :class:`Actuator`: it has ``stop()`` and ``is_moving()``, and its
methods that move are marked with :func:`actuating` (the session layer binds those to a session).
Methods are called remotely by name with keyword arguments validated against their signature.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from orchestrator.errors import InvalidArgument
from orchestrator.resources.types import API

F = TypeVar("F", bound=Callable[..., Any])

ACTUATING_ATTR = "__orc_actuating__"

# Methods of Resource that are lifecycle hooks, never called over the wire.
LIFECYCLE = frozenset({"start", "close", "from_config", "reconfigure"})


def actuating(fn: F) -> F:
    """Mark a method as one that moves something (binds the resource to the caller's session)."""
    setattr(fn, ACTUATING_ATTR, True)
    return fn


def is_actuating(fn: Any) -> bool:
    return bool(getattr(fn, ACTUATING_ATTR, False))


class Resource(abc.ABC):  # noqa: B024 - abstract by intent; every hook is optional
    """Base of every resource hosted by a part."""

    API: ClassVar[API] = API("orc", "component", "generic")

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Called once after construction, in dependency order."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the resource holds.  Called in reverse dependency order, bounded in time."""

    async def do_command(self, command: dict[str, Any]) -> dict[str, Any]:
        """Free-form command; the generic resource's only method.  A resource without any answers
        :class:`~orchestrator.errors.UnknownMethod` (a caller's mistake, not a plugin's failure)."""
        from orchestrator.errors import UnknownMethod

        raise UnknownMethod(f"{type(self).__name__} has no free-form commands", resource=self.name,
                            method="do_command")

    @property
    def is_actuator(self) -> bool:
        return isinstance(self, Actuator)


class Generic(Resource):
    """A resource with only a free-form command."""

    API = API("orc", "component", "generic")

    @abc.abstractmethod
    async def do_command(self, command: dict[str, Any]) -> dict[str, Any]: ...


class Actuator(Resource):
    """Anything that can move: must be stoppable."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop moving now.  Must be safe to call at any time, repeatedly."""

    @abc.abstractmethod
    async def is_moving(self) -> bool: ...

    # Optional: ``def emergency_stop(self) -> None`` — synchronous and callable from another thread.
    # The part's watchdog thread calls it when the event loop stalls (a plugin blocked it), when no
    # async ``stop()`` can run.  Implement it whenever the hardware allows a stop without the loop.


class Motor(Actuator):
    API = API("orc", "component", "motor")

    @actuating
    @abc.abstractmethod
    async def set_power(self, power: float) -> None:
        """Power in [-1, 1]."""

    @actuating
    @abc.abstractmethod
    async def go_for(self, rpm: float, revolutions: float) -> None:
        """Turn ``revolutions`` at ``rpm`` (returns at once; the motor stops by itself at the target)."""

    @actuating
    async def go_to(self, rpm: float, position_revolutions: float) -> None:
        """Turn to ``position_revolutions`` (from the start position) at ``abs(rpm)`` (returns at once).
        By default ``go_for`` of the distance from ``get_position()``; a driver with a position mode of
        its own overrides it."""
        if not (math.isfinite(rpm) and math.isfinite(position_revolutions)):
            raise InvalidArgument(f"{self.name}.go_to: rpm and position_revolutions must be finite numbers")
        await self.go_for(abs(rpm), position_revolutions - await self.get_position())

    @abc.abstractmethod
    async def get_position(self) -> float:
        """Revolutions from the start position."""

    @abc.abstractmethod
    async def get_power(self) -> float: ...


class Base(Actuator):
    """A mobile base."""

    API = API("orc", "component", "base")

    @actuating
    @abc.abstractmethod
    async def set_power(self, linear: float, angular: float) -> None:
        """Linear and angular power, each in [-1, 1]."""

    @actuating
    @abc.abstractmethod
    async def move_straight(self, distance_mm: float, mm_per_s: float) -> None: ...

    @actuating
    @abc.abstractmethod
    async def spin(self, angle_deg: float, deg_per_s: float) -> None: ...


class Servo(Actuator):
    API = API("orc", "component", "servo")

    @actuating
    @abc.abstractmethod
    async def move(self, angle_deg: float) -> None: ...

    @abc.abstractmethod
    async def get_position(self) -> float:
        """Current angle in degrees."""


class Gripper(Actuator):
    API = API("orc", "component", "gripper")

    @actuating
    @abc.abstractmethod
    async def open(self) -> None: ...

    @actuating
    @abc.abstractmethod
    async def grab(self) -> bool:
        """Close; True if something was grabbed."""


class Sensor(Resource):
    API = API("orc", "component", "sensor")

    @abc.abstractmethod
    async def get_readings(self) -> dict[str, Any]: ...


KINDS: Mapping[str, type[Resource]] = {
    "motor": Motor, "base": Base, "servo": Servo, "gripper": Gripper, "sensor": Sensor, "generic": Generic,
}
