"""A differential base that drives two motors (which may live on another part)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import InvalidArgument
from orchestrator.resources.base import Base, Motor, Resource, actuating


class SimBaseAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    left: str = Field(description="the left motor: 'name' on this part or 'part/name'")
    right: str = Field(description="the right motor")
    wheel_circumference_mm: float = Field(default=200.0, gt=0)
    width_mm: float = Field(default=300.0, gt=0)
    max_rpm: float = Field(default=100.0, gt=0)


def dependencies(attributes: SimBaseAttributes) -> list[str]:
    return [attributes.left, attributes.right]


class SimBase(Base):
    def __init__(self, name: str, attributes: SimBaseAttributes, deps: dict[str, Resource]) -> None:
        super().__init__(name)
        self.attributes = attributes
        left, right = deps[attributes.left], deps[attributes.right]
        if not isinstance(left, Motor) or not isinstance(right, Motor):
            raise InvalidArgument(f"{name}: left and right must be motors")
        self.left: Motor = left
        self.right: Motor = right

    @actuating
    async def set_power(self, linear: float, angular: float) -> None:
        if not (-1 <= linear <= 1 and -1 <= angular <= 1):
            raise InvalidArgument(f"{self.name}.set_power: linear and angular must be within [-1, 1]")
        left = max(-1.0, min(1.0, linear - angular))
        right = max(-1.0, min(1.0, linear + angular))
        await asyncio.gather(self.left.set_power(left), self.right.set_power(right))

    @actuating
    async def move_straight(self, distance_mm: float, mm_per_s: float) -> None:
        revs = distance_mm / self.attributes.wheel_circumference_mm
        rpm = abs(mm_per_s) / self.attributes.wheel_circumference_mm * 60
        await asyncio.gather(self.left.go_for(rpm, revs), self.right.go_for(rpm, revs))

    @actuating
    async def spin(self, angle_deg: float, deg_per_s: float) -> None:
        arc_mm = 3.141592653589793 * self.attributes.width_mm * angle_deg / 360
        revs = arc_mm / self.attributes.wheel_circumference_mm
        rpm = abs(deg_per_s) / max(abs(angle_deg), 1e-9) * abs(revs) * 60
        await asyncio.gather(self.left.go_for(rpm, -revs), self.right.go_for(rpm, revs))

    async def stop(self) -> None:
        await asyncio.gather(self.left.stop(), self.right.stop())

    async def is_moving(self) -> bool:
        return any(await asyncio.gather(self.left.is_moving(), self.right.is_moving()))
