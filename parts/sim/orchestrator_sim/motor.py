"""A simulated DC motor: power in [-1, 1] turns into velocity, velocity into position over time."""

from __future__ import annotations

import asyncio
import math
import time

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import InvalidArgument
from orchestrator.resources.base import Motor, Resource, actuating


class SimMotorAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_rpm: float = Field(default=100.0, gt=0, le=100000)
    # Fault injection for tests and demos: a stop() that blocks the part's event loop this long.
    hang_on_stop_s: float = Field(default=0.0, ge=0, le=3600)
    # A probe on the motor's terminals, for tests across processes and networks: every change of power
    # is appended to this file as "<unix time> <power>" (what the motor did, whatever the network says).
    trace_file: str | None = Field(default=None, max_length=4096)


class SimMotor(Motor):
    def __init__(self, name: str, attributes: SimMotorAttributes, deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.attributes = attributes
        self._power = 0.0
        self._position = 0.0
        self._since = time.monotonic()
        self._target: float | None = None
        self.stops = 0
        self.emergency_stops = 0
        self._traced: float | None = None

    def _trace(self) -> None:
        if self.attributes.trace_file is None or self._power == self._traced:
            return
        self._traced = self._power
        with open(self.attributes.trace_file, "a") as f:  # one short line, like a register write
            f.write(f"{time.time():.6f} {self._power:g}\n")

    def _integrate(self) -> None:
        now = time.monotonic()
        self._position += self._power * self.attributes.max_rpm / 60.0 * (now - self._since)
        self._since = now
        if self._target is not None and (
            (self._power > 0 and self._position >= self._target) or (self._power < 0 and self._position <= self._target)
        ):
            self._position, self._power, self._target = self._target, 0.0, None
            self._trace()

    @actuating
    async def set_power(self, power: float) -> None:
        if not -1.0 <= power <= 1.0:
            raise InvalidArgument(f"{self.name}.set_power: power must be within [-1, 1], got {power}")
        self._integrate()
        self._power = power
        self._target = None
        self._trace()

    @actuating
    async def go_for(self, rpm: float, revolutions: float) -> None:
        # the part checks every call's arguments (from the wire and between resources); a driver checks
        # its own too: a NaN rpm clamped to full power, a NaN target never reached
        if not (math.isfinite(rpm) and math.isfinite(revolutions)):
            raise InvalidArgument(f"{self.name}.go_for: rpm and revolutions must be finite numbers")
        self._integrate()
        rpm = max(-self.attributes.max_rpm, min(self.attributes.max_rpm, rpm))
        direction = 1.0 if (rpm >= 0) == (revolutions >= 0) else -1.0
        self._power = direction * abs(rpm) / self.attributes.max_rpm
        self._target = self._position + direction * abs(revolutions)
        self._trace()

    async def get_position(self) -> float:
        self._integrate()
        return self._position

    async def get_power(self) -> float:
        self._integrate()
        return self._power

    async def is_moving(self) -> bool:
        self._integrate()
        return self._power != 0.0

    def emergency_stop(self) -> None:
        """Synchronous stop for the watchdog thread (a plain write, as a driver's brake register)."""
        self._integrate()
        self._power = 0.0
        self._target = None
        self.emergency_stops += 1
        self._trace()

    async def stop(self) -> None:
        if self.attributes.hang_on_stop_s:
            time.sleep(self.attributes.hang_on_stop_s)  # noqa: ASYNC251 - deliberately blocks, like a hung driver
        self._integrate()
        self._power = 0.0
        self._target = None
        self.stops += 1
        self._trace()
        await asyncio.sleep(0)
