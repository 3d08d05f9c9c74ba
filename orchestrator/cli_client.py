"""Commands that act on a running robot: ``status``, ``resources``, ``call``, ``sessions``, ``shutdown``,
``reload``.

Each takes the robot the same way (:mod:`orchestrator.cli_target`): ``-c CONFIG``, or ``--robot NAME
--broker URL`` with no file and no plugin; a config on disk that no longer validates never keeps anyone
from stopping a motor or the robot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from orchestrator.cli import _run, app, console
from orchestrator.cli_target import (
    EXIT_CONFIG,
    BrokerOpt,
    ConfigOpt,
    CredentialsOpt,
    IdentityOpt,
    LegacyConfigArg,
    RobotOpt,
    Target,
    err_console,
    resolve,
)
from orchestrator.errors import ProtocolError

__all__ = ["call", "reload", "resources", "sessions", "shutdown", "status"]

STATUS_SETTLE_S = 0.3  # quiet time that ends the retained picture
LIVENESS_WAIT_S = 1.3  # the primary reports heartbeat ages once a second


def _part_order(t: Target, names: list[str]) -> list[str]:
    if t.loaded is None:
        return names
    known = t.loaded.topology.start_order()
    return known + [n for n in names if n not in known]


# -- status ----------------------------------------------------------------------------------------
async def _status(t: Target) -> tuple[Any, float]:
    from orchestrator.observe import RobotView

    view = RobotView(t.robot, t.urls, username=t.username, password=t.password, tls=t.tls,
                     client_id=f"{t.robot}.cli.{t.identity}.status", connect_timeout=3.0, logs=False,
                     telemetry=False, fail_fast=True)
    if t.primary is not None:  # robot topics then believed from the primary only
        from orchestrator.protocol.topics import Topics

        view.topics = Topics(t.robot, t.primary)
    async with view:
        await view.settle(quiet_s=STATUS_SETTLE_S, at_most_s=1.5)
        if view.status is not None and view.status.state not in ("offline", "stopped"):
            end = time.monotonic() + LIVENESS_WAIT_S  # heartbeat ages: the next liveness report
            while time.monotonic() < end and not any(p.pulse for p in view.parts.values()):
                view.changed.clear()
                try:
                    await asyncio.wait_for(view.changed.wait(), end - time.monotonic())
                except TimeoutError:
                    break
        return view, time.time()


def _upstream_of(view: Any) -> dict[str, Any] | None:
    """The upstream (cloud) link as the primary last published it (``robot/upstream``, retained), else as its
    robot status names it; None for a robot without an upstream."""
    if view.upstream is not None:
        return {k: v for k, v in view.upstream.model_dump(mode="json").items() if k in ("state", "since", "reason",
                                                                                          "rule")}
    if view.status is not None and view.status.upstream not in ("", "none"):
        return {"state": view.status.upstream, "since": None, "reason": "", "rule": ""}
    return None


@app.command()
def status(
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Every part: state, liveness (live / silent / offline), heartbeat age, restarts.  Exit 1 (at once) when
    nothing of the robot is on the broker."""
    t = resolve(config or config_opt, robot, broker_url, identity, credentials)
    view, _ = _run(_status(t))
    topics = view.topics
    names = _part_order(t, view.ordered_parts())
    parts: dict[str, Any] = {}
    for name in names:
        pv = view.parts.get(name)
        refused = view.refused_topics.get(topics.part_state(name))
        if pv is None or pv.state is None:
            row: dict[str, Any] = {"state": "unknown", "online": False, "liveness": "unknown"}
            if refused:  # a malformed or planted retained message: an error row, not a traceback
                row = {"state": "invalid", "online": False, "liveness": "unknown",
                       "reason": f"unreadable state ({refused})"}
            parts[name] = row
            continue
        j = pv.to_json(view.status)
        parts[name] = {k: j[k] for k in ("state", "online", "liveness", "heartbeat_age_s", "restarts", "birth",
                                         "pid", "parent", "reason")}
    if view.status is not None:
        robot_state: str | None = view.status.state
    elif topics.robot_status() in view.refused_topics:
        robot_state = "invalid (unreadable robot status)"
    else:
        robot_state = None
    running = robot_state is not None and robot_state not in ("offline", "stopped") \
        and not robot_state.startswith("invalid")
    nothing = view.status is None and not view.refused_topics and not any(p.state for p in view.parts.values())
    upstream = _upstream_of(view)
    if as_json:
        print(json.dumps({"robot": t.robot, "state": robot_state, "running": running, "upstream": upstream,
                          "parts": parts}, indent=2))
        raise typer.Exit(1 if nothing else 0)
    if nothing:
        err_console.print(f"robot {t.robot} is not running: nothing of it on the broker at "
                          f"{', '.join(f'{h}:{p}' for h, p in t.urls)}", style="red", highlight=False, markup=False)
        raise typer.Exit(1)
    title = f"robot {t.robot}: {robot_state or 'unknown (no status from a primary)'}"
    if not running:
        title += " (not running)"
    if upstream is not None:
        title += f"; upstream link {upstream['state']}"
        if upstream.get("since"):
            title += f" since {time.strftime('%H:%M:%S', time.localtime(upstream['since']))}"
        if upstream.get("rule") == "stopped":
            title += " (every session ended, every actuator stopped)"
        elif upstream.get("rule") == "nothing":
            title += " (default management off: nothing stopped)"
        if upstream.get("reason"):
            title += f": {upstream['reason']}"
    table = Table(title=Text(title))
    for col in ("part", "parent", "state", "liveness", "heartbeat age s", "restarts", "pid", "reason"):
        table.add_column(col)
    for name, p in parts.items():
        live = p["liveness"]
        colour = "green" if p["state"] == "running" and live == "live" else \
            "red" if p["state"] in ("offline", "unknown", "invalid") or live in ("offline", "silent") else "yellow"
        age = p.get("heartbeat_age_s")
        table.add_row(name, str(p.get("parent") or "-"), Text(p["state"], style=colour),
                      Text(live, style="green" if live == "live" else "red" if live != "unknown" else "yellow"),
                      "-" if age is None else f"{age:.2f}", str(p.get("restarts") or 0), str(p.get("pid") or "-"),
                      Text(str(p.get("reason") or "")))
    console.print(table)


# -- shutdown --------------------------------------------------------------------------------------
class _Follow:
    """The primary's going_down notice and timeline of the shutdown *we* asked for, believed only from the
    primary (known from the config, else from its retained status: the status names its publisher)."""

    def __init__(self, t: Target, topics: Any) -> None:
        self.topics = topics
        self.primary = t.primary
        self.shutdown_id: str | None = None
        self.timeline: Any = None
        self.done = asyncio.Event()
        self.known = asyncio.Event()  # the primary's retained status was read
        self.state: str | None = None
        self.asked = False

    def _from_primary(self, msg: Any) -> Any:
        from orchestrator.protocol.codec import decode

        try:
            env = decode(msg.payload)
        except ProtocolError:
            return None
        if self.primary is None or env.src != f"part/{self.primary}" or not self.topics.authentic(msg.topic, env.src):
            return None
        return env

    def on_status(self, msg: Any) -> None:
        from orchestrator.protocol.codec import decode
        from orchestrator.protocol.messages import RobotStatus

        try:
            env = decode(msg.payload)
            st = env.parse(RobotStatus)
        except ProtocolError:
            return
        if env.src != f"part/{st.primary}" or not self.topics.authentic(msg.topic, env.src):
            return
        if self.primary is None:
            self.primary = st.primary
        elif st.primary != self.primary:
            return
        self.state = st.state
        self.known.set()

    def on_notice(self, msg: Any) -> None:
        from orchestrator.protocol.messages import Notice

        env = self._from_primary(msg)
        if env is None or msg.retain or not self.asked:
            return
        try:
            n = env.parse(Notice)
        except ProtocolError:
            return
        if n.kind == "going_down" and self.shutdown_id is None:
            self.shutdown_id = n.shutdown_id

    def on_timeline(self, msg: Any) -> None:
        from orchestrator.protocol.messages import Timeline

        env = self._from_primary(msg)
        if env is None or msg.retain or not self.asked:
            return  # a retained timeline is an earlier run's
        try:
            tl = env.parse(Timeline)
        except ProtocolError:
            return
        if self.shutdown_id is not None and tl.shutdown_id != self.shutdown_id:
            return
        self.timeline = tl
        self.done.set()


@app.command()
def shutdown(
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    reason: Annotated[str, typer.Option(help="recorded in the timeline")] = "orchestrator shutdown",
    wait: Annotated[bool, typer.Option("--wait", help="wait for the bottom-up shutdown to finish and print its "
                                                      "timeline")] = False,
    timeout: Annotated[float | None, typer.Option(min=0.1, max=3600, help="seconds to wait with --wait "
                                                  "(default: the robot's shutdown bound + 5, else 60)")] = None,
    timeline_json: Annotated[Path | None, typer.Option(help="with --wait: also write the timeline here")] = None,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Ask the robot's primary to shut the robot down bottom-up (over MQTT)."""
    from orchestrator.protocol.codec import encode
    from orchestrator.protocol.messages import ShutdownRequest
    from orchestrator.protocol.topics import Topics

    t = resolve(config or config_opt, robot, broker_url, identity, credentials)
    topics = Topics(t.robot, t.primary)
    follow = _Follow(t, topics)
    bound = timeout or ((t.loaded.config.shutdown_timeout_s + 5.0) if t.loaded is not None else 60.0)

    async def go() -> None:
        async with t.mqtt() as c:
            if wait:
                await c.subscribe(topics.robot_status(), follow.on_status)
                await c.subscribe(topics.robot_notice(), follow.on_notice)
                await c.subscribe(topics.robot_timeline(), follow.on_timeline)
                with contextlib.suppress(TimeoutError):  # the retained status says who the primary is
                    await asyncio.wait_for(follow.known.wait(), 1.0)
                if not follow.known.is_set() or follow.state in ("offline", "stopped"):
                    err_console.print(f"robot {t.robot} is not running ({follow.state or 'no status from a primary'} "
                                      "on the broker)", style="red", highlight=False, markup=False)
                    raise typer.Exit(1)
            follow.asked = True
            await c.publish(topics.client_shutdown(t.identity), encode(t.id.sender, ShutdownRequest(reason=reason)),
                            qos=1, timeout=3.0)
            if wait:
                console.print(f"shutdown requested; waiting for the timeline (at most {bound:g} s)", highlight=False)
                try:
                    await asyncio.wait_for(follow.done.wait(), bound)
                except TimeoutError:
                    pass

    started = time.time()
    _run(go())
    if not wait:
        console.print("shutdown requested")
        return
    if follow.timeline is None:
        err_console.print(f"no shutdown timeline from the primary within {bound:g} s (is the robot running? "
                          "`orchestrator status`)", style="red", highlight=False, markup=False)
        raise typer.Exit(1)
    from orchestrator.launcher.up import timeline_table

    tl = follow.timeline
    console.print(timeline_table(t.robot, tl))
    forced = [e.part for e in tl.entries if e.forced]
    took = ((tl.finished_at or time.time()) - tl.started_at) * 1000
    console.print(f"robot {t.robot} stopped in {took:.0f} ms (shutdown {tl.shutdown_id})"
                  + (f"; FORCED: {', '.join(forced)}" if forced else "")
                  + f"; {time.time() - started:.1f} s with this command", highlight=False)
    if timeline_json is not None:
        timeline_json.write_text(json.dumps({"timeline": tl.model_dump(mode="json")}, indent=2))
    if forced:
        raise typer.Exit(1)


# -- reload ----------------------------------------------------------------------------------------
@app.command()
def reload(
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    reason: Annotated[str, typer.Option(help="recorded in the parts' logs")] = "orchestrator reload",
    timeout: Annotated[float, typer.Option(min=0.1, max=600, help="seconds to wait for every running part's "
                                           "report")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Ask the robot to re-read its configuration, then report what each part rebuilt or removed, and what
    a rebuild stopped through a shared dependency (a base rebuilt for one motor stops the other)."""
    from orchestrator.protocol.codec import decode, encode
    from orchestrator.protocol.messages import PartState, ReloadRequest
    from orchestrator.protocol.topics import Topics

    # strict: the robot would refuse to reload a file that does not validate; say why here
    t = resolve(config or config_opt, robot, broker_url, identity, credentials, strict=True)
    topics = Topics(t.robot, t.primary)
    running: set[str] = set()
    reports: dict[str, dict[str, Any]] = {}
    asked = asyncio.Event()
    all_in = asyncio.Event()

    def on_state(msg: Any) -> None:
        part = topics.part_of(msg.topic)
        try:
            env = decode(msg.payload)
            st = env.parse(PartState)
        except ProtocolError:
            return
        if part is not None and topics.authentic(msg.topic, env.src) and st.state.value == "running":
            running.add(part)

    def on_event(msg: Any) -> None:
        part = topics.part_of(msg.topic)
        try:
            env = decode(msg.payload)
        except ProtocolError:
            return
        if part is None or msg.retain or not asked.is_set() or not topics.authentic(msg.topic, env.src):
            return
        if env.body.get("kind") != "reload" or len(reports) >= 10_000:
            return
        reports[part] = dict(env.body)
        if running and running <= set(reports):
            all_in.set()

    async def go() -> None:
        async with t.mqtt() as c:
            await c.subscribe(topics.all_part_states(), on_state)
            await c.subscribe(f"{topics.root}/part/+/events", on_event)
            await asyncio.sleep(STATUS_SETTLE_S)  # the retained states: which parts run (and will report)
            asked.set()
            await c.publish(topics.client_reload(t.identity), encode(t.id.sender, ReloadRequest(reason=reason)),
                            qos=1, timeout=3.0)
            if not running:
                return
            try:
                await asyncio.wait_for(all_in.wait(), timeout)
            except TimeoutError:
                pass

    _run(go())
    missing = sorted(running - set(reports))
    if as_json:
        print(json.dumps({"robot": t.robot, "parts": reports, "missing": missing}, indent=2, default=str))
    elif not running:
        err_console.print(f"reload requested, but no part of robot {t.robot} is running", style="red")
        raise typer.Exit(1)
    else:
        _print_reload(t, reports, missing)
    refused = [p for p, r in reports.items() if r.get("level") == "error"]
    if missing or refused:
        raise typer.Exit(1)


def _print_reload(t: Target, reports: dict[str, dict[str, Any]], missing: list[str]) -> None:
    table = Table(title=f"reload of {t.robot}")
    for col in ("part", "rebuilt", "removed", "stopped through a shared dependency"):
        table.add_column(col)
    for part in _part_order(t, sorted(reports)):
        r = reports.get(part)
        if r is None:
            continue
        if r.get("level") == "error":
            table.add_row(part, Text(str(r.get("text", "refused"))[:200], style="red"), "", "")
            continue
        got = r.get("stopped")
        stopped: dict[str, Any] = got if isinstance(got, dict) else {}
        table.add_row(part, ", ".join(map(str, r.get("rebuilt") or [])) or "-",
                      ", ".join(map(str, r.get("removed") or [])) or "-",
                      Text("; ".join(f"{k} (by {', '.join(map(str, v))})" for k, v in stopped.items()) or "-",
                           style="yellow" if stopped else ""))
    console.print(table)
    for part in _part_order(t, sorted(reports)):
        again = reports[part].get("stopped") if part in reports else None
        if isinstance(again, dict):
            for res, by in again.items():
                console.print(f"[yellow]note[/]: {res} was stopped (not rebuilt): {', '.join(map(str, by))}, "
                              "rebuilt, drives it; start it again if it should move", highlight=False)
    for part in missing:
        err_console.print(f"part {part}: no reload report (is it running?)", style="red", highlight=False,
                          markup=False)


# -- resources, call, sessions ---------------------------------------------------------------------
@app.command()
def resources(
    config: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    methods: Annotated[bool, typer.Option("--methods", help="each resource's methods: arguments, types, "
                                                             "whether it moves")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """List what every part hosts (from the retained topics): model, API, status, and with ``--methods``
    what each resource can be called with (no plugin needed: the parts list it)."""
    t = resolve(config, robot, broker_url, identity, credentials)

    async def go() -> dict[str, list[dict[str, Any]]]:
        async with t.client() as client:
            return await client.resources()

    listing = _run(go())
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    from orchestrator.cli_plugins import signature

    table = Table(title=f"resources of {t.robot}")
    for col in ("part", "resource", "model", "api", "status", "reason"):
        table.add_column(col)
    if methods:
        table.add_column("methods (* moves)")
    for part_name in _part_order(t, sorted(listing)):
        for r in listing.get(part_name, []):
            colour = "green" if r["status"] == "ready" else "red"
            row: list[str | Text] = [part_name, Text(r["name"]), Text(r["model"]), Text(r.get("api") or "?"),
                   Text(r["status"], style=colour), Text(r.get("reason") or "")]
            if methods:
                row.append(Text("\n".join(("* " if m.get("actuating") else "  ") + signature(m)
                                          for m in r.get("methods") or [])))
            table.add_row(*row)
    console.print(table)


STATUS_WAIT_S = 1.0  # for the retained robot status: it names the parts, so a call to no part fails at once


@app.command()
def call(
    target: Annotated[str, typer.Argument(help="PART/RESOURCE")],
    method: Annotated[str, typer.Argument(help="method name, e.g. set_power")],
    config: ConfigOpt = None,
    robot: RobotOpt = None,
    args: Annotated[str, typer.Option("--args", help="keyword arguments as a JSON object")] = "{}",
    timeout: Annotated[float, typer.Option(help="seconds")] = 10.0,
    hold: Annotated[float | None, typer.Option(
        help="make the call in a session and keep it alive this many seconds; what the call set moving "
             "stops when the session closes (default: no session, the command persists)")] = None,
    broker_url: BrokerOpt = None,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Make one call and print the result as JSON (exit 1 with the error code on failure)."""
    from orchestrator.protocol.codec import check_value
    from orchestrator.protocol.topics import valid_level

    try:
        kwargs = json.loads(args)
        if not isinstance(kwargs, dict):
            raise ValueError("not an object")
        check_value(kwargs, "--args")  # nesting, size, non-finite numbers: what the part would refuse
    except (ValueError, RecursionError, ProtocolError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        err_console.print(f"--args must be a JSON object: {why}", style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None
    part_name, _, resource = target.partition("/")
    if not valid_level(part_name) or not valid_level(resource):
        err_console.print(f"{target[:100]!r}: expected PART/RESOURCE (names without '/', '+', '#')", style="red",
                          highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG)
    if not (math.isfinite(timeout) and 0 < timeout <= 3600) or (hold is not None and not
                                                                (math.isfinite(hold) and 0 <= hold <= 86400)):
        err_console.print("--timeout must be within (0, 3600] s and --hold within [0, 86400] s", style="red")
        raise typer.Exit(EXIT_CONFIG)
    t = resolve(config, robot, broker_url, identity, credentials)

    async def go() -> Any:
        async with t.client(sessions=hold is not None) as client:
            # the retained robot status arrives right after connecting: with it, a call to a part the robot
            # does not have, or one that is offline, fails at once instead of waiting out --timeout
            try:
                await asyncio.wait_for(client.rpc.status_seen.wait(), min(STATUS_WAIT_S, timeout))
            except TimeoutError:
                pass
            result = await client.call(target, method, kwargs, timeout=timeout)
            if hold:
                print(json.dumps(result, default=str), flush=True)
                await asyncio.sleep(hold)  # the session's heartbeats run on their own thread meanwhile
            return result

    result = _run(go(), show_code=True)
    if not hold:
        print(json.dumps(result, default=str))


@app.command()
def sessions(
    config: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """List open sessions: owner, age, last heartbeat, the resources each owns on each part."""
    t = resolve(config, robot, broker_url, identity, credentials)

    async def go() -> list[dict[str, Any]]:
        async with t.client() as client:
            await asyncio.sleep(0.2)  # let the retained part states arrive: they say which parts run
            return await client.sessions.list()

    rows = _run(go())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"sessions of {t.robot}")
    for col in ("session", "owner", "part", "age s", "last heartbeat s ago", "window s", "owns"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["session"], r["part"])):
        table.add_row(r["session"], r["owner"], r["part"], f"{r['age_s']:.1f}",
                      "-" if r["last_heartbeat_s_ago"] is None else f"{r['last_heartbeat_s_ago']:.2f}",
                      f"{r['window_s']:g}", ", ".join(r["resources"]) or "-")
    console.print(table)
