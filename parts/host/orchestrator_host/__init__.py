"""Real readings from the machine a part runs on.  Model: ``orc:host:system``.

Reads Linux's ``/proc`` and ``/sys`` directly (no dependency): CPU use since the previous reading,
memory, load average, uptime and, where the kernel exposes thermal zones, temperatures.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.resources.base import Resource, Sensor
from orchestrator.resources.registry import Registry

__all__ = ["SystemSensor", "register"]


class SystemAttributes(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proc: str = Field(default="/proc", description="procfs mount (tests point it at a fixture)")
    thermal: str = Field(default="/sys/class/thermal", description="thermal zones")


def _cpu_times(proc: Path) -> tuple[int, int]:
    fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


class SystemSensor(Sensor):
    def __init__(self, name: str, attributes: SystemAttributes, deps: dict[str, Resource] | None = None) -> None:
        super().__init__(name)
        self.proc = Path(attributes.proc)
        self.thermal = Path(attributes.thermal)
        self._last = _cpu_times(self.proc)

    async def get_readings(self) -> dict[str, Any]:
        total, idle = _cpu_times(self.proc)
        d_total, d_idle = total - self._last[0], idle - self._last[1]
        self._last = (total, idle)
        mem: dict[str, int] = {}
        for line in (self.proc / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("MemTotal", "MemAvailable"):
                mem[key] = int(rest.split()[0]) * 1024
        load1, load5, load15 = (float(x) for x in (self.proc / "loadavg").read_text().split()[:3])
        out: dict[str, Any] = {
            "cpu_percent": round(100.0 * (1 - d_idle / d_total), 2) if d_total > 0 else 0.0,
            "cpu_count": os.cpu_count() or 1,
            "memory_total_bytes": mem.get("MemTotal", 0),
            "memory_available_bytes": mem.get("MemAvailable", 0),
            "load_1m": load1,
            "load_5m": load5,
            "load_15m": load15,
            "uptime_s": float((self.proc / "uptime").read_text().split()[0]),
            "read_at": time.time(),
        }
        temps = {}
        if self.thermal.is_dir():
            for zone in sorted(self.thermal.glob("thermal_zone*")):
                try:
                    kind = (zone / "type").read_text().strip()
                    temps[kind or zone.name] = int((zone / "temp").read_text().strip()) / 1000.0
                except (OSError, ValueError):
                    continue
        out["temperatures_c"] = temps
        return out


def register(registry: Registry) -> None:
    registry.register("orc:host:system", SystemSensor, SystemAttributes)
