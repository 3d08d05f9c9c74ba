"""Topic rights of every identity, derived from the robot's topology: one source for both brokers.

:func:`rights` answers, for each broker username, which topic filters it may read (subscribe to and
receive) and write (publish to).  :func:`mosquitto_acl` renders them as a mosquitto ``acl_file``;
:class:`AclChecker` enforces the very same rules in the embedded broker.  The rules, and why each is
there, are in ``docs/security.md``.  In short:

- a part writes only under its own name (``part/<p>/#``: its state, heartbeats, report to its parent,
  control to its children, replies, telemetry, its calls and session heartbeats); only the primary
  writes the robot-wide topics (``robot/#``);
- a client writes only under its own name (``client/<c>/#``: calls, session heartbeats, shutdown and
  reload requests); a viewer writes nothing;
- a caller reads only the replies addressed to it, so a session's secret reaches only its owner;
- control reaches a child only from its parent (the child listens on ``part/<parent>/ctl/<child>``,
  which only the parent may write); reports reach a parent only from its child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.config.models import LAUNCHER_CLIENT, ClientRole, RobotConfig
from orchestrator.config.topology import Topology
from orchestrator.protocol.matching import FilterTrie, filter_covers
from orchestrator.protocol.topics import Identity, Topics

__all__ = ["AclChecker", "Rights", "mosquitto_acl", "rights"]


@dataclass
class Rights:
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)

    def add_read(self, *filters: str) -> None:
        self.read.extend(f for f in filters if f not in self.read)

    def add_write(self, *filters: str) -> None:
        self.write.extend(f for f in filters if f not in self.write)


def _public_reads(t: Topics) -> list[str]:
    """What every identity of the robot may read: the retained picture of the robot and its events."""
    return [
        t.all_part_states(),
        t.all_part_resources(),
        t.all_telemetry(),
        t.all_session_events(),
        t.all_session_states(),
        f"{t.root}/part/+/counters",
        f"{t.root}/part/+/metrics",
        f"{t.root}/part/+/events",
        f"{t.root}/part/+/log",
        f"{t.root}/part/+/json/#",
        f"{t.root}/robot/json/#",
        t.robot_status(),
        t.robot_liveness(),
        t.robot_timeline(),
        t.robot_notice(),
        t.robot_upstream(),
    ]


def rights(config: RobotConfig, topology: Topology) -> dict[str, Rights]:
    """username -> rights, for every identity of the robot."""
    t = Topics(config.robot)
    robot = config.robot
    out: dict[str, Rights] = {}
    discovery = (f"{config.monitoring.home_assistant_prefix}/+/{robot}/#" if config.monitoring.home_assistant
                 else None)
    for name in topology.parts:
        me = Identity(robot, "part", name)
        r = out[me.username] = Rights()
        r.add_write(f"{t.of(me)}/#")
        r.add_read(*_public_reads(t))
        r.add_read(
            t.calls_to(name),  # calls to my resources, from any client or part
            t.replies_to(me.sender),  # replies to my own calls (remote dependencies)
            t.part_heartbeat(name),  # the echo of my own heartbeats: my link to the broker works
            t.all_session_heartbeats(),  # I keep the expiry timer of the sessions that drive me
            t.all_part_heartbeats(),  # liveness of the parts I depend on
        )
        parent = topology.parent(name)
        if parent is not None:
            r.add_read(t.part_control(parent, name))
        for child in topology.children(name):
            r.add_read(t.part_report(child), t.session_report(child))
        if parent is None:  # the primary
            r.add_write(f"{t.root}/robot/#")
            if discovery:  # MQTT discovery, under the robot's own node id
                r.add_write(discovery)
            r.add_read(t.all_client_shutdowns(), t.all_client_reloads(), t.bridge_state(), t.upstream_config(),
                       t.robot_probe())
    for c in config.clients:
        me = Identity(robot, "client", c.name)
        r = out[me.username] = Rights()
        r.add_read(*_public_reads(t))
        if discovery:  # Home Assistant logs in as a client of the robot (a viewer): it reads its discovery
            r.add_read(discovery)
        if c.role == ClientRole.OPERATOR:
            r.add_write(f"{t.of(me)}/#")
            r.add_read(t.replies_to(me.sender))
    launcher = Identity(robot, "client", LAUNCHER_CLIENT)
    r = out[launcher.username] = Rights()
    r.add_read(*_public_reads(t), t.all_part_reports(), t.all_part_heartbeats())
    r.add_write(t.client_reload(LAUNCHER_CLIENT), t.client_shutdown(LAUNCHER_CLIENT))
    bridge = Identity(robot, "bridge", "upstream")
    r = out[bridge.username] = Rights()
    r.add_write(t.bridge_state(), f"{t.root}/upstream/#", t.robot_probe())  # the probe's echo comes back in
    r.add_read(*_public_reads(t), t.robot_probe())
    for c in config.clients:
        if c.remote:
            me = Identity(robot, "client", c.name)
            r.add_write(f"{t.of(me)}/#")
            r.add_read(t.replies_to(me.sender))
    return out


def mosquitto_acl(rules: dict[str, Rights], header: str = "") -> str:
    """The rules as a mosquitto ``acl_file`` (anonymous clients get no right at all)."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines.append("# Generated by `orchestrator acl`: one block per identity, nothing for anonymous clients.")
    for user, r in rules.items():
        lines += ["", f"user {user}"]
        lines += [f"topic read {f}" for f in r.read]
        lines += [f"topic write {f}" for f in r.write]
    return "\n".join(lines) + "\n"


class AclChecker:
    """The same rules for the embedded broker: ``checker(username, action, topic) -> bool``.

    ``publish`` needs a write filter matching the topic; ``receive`` (every delivery, retained ones
    included) a read filter matching it; ``subscribe`` a read filter that covers *every* topic the
    subscription can match (``part/+`` does not admit ``part/#``).  Unknown users have no right.
    """

    def __init__(self, rules: dict[str, Rights]) -> None:
        self._read: dict[str, FilterTrie] = {}
        self._write: dict[str, FilterTrie] = {}
        self._read_list: dict[str, list[str]] = {}
        for user, r in rules.items():
            self._read[user] = _trie(r.read)
            self._write[user] = _trie(r.write)
            self._read_list[user] = list(r.read)

    def __call__(self, username: str | None, action: str, topic: str) -> bool:
        user = username or ""
        if action == "publish":
            w = self._write.get(user)
            return w is not None and bool(w.match(topic))
        if action == "receive":
            rd = self._read.get(user)
            return rd is not None and bool(rd.match(topic))
        if action == "subscribe":
            return any(filter_covers(p, topic) for p in self._read_list.get(user, ()))
        return False


def _trie(filters: list[str]) -> FilterTrie:
    trie = FilterTrie()
    for f in filters:
        trie.add(f)
    return trie


AclCallback = Callable[[str | None, str, str], bool]
