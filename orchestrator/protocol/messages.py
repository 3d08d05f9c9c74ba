"""Payload models: the ``body`` of each envelope, one pydantic model per message kind.

Every field is bounded (lengths, ranges, finite numbers): a message that does not fit is refused
with a :class:`~orchestrator.errors.ProtocolError` and counted, never believed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# bounded field types
Name = Annotated[str, Field(max_length=64)]
Ident = Annotated[str, Field(max_length=200)]  # sender identities, ids, session ids
Text = Annotated[str, Field(max_length=2000)]  # reasons, details, error lines
Time = Annotated[float, Field(ge=0, le=1e11)]  # wall-clock seconds
Names = Annotated[list[Name], Field(max_length=10_000)]
Texts = Annotated[list[Text], Field(max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False, allow_inf_nan=False)


class PartStateName(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    OFFLINE = "offline"  # published by the broker: the part's Last Will


class PartState(_Body):
    """Retained on ``part/<name>/state``.  The Will carries ``offline`` with the same birth."""

    state: PartStateName
    parent: Name | None = None
    pid: int | None = Field(default=None, ge=0, le=2**31)
    host: Name | None = None
    reason: Text | None = None
    # informative: supervisors use the heartbeat period of the configuration, never this claim
    heartbeat_s: float = Field(default=1.0, ge=0.001, le=3600)
    resources: Names = Field(default_factory=list)


class Heartbeat(_Body):
    uptime_s: float = Field(default=0.0, ge=0, le=1e10)


class ControlCommand(StrEnum):
    STOP = "stop"  # stop bottom-up and exit (the shutdown conversation)
    RELOAD = "reload"  # re-read the configuration
    END_SESSION = "end_session"  # end one session in this subtree, bottom-up, and report
    HALT = "halt"  # stop every actuator in this subtree, keep running (the upstream-loss rule), and report


class Control(_Body):
    """Parent to child on ``part/<parent>/ctl/<child>``."""

    cmd: ControlCommand
    reason: Text = ""
    deadline_s: float = Field(default=5.0, gt=0, le=3600)
    shutdown_id: Ident = ""
    session: Ident = ""  # END_SESSION: the session's public id
    cause: Name = ""  # END_SESSION: why the robot ends it (expired, closed, ended)
    end_id: Ident = ""  # END_SESSION, HALT: which conversation the report answers


class StopReport(_Body):
    """Child to parent on ``part/<child>/report`` once it has stopped everything it hosts."""

    shutdown_id: Ident = ""
    asked_at: Time | None = None
    began_at: Time
    stopped_at: Time
    resources_stopped: Names = Field(default_factory=list)
    errors: Texts = Field(default_factory=list)
    children: list[TimelineEntry] = Field(default_factory=list, max_length=10_000)


class TimelineEntry(_Body):
    """One part's line in the shutdown timeline (times are wall-clock seconds)."""

    part: Name
    parent: Name | None = None
    asked_at: Time | None = None  # when the request to stop left the parent (or `up`'s signal was sent)
    began_at: Time | None = None
    stopped_at: Time | None = None
    reported_at: Time | None = None
    forced: bool = False
    killed: bool = False
    by: Name = ""  # who stopped it: "" (its parent), or "up" (the launcher's fallback, primary hung)
    resources_stopped: Names = Field(default_factory=list)
    errors: Texts = Field(default_factory=list)


class Timeline(_Body):
    """Published retained on ``robot/timeline`` by the primary at the end of a shutdown."""

    shutdown_id: Ident
    reason: Text = ""
    started_at: Time
    clients_closed_at: Time | None = None
    finished_at: Time | None = None
    entries: list[TimelineEntry] = Field(default_factory=list, max_length=10_000)

    def entry(self, part: str) -> TimelineEntry | None:
        return next((e for e in self.entries if e.part == part), None)


class PartStatus(_Body):
    state: PartStateName
    online: bool
    birth: int = Field(default=0, ge=0, le=2**63)
    since: Time = 0.0
    last_heartbeat: Time | None = None
    parent: Name | None = None
    pid: int | None = Field(default=None, ge=0, le=2**31)
    reason: Text | None = None
    restarts: int = Field(default=0, ge=0)


class PartPulse(_Body):
    online: bool
    age_s: float | None = Field(default=None, ge=0)  # since the last heartbeat the primary heard
    jitter_s: float = Field(default=0.0, ge=0)  # smoothed deviation of the heartbeat intervals from heartbeat_s
    heartbeat_s: float = Field(default=0.0, ge=0)


class LivenessReport(_Body):
    """On ``robot/liveness`` every second (not retained) by the primary: how recently it heard each part."""

    at: Time
    parts: dict[Name, PartPulse] = Field(default_factory=dict, max_length=10_000)


class RobotStatus(_Body):
    """Retained on ``robot/status`` by the primary; its Will (a connection of the primary's own) says
    ``offline``, so a reader can tell a robot whose primary is unreachable."""

    robot: Name
    primary: Name
    # starting | running | degraded | resyncing | stopping | stopped | offline (the primary's Will)
    state: Name
    parts: dict[Name, PartStatus] = Field(default_factory=dict, max_length=10_000)
    upstream: Name = "none"  # none (no upstream configured) | up | down | unknown
    at: Time = 0.0  # when the primary published this view
    reason: Text = ""


class UpstreamState(_Body):
    """Retained on ``robot/upstream`` by the primary: the robot's link to its upstream (cloud) broker."""

    state: Name  # up | down | unknown
    since: Time
    reason: Text = ""
    rule: Name = ""  # what losing the link did: "stopped" (default management) or "nothing"


class Notice(_Body):
    kind: Name  # "going_down" | "down"
    shutdown_id: Ident = ""
    reason: Text = ""


class ShutdownRequest(_Body):
    reason: Text = "requested over MQTT"


class ReloadRequest(_Body):
    reason: Text = "requested over MQTT"


class MethodArg(_Body):
    name: Name
    type: Text = "Any"
    required: bool = True
    default: Any = None


class MethodInfo(_Body):
    """A method of a resource, as ``orchestrator.resources.describe`` gives it (compact)."""

    name: Name
    actuating: bool = False
    args: list[MethodArg] = Field(default_factory=list, max_length=100)
    returns: Text = "Any"


class ResourceInfo(_Body):
    name: Name
    model: Text
    status: Name  # ready | degraded | ...
    reason: Text | None = None
    api: Text | None = None  # namespace:type:subtype; absent from parts older than this field
    methods: list[MethodInfo] = Field(default_factory=list, max_length=500)


class PartResources(_Body):
    """Retained on ``part/<p>/resources``: what the part hosts."""

    resources: list[ResourceInfo] = Field(default_factory=list, max_length=10_000)


class TelemetryReading(_Body):
    resource: Name
    readings: dict[str, Any]


class CallRequest(_Body):
    """A call to ``<part>/<resource>``: the reply goes to the caller's reply topic."""

    id: Ident
    method: Name
    args: dict[str, Any] = Field(default_factory=dict)
    deadline: Time | None = None  # caller's wall clock, seconds; None: the part's default
    session: Ident | None = None
    # a part calling on behalf of a session it was called in (indirect control): the session's owner
    on_behalf: Ident | None = None


class SessionHeartbeat(_Body):
    """On ``<owner>/session/hb``: n rises; tag = HMAC(heartbeat secret, session|n)."""

    session: Ident
    n: int = Field(ge=0, le=2**62)
    tag: Annotated[str, Field(max_length=64)]
    close: bool = False  # the owner closes the session (stops what it owns)


class SessionEvent(_Body):
    """On ``part/<p>/sessions/events``.

    kinds: ``opened`` (primary), ``owned`` (a resource bound to the session), ``expired`` (a part's
    timer ran out), ``closed`` (by its owner), ``stopped`` (a part stopped what the session owned there:
    ``resources``, ``reason``), ``ending`` (the primary began ending it robot-wide),
    ``ended`` (every part stopped what it owned: the robot-wide end is complete; its reason says why).
    """

    kind: Name
    session: Ident  # the session's public id: never the full id
    owner: Ident
    part: Name
    resources: Names = Field(default_factory=list)
    at: Time = 0.0
    detail: Text = ""
    reason: Text = ""


class SessionEndReport(_Body):
    """Child to parent on ``part/<child>/sessions/report``: it ended a session (or halted) in its subtree."""

    end_id: Ident
    session: Ident = ""
    stopped: Names = Field(default_factory=list)  # "part/resource" for the whole subtree
    errors: Texts = Field(default_factory=list)
    parts: Names = Field(default_factory=list)  # the parts of the subtree that answered


class EndedSession(_Body):
    session: Ident
    owner: Ident = ""
    at: Time
    reason: Text = ""


class TrackedSession(_Body):
    session: Ident
    owner: Ident
    window_s: float = Field(gt=0, le=3600)
    resources: Names = Field(default_factory=list)


class SessionsState(_Body):
    """Retained on ``part/<p>/sessions/state``: the sessions a part tracks and the ones it saw end.

    Re-announced on every reconnect, so a part that restarts (or a broker that restarts without
    persistence) learns which sessions ended: an ended session is refused everywhere."""

    tracked: list[TrackedSession] = Field(default_factory=list, max_length=10_000)
    ended: list[EndedSession] = Field(default_factory=list, max_length=10_000)


class AdminDisconnect(_Body):
    """Primary to the embedded broker on ``robot/admin/disconnect``: close these connections of
    ``username`` (the broker closes only connections authenticated as that username)."""

    username: Ident
    client_ids: Annotated[list[Ident], Field(max_length=16)] = Field(default_factory=list)
    reason: Text = ""


class Counters(_Body):
    """Retained on ``part/<p>/counters``: messages refused or dropped, by reason, since ``since``."""

    since: Time
    counts: dict[Name, int] = Field(default_factory=dict, max_length=1000)


class CallSeries(_Body):
    """Calls to one method of one resource: count, latency (cumulative histogram), errors by code."""

    resource: Name
    method: Name
    count: int = Field(default=0, ge=0)
    sum: float = Field(default=0.0, ge=0)
    buckets: list[int] = Field(default_factory=list, max_length=64)
    errors: dict[Name, int] = Field(default_factory=dict, max_length=100)


class PartMetrics(_Body):
    """Retained on ``part/<p>/metrics``: what the primary's Prometheus endpoint serves for this part."""

    buckets: list[float] = Field(default_factory=list, max_length=64)  # the histograms' upper bounds, seconds
    calls: list[CallSeries] = Field(default_factory=list, max_length=1000)
    uptime_s: float = Field(default=0.0, ge=0)
    reconnects: int = Field(default=0, ge=0)
    link_drops: int = Field(default=0, ge=0)
    link_waits: int = Field(default=0, ge=0)  # echo checks that waited for TCP to recover a loss
    session_stops: dict[Name, int] = Field(default_factory=dict, max_length=100)
    refused: int = Field(default=0, ge=0)


class CallReply(_Body):
    id: Ident
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None  # {"code", "message", "details"}


StopReport.model_rebuild()
