"""What a part publishes for the people and tools watching it: a JSON mirror of its topics, its log and (the
primary) Home Assistant discovery.  See docs/operating.md."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from orchestrator.protocol.codec import encode
from orchestrator.protocol.topics import Topics
from orchestrator.transport.client import MqttClient

if TYPE_CHECKING:
    from orchestrator.runtime.part import Part

log = logging.getLogger(__name__)

__all__ = ["JsonMirror", "TopicLogHandler", "home_assistant_discovery", "to_json"]

def to_json(body: BaseModel | dict[str, Any]) -> bytes:
    """A JSON rendering of a message body (non-finite numbers as null, anything else as text)."""
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), default=str, separators=(",", ":")).encode()


class JsonMirror:
    """Publishes the JSON copy of a message next to the msgpack original (``Topics.json``): retained where
    the original is, so ``mosquitto_sub -t 'robot/<r>/+/+/json/#'`` shows the robot with no code of ours.
    The copy is published by the same identity as the original, on a topic only it may write.  Never
    raises: the mirror is for people, the msgpack wire is what the robot runs on."""

    def __init__(self, mqtt: MqttClient, topics: Topics, enabled: bool) -> None:
        self.mqtt = mqtt
        self.topics = topics
        self.enabled = enabled
        self.published = 0

    def __call__(self, topic: str, body: BaseModel | dict[str, Any], retain: bool = False) -> None:
        if not self.enabled:
            return
        try:
            if self.mqtt.publish_nowait(self.topics.json(topic), to_json(body), qos=1 if retain else 0,
                                        retain=retain):
                self.published += 1
        except Exception:
            log.debug("json mirror of %s failed", topic, exc_info=True)


class TopicLogHandler(logging.Handler):
    """Publishes a part's log records on ``part/<p>/log``: at most ``rate`` a second (a burst of
    ``burst``), each message truncated, and counted when dropped: a log storm costs a counter."""

    def __init__(self, part: Part, level: int, rate: float = 5.0, burst: int = 20) -> None:
        super().__init__(level)
        self.part = part
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.dropped = 0
        self._inside = False

    def emit(self, record: logging.LogRecord) -> None:
        if self._inside:  # never log about logging
            return
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            self.dropped += 1
            return
        self.tokens -= 1
        self._inside = True
        try:
            p = self.part
            body = {"ts": record.created, "level": record.levelname, "logger": record.name[:80],
                    "message": record.getMessage()[:1000], "dropped": self.dropped}
            if p.client.is_connected:
                p.client.publish_nowait(p.topics.part_log(p.name), encode(p.sender, body, birth=p.client.birth), qos=0)
                p.mirror(p.topics.part_log(p.name), body)
        except Exception:  # a log handler must never raise into the code that logged
            pass
        finally:
            self._inside = False


def home_assistant_discovery(part: Part) -> list[tuple[str, bytes]]:
    """Discovery configs (topic, payload) for every numeric reading of the robot's sensors that publish
    telemetry, and a binary sensor for the robot's availability; published retained by the primary."""
    cfg = part.config
    t = part.topics
    prefix = cfg.monitoring.home_assistant_prefix
    robot = cfg.robot
    availability = {"topic": t.json(t.robot_status()), "value_template": "{{ 'online' if value_json.state in "
                    "['running', 'degraded', 'resyncing'] else 'offline' }}"}
    device = {"identifiers": [f"orchestrator-{robot}"], "name": robot, "manufacturer": "orchestrator"}
    out: list[tuple[str, bytes]] = []
    robot_cfg = {"name": f"{robot} running", "unique_id": f"{robot}_running", "device": device,
                 "state_topic": t.json(t.robot_status()), "value_template": "{{ value_json.state }}",
                 "payload_on": "running", "payload_off": "stopped", "device_class": "running"}
    out.append((f"{prefix}/binary_sensor/{robot}/running/config", json.dumps(robot_cfg).encode()))
    for p in cfg.parts:
        for r in p.resources:
            if r.telemetry is None:
                continue
            named = r.attributes.get("readings")
            keys: list[Any] = named if isinstance(named, list) else ["value"]
            for key in keys[:50]:
                oid = f"{p.name}_{r.name}_{key}".replace(".", "_")
                sensor = {"name": f"{p.name} {r.name} {key}", "unique_id": f"{robot}_{oid}", "device": device,
                          "state_topic": t.json(t.telemetry(p.name, r.name)),
                          "value_template": f"{{{{ value_json.readings['{key}'] }}}}",
                          "availability": [availability]}
                out.append((f"{prefix}/sensor/{robot}/{oid}/config", json.dumps(sensor).encode()))
    return out
