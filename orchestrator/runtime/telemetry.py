"""Sensor readings published periodically on ``part/<p>/telemetry/<resource>`` (QoS 0)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from orchestrator.protocol.codec import encode_checked
from orchestrator.protocol.messages import TelemetryReading
from orchestrator.resources.base import Sensor
from orchestrator.tasks import cancel_and_wait

if TYPE_CHECKING:
    from orchestrator.runtime.part import Part

log = logging.getLogger("orchestrator.part")


class Telemetry:
    def __init__(self, part: Part) -> None:
        self.part = part
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    def restart(self) -> None:
        """(Re)start one task per resource with a ``telemetry`` section (after start and every reload)."""
        for t in self._tasks.values():
            t.cancel()
        p = self.part
        self._tasks = {
            r.name: asyncio.create_task(self._loop(r.name), name=f"part[{p.name}].telemetry[{r.name}]")
            for r in p.part_config.resources
            if r.telemetry is not None
        }

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks.values()))

    async def _loop(self, name: str) -> None:
        p = self.part
        topic = p.topics.telemetry(p.name, name)
        last: dict[str, Any] | None = None
        while True:
            cfg = next((r for r in p.part_config.resources if r.name == name), None)
            if cfg is None or cfg.telemetry is None:
                return
            res = p.host.resources.get(name)
            if isinstance(res, Sensor) and p.client.is_connected:
                try:
                    readings = await asyncio.wait_for(res.get_readings(), cfg.telemetry.period_s * 5)
                    if not (cfg.telemetry.on_change and readings == last):
                        last = readings
                        body = TelemetryReading(resource=name, readings=readings)
                        p.client.publish_nowait(topic, encode_checked(p.sender, body, birth=p.client.birth), qos=0)
                        p.mirror(topic, body)
                except Exception as exc:  # a plugin's readings: anything can go wrong, telemetry goes on
                    log.warning("part %s: telemetry of %s: %s: %s", p.name, name, type(exc).__name__, exc)
            await asyncio.sleep(cfg.telemetry.period_s)
