"""Payload models: the ``body`` of each envelope, one pydantic model per message kind."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class PartStateName(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    OFFLINE = "offline"  # published by the broker: the part's Last Will


class PartState(_Body):
    """Retained on ``part/<name>/state``.  The Will carries ``offline`` with the same birth."""

    state: PartStateName
    parent: str | None = None
    pid: int | None = None
    host: str | None = None
    reason: str | None = None
    heartbeat_s: float = 1.0
    resources: list[str] = Field(default_factory=list)


class Heartbeat(_Body):
    uptime_s: float = 0.0


class ControlCommand(StrEnum):
    STOP = "stop"
    RELOAD = "reload"


class Control(_Body):
    """Parent to child on ``part/<parent>/ctl/<child>``."""

    cmd: ControlCommand
    reason: str = ""
    deadline_s: float = 5.0
    shutdown_id: str = ""


class StopReport(_Body):
    """Child to parent on ``part/<child>/report`` once it has stopped everything it hosts."""

    shutdown_id: str = ""
    asked_at: float | None = None
    began_at: float
    stopped_at: float
    resources_stopped: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    children: list[TimelineEntry] = Field(default_factory=list)


class TimelineEntry(_Body):
    """One part's line in the shutdown timeline (times are wall-clock seconds)."""

    part: str
    parent: str | None = None
    asked_at: float | None = None
    began_at: float | None = None
    stopped_at: float | None = None
    reported_at: float | None = None
    forced: bool = False
    killed: bool = False
    resources_stopped: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)


class Timeline(_Body):
    """Published retained on ``robot/timeline`` by the primary at the end of a shutdown."""

    shutdown_id: str
    reason: str = ""
    started_at: float
    clients_closed_at: float | None = None
    finished_at: float | None = None
    entries: list[TimelineEntry] = Field(default_factory=list)

    def entry(self, part: str) -> TimelineEntry | None:
        return next((e for e in self.entries if e.part == part), None)


class PartStatus(_Body):
    state: PartStateName
    online: bool
    birth: int = 0
    since: float = 0.0
    last_heartbeat: float | None = None
    parent: str | None = None
    pid: int | None = None
    reason: str | None = None


class RobotStatus(_Body):
    """Retained on ``robot/status`` by the primary."""

    robot: str
    primary: str
    state: str  # starting | running | degraded | stopping | stopped
    parts: dict[str, PartStatus] = Field(default_factory=dict)


class Notice(_Body):
    kind: str  # "going_down" | "down"
    shutdown_id: str = ""
    reason: str = ""


class ShutdownRequest(_Body):
    reason: str = "requested over MQTT"


class ReloadRequest(_Body):
    reason: str = "requested over MQTT"


class TelemetryReading(_Body):
    resource: str
    readings: dict[str, Any]


class CallRequest(_Body):
    """A call to ``<part>/<resource>``: the reply goes to the caller's reply topic."""

    id: str
    method: str
    args: dict[str, Any] = Field(default_factory=dict)
    deadline: float | None = None  # caller's wall clock, seconds; None: the part's default
    session: str | None = None
    # a part calling on behalf of a session it was called in (indirect control): the session's owner
    on_behalf: str | None = None


class SessionHeartbeat(_Body):
    """On ``<owner>/session/hb``: n rises; tag = HMAC(heartbeat secret, session|n)."""

    session: str
    n: int
    tag: str
    close: bool = False  # the owner closes the session (stops what it owns)


class SessionEvent(_Body):
    """On ``part/<p>/sessions/events``: opened, closed, expired, stopped, owned."""

    kind: str
    session: str  # short form: never the full id
    owner: str
    part: str
    resources: list[str] = Field(default_factory=list)
    at: float = 0.0
    detail: str = ""


class CallReply(_Body):
    id: str
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None  # {"code", "message", "details"}


StopReport.model_rebuild()
