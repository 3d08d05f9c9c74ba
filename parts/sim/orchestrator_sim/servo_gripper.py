"""A simulated servo (moves at a bounded angular speed) and a simulated parallel gripper."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import InvalidArgument
from orchestrator.resources.base import Gripper, Resource, Servo, actuating


class SimServoAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_deg: float = 0.0
    max_deg: float = 180.0
    deg_per_s: float = Field(default=180.0, gt=0)


class SimServo(Servo):
    def __init__(self, name: str, attributes: SimServoAttributes, deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.attributes = attributes
        self._from = self._to = attributes.min_deg
        self._t0 = time.monotonic()

    def _now(self) -> float:
        span = self._to - self._from
        if span == 0:
            return self._to
        frac = min(1.0, (time.monotonic() - self._t0) * self.attributes.deg_per_s / abs(span))
        return self._from + span * frac

    @actuating
    async def move(self, angle_deg: float) -> None:
        a = self.attributes
        if not a.min_deg <= angle_deg <= a.max_deg:
            raise InvalidArgument(f"{self.name}.move: angle must be within [{a.min_deg}, {a.max_deg}]")
        self._from, self._to, self._t0 = self._now(), angle_deg, time.monotonic()

    async def get_position(self) -> float:
        return self._now()

    async def is_moving(self) -> bool:
        return self._now() != self._to

    async def stop(self) -> None:
        here = self._now()
        self._from = self._to = here


class SimGripperAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holds_object: bool = Field(default=True, description="whether grab() finds something")


class SimGripper(Gripper):
    def __init__(self, name: str, attributes: SimGripperAttributes, deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.attributes = attributes
        self.is_open = True
        self._moving = False

    @actuating
    async def open(self) -> None:
        self.is_open = True

    @actuating
    async def grab(self) -> bool:
        self.is_open = False
        return self.attributes.holds_object

    async def stop(self) -> None:
        self._moving = False

    async def is_moving(self) -> bool:
        return self._moving
