"""A simulated sensor: a smooth, deterministic signal per reading name."""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.resources.base import Resource, Sensor


class SimSensorAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    readings: list[str] = Field(default_factory=lambda: ["value"], min_length=1)
    period_s: float = Field(default=10.0, gt=0)
    amplitude: float = 1.0


class SimSensor(Sensor):
    def __init__(self, name: str, attributes: SimSensorAttributes, deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.attributes = attributes
        self._t0 = time.monotonic()

    async def get_readings(self) -> dict[str, Any]:
        t = time.monotonic() - self._t0
        a = self.attributes
        return {
            k: a.amplitude * math.sin(2 * math.pi * (t / a.period_s + i / len(a.readings)))
            for i, k in enumerate(a.readings)
        }
