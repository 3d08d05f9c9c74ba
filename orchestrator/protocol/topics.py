"""Every MQTT topic of the protocol, built in one place from typed identities.

Layout (``orc/v1/<robot>/...``): every topic carries the identity of the one sender allowed to
publish on it, right after the root, so a single rule per identity ("write only under your own
name") is the whole ACL (see ``docs/protocol.md``)::

    orc/v1/<robot>/part/<part>/state            retained  part state, birth and Will (death)
    orc/v1/<robot>/part/<part>/hb                         part heartbeat
    orc/v1/<robot>/part/<parent>/ctl/<child>              parent -> child control (stop)
    orc/v1/<robot>/part/<part>/report                     child -> parent report (stopped)
    orc/v1/<robot>/part/<part>/resources        retained  what the part hosts
    orc/v1/<robot>/robot/status                 retained  primary: robot status
    orc/v1/<robot>/robot/timeline               retained  primary: last shutdown timeline
    orc/v1/<robot>/robot/notice                           primary: notices to clients
    orc/v1/<robot>/client/<client>/shutdown               a client asks the robot to shut down
    orc/v1/<robot>/client/<client>/reload                 a client asks the robot to reload its config
    orc/v1/<robot>/<kind>/<caller>/call/<part>/<res>      a call (kind: client or part)
    orc/v1/<robot>/part/<part>/reply/<kind>/<caller>      its reply, to the caller only
    orc/v1/<robot>/part/<part>/telemetry/<res>            sensor readings
    orc/v1/<robot>/<kind>/<owner>/session/hb              session heartbeats of their owner
    orc/v1/<robot>/part/<part>/sessions/events            opened, closed, expired, stopped
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from orchestrator.protocol.matching import topic_matches

__all__ = [
    "IDENTITY_KINDS",
    "NAME_PATTERN",
    "PROTOCOL_VERSION",
    "ROOT",
    "BridgeId",
    "ClientId",
    "Identity",
    "PartId",
    "Topics",
    "check_name",
    "topic_matches",
    "valid_level",
]

PROTOCOL_VERSION: Final = 1
ROOT: Final = f"orc/v{PROTOCOL_VERSION}"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_PATTERN: Final = _NAME.pattern


def check_name(kind: str, name: str) -> str:
    """Names become topic levels: no ``/``, ``+``, ``#``, spaces; 1 to 64 characters."""
    if not _NAME.match(name):
        raise ValueError(
            f"invalid {kind} name {name!r}: expected 1-64 characters of letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return name


def valid_level(name: str) -> bool:
    """Can ``name`` be one level of a topic we publish to (a part or resource named by a caller): 1 to 64
    characters, none of them ``/``, ``+``, ``#`` or NUL.  Looser than :func:`check_name` (it admits the
    reserved ``_sessions``), strict enough that a caller can never address a wildcard or another level."""
    return isinstance(name, str) and 0 < len(name) <= 64 and not any(c in name for c in "/+#\0")


IDENTITY_KINDS: Final = ("part", "client", "bridge")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who publishes: a part, a client, or the robot's upstream bridge.

    The same object gives the sender field of envelopes (``part/main``), the broker username
    (``rover/part/main``: one credential per identity, see ``orchestrator.security``) and, through
    :class:`Topics`, the topics only this identity may publish on.
    """

    robot: str
    kind: str
    name: str

    def __post_init__(self) -> None:
        check_name("robot", self.robot)
        if self.kind not in IDENTITY_KINDS:
            raise ValueError(f"unknown identity kind {self.kind!r}: expected one of {IDENTITY_KINDS}")
        check_name(self.kind, self.name)

    @property
    def sender(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def username(self) -> str:
        """The broker username: ``<robot>/<kind>/<name>`` (a ``/`` never occurs in a name)."""
        return f"{self.robot}/{self.kind}/{self.name}"

    @property
    def secret_file(self) -> str:
        """File name of this identity's password in a credentials directory."""
        return f"{self.kind}.{self.name}.secret"

    @classmethod
    def from_username(cls, username: str | None) -> Identity | None:
        bits = (username or "").split("/")
        if len(bits) != 3:
            return None
        try:
            return cls(bits[0], bits[1], bits[2])
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.username


def PartId(robot: str, name: str) -> Identity:
    return Identity(robot, "part", name)


def ClientId(robot: str, name: str) -> Identity:
    return Identity(robot, "client", name)


def BridgeId(robot: str, name: str = "upstream") -> Identity:
    return Identity(robot, "bridge", name)


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builder for one robot."""

    robot: str
    primary: str | None = None  # the primary's name, when known: the only publisher of ``robot/...``

    def __post_init__(self) -> None:
        check_name("robot", self.robot)
        if self.primary is not None:
            check_name("part", self.primary)

    @property
    def root(self) -> str:
        return f"{ROOT}/{self.robot}"

    def authentic(self, topic: str, src: str) -> bool:
        """Is ``src`` (an envelope's sender) the identity the broker's topic rights reserve ``topic`` to?

        Identity topics (``part/<p>/...``, ``client/<c>/...``) belong to that identity; the robot-wide
        ``robot/...`` topics to the primary (any part, if the primary's name is not known here)."""
        prefix = f"{self.root}/robot/"
        if topic.startswith(prefix):
            return src == f"part/{self.primary}" if self.primary is not None else src.startswith("part/")
        owner = self.sender_of(topic)
        return owner is not None and src == owner

    def of(self, identity: Identity | str) -> str:
        """The namespace only ``identity`` (or a sender string ``part/<p>``) publishes under."""
        sender = identity.sender if isinstance(identity, Identity) else identity
        return f"{self.root}/{sender}"

    # -- parts -------------------------------------------------------------------------------
    def part_state(self, part: str) -> str:
        return f"{self.root}/part/{part}/state"

    def part_heartbeat(self, part: str) -> str:
        return f"{self.root}/part/{part}/hb"

    def part_control(self, parent: str, child: str) -> str:
        return f"{self.root}/part/{parent}/ctl/{child}"

    def part_report(self, part: str) -> str:
        return f"{self.root}/part/{part}/report"

    def part_resources(self, part: str) -> str:
        return f"{self.root}/part/{part}/resources"

    def part_metrics(self, part: str) -> str:
        """Retained: the part's call counts and latency histograms (for the primary's Prometheus endpoint)."""
        return f"{self.root}/part/{part}/metrics"

    def all_part_metrics(self) -> str:
        return f"{self.root}/part/+/metrics"

    def all_part_counters(self) -> str:
        return f"{self.root}/part/+/counters"

    def part_events(self, part: str) -> str:
        """What happened to a part that an operator wants to see: reloads, link lost, watchdog, ..."""
        return f"{self.root}/part/{part}/events"

    def part_log(self, part: str) -> str:
        """The part's log records at or above its configured level, rate limited."""
        return f"{self.root}/part/{part}/log"

    def json(self, topic: str) -> str:
        """The JSON mirror of a topic (readable by mosquitto_sub, Node-RED, Home Assistant):
        ``.../part/<p>/state`` -> ``.../part/<p>/json/state``, ``.../robot/status`` -> ``.../robot/json/status``."""
        rest = topic[len(self.root) + 1:]
        bits = rest.split("/")
        if bits[0] == "part" and len(bits) > 2:
            return "/".join([self.root, "part", bits[1], "json", *bits[2:]])
        return "/".join([self.root, bits[0], "json", *bits[1:]])

    def part_counters(self, part: str) -> str:
        """Retained: what the part refused or dropped, per reason."""
        return f"{self.root}/part/{part}/counters"

    # -- robot (published by the primary) -------------------------------------------------------
    def robot_liveness(self) -> str:
        """Every second, by the primary: each part's heartbeat age and jitter (for ``monitor``)."""
        return f"{self.root}/robot/liveness"

    def robot_status(self) -> str:
        return f"{self.root}/robot/status"

    def robot_timeline(self) -> str:
        return f"{self.root}/robot/timeline"

    def robot_notice(self) -> str:
        return f"{self.root}/robot/notice"

    def robot_upstream(self) -> str:
        """Retained: the state of the robot's link to its upstream (cloud) broker."""
        return f"{self.root}/robot/upstream"

    def robot_probe(self) -> str:
        """The primary's probe of the upstream link: bridged out and back in (``both``), so its echo proves
        the upstream carries what the robot sends, whichever bridge (mosquitto's or ours)."""
        return f"{self.root}/robot/probe"

    def robot_admin(self, what: str) -> str:
        """Requests of the primary to the embedded broker (``disconnect``): checked by username there."""
        return f"{self.root}/robot/admin/{what}"

    # -- upstream bridge ------------------------------------------------------------------------
    def bridge_state(self) -> str:
        """Retained ``1``/``0`` (raw, as mosquitto's bridge notifications): is the upstream link up."""
        return f"{self.root}/bridge/state"

    def upstream_config(self) -> str:
        """Retained on the upstream broker: the robot's signed configuration (bridged in)."""
        return f"{self.root}/upstream/config"

    # -- clients --------------------------------------------------------------------------------
    def client_shutdown(self, client: str) -> str:
        return f"{self.root}/client/{client}/shutdown"

    def client_reload(self, client: str) -> str:
        return f"{self.root}/client/{client}/reload"

    # -- calls ----------------------------------------------------------------------------------
    def call(self, caller: str, part: str, resource: str) -> str:
        """``caller`` is a sender identity: ``client/<name>`` or ``part/<name>``."""
        return f"{self.root}/{caller}/call/{part}/{resource}"

    def calls_to(self, part: str) -> str:
        """The one filter a part subscribes to for every call to any of its resources."""
        return f"{self.root}/+/+/call/{part}/+"

    def reply(self, part: str, caller: str) -> str:
        return f"{self.root}/part/{part}/reply/{caller}"

    def replies_to(self, caller: str) -> str:
        return f"{self.root}/part/+/reply/{caller}"

    def call_parts(self, topic: str) -> tuple[str, str, str] | None:
        """(caller sender, part, resource) of a call topic, else None."""
        prefix = f"{self.root}/"
        if not topic.startswith(prefix):
            return None
        bits = topic[len(prefix) :].split("/")
        if len(bits) != 5 or bits[2] != "call" or bits[0] not in ("client", "part"):
            return None
        return f"{bits[0]}/{bits[1]}", bits[3], bits[4]

    # -- sessions -------------------------------------------------------------------------------
    def session_heartbeat(self, owner: str) -> str:
        """``owner`` is a sender identity (``client/<c>`` or ``part/<p>``): only it publishes here."""
        return f"{self.root}/{owner}/session/hb"

    def all_session_heartbeats(self) -> str:
        return f"{self.root}/+/+/session/hb"

    def owner_of_heartbeat(self, topic: str) -> str | None:
        prefix = f"{self.root}/"
        bits = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
        if len(bits) == 4 and bits[2:] == ["session", "hb"] and bits[0] in ("client", "part"):
            return f"{bits[0]}/{bits[1]}"
        return None

    def session_events(self, part: str) -> str:
        return f"{self.root}/part/{part}/sessions/events"

    def all_session_events(self) -> str:
        return f"{self.root}/part/+/sessions/events"

    def session_report(self, part: str) -> str:
        """Child to parent: it ended a session in its subtree (the session-end conversation)."""
        return f"{self.root}/part/{part}/sessions/report"

    def session_state(self, part: str) -> str:
        """Retained: the sessions a part tracks and the ones it saw end (re-announced on reconnect)."""
        return f"{self.root}/part/{part}/sessions/state"

    def all_session_states(self) -> str:
        return f"{self.root}/part/+/sessions/state"

    def telemetry(self, part: str, resource: str) -> str:
        return f"{self.root}/part/{part}/telemetry/{resource}"

    def all_telemetry(self) -> str:
        return f"{self.root}/part/+/telemetry/+"

    # -- subscription filters -------------------------------------------------------------------
    def all_part_states(self) -> str:
        return f"{self.root}/part/+/state"

    def all_part_heartbeats(self) -> str:
        return f"{self.root}/part/+/hb"

    def all_part_resources(self) -> str:
        return f"{self.root}/part/+/resources"

    def all_part_reports(self) -> str:
        return f"{self.root}/part/+/report"

    def all_client_shutdowns(self) -> str:
        return f"{self.root}/client/+/shutdown"

    def all_client_reloads(self) -> str:
        return f"{self.root}/client/+/reload"

    def everything(self) -> str:
        return f"{self.root}/#"

    # -- parsing --------------------------------------------------------------------------------
    def part_of(self, topic: str) -> str | None:
        """The part name in a ``.../part/<name>/...`` topic of this robot, else None."""
        prefix = f"{self.root}/part/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix) :]
        name, _, _ = rest.partition("/")
        return name or None

    def client_of(self, topic: str) -> str | None:
        prefix = f"{self.root}/client/"
        if not topic.startswith(prefix):
            return None
        name, _, _ = topic[len(prefix) :].partition("/")
        return name or None

    def sender_of(self, topic: str) -> str | None:
        """The publishing identity (``part/<p>``, ``client/<c>``) a topic of this robot is reserved to."""
        prefix = f"{self.root}/"
        if not topic.startswith(prefix):
            return None
        bits = topic[len(prefix) :].split("/", 2)
        if len(bits) >= 2 and bits[0] in IDENTITY_KINDS and bits[1]:
            return f"{bits[0]}/{bits[1]}"
        return None
