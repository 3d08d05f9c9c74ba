"""Watching a robot from the command line: ``echo``, ``logs`` and ``monitor`` (docs/operating.md).

None of them needs the robot's plugins, and none needs its config file: ``--robot NAME --broker URL``
(with ``--identity`` and ``--credentials`` for a robot with security on) is enough.  Everything they
show comes from the robot's topics, each message believed only from the identity its topic is
reserved to (a forged one is shown as such by ``echo`` and dropped by the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Annotated, Any

import typer

from orchestrator.cli import _run, app
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
from orchestrator.errors import ConfigError

WatchTarget = Target  # the name this module used before the resolver served every client command

def _view(t: WatchTarget, **kwargs: Any) -> Any:
    from orchestrator.observe import RobotView

    return RobotView(t.robot, t.urls, username=t.username, password=t.password, tls=t.tls,
                     client_id=f"{t.robot}.watch.{t.identity}.{os.getpid()}", connect_timeout=3.0, fail_fast=True,
                     **kwargs)


# -- echo ------------------------------------------------------------------------------------------
def _render(topics: Any, topic: str, payload: bytes, retained: bool) -> dict[str, Any]:
    from orchestrator.errors import ProtocolError
    from orchestrator.protocol.codec import decode

    out: dict[str, Any] = {"topic": topic}
    if retained:
        out["retained"] = True
    if "/json/" in topic:  # a JSON mirror: shown as it is
        try:
            out["json"] = json.loads(payload)
        except ValueError:
            out["raw"] = payload[:200].decode("utf-8", "replace")
        return out
    try:
        env = decode(payload)
    except ProtocolError as exc:
        out["undecodable"] = exc.message[:200]
        out["raw"] = payload[:64].hex()
        return out
    out.update(src=env.src, birth=env.birth, ts=env.ts, body=env.body)
    if not topics.authentic(topic, env.src):
        out["forged"] = f"published on a topic reserved to {topics.sender_of(topic) or 'someone else'}"
    return out


@app.command()
def echo(
    patterns: Annotated[list[str], typer.Argument(help="topic filters below the robot's root, e.g. 'part/+/state' "
                                                       "or '#' (MQTT wildcards)")],
    config: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    count: Annotated[int | None, typer.Option(help="stop after this many messages", min=1)] = None,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds", min=0.1)] = None,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Decode and print the messages of robot topics as JSON lines (like ``ros2 topic echo``)."""
    from orchestrator.protocol.topics import Topics
    from orchestrator.transport.client import MqttClient

    t = resolve(config, robot, broker_url, identity, credentials)
    topics = Topics(t.robot)
    filters = []
    for p in patterns[:32]:
        p = p.strip("/")
        full = p if p.startswith(topics.root + "/") or p == topics.root else f"{topics.root}/{p}"
        if not full or any(len(level) > 128 for level in full.split("/")):
            err_console.print(f"{p[:80]!r}: not a topic filter", style="red", highlight=False, markup=False)
            raise typer.Exit(EXIT_CONFIG)
        filters.append(full)

    async def go() -> None:
        seen = 0
        end = None if timeout is None else time.monotonic() + timeout
        async with MqttClient(f"{t.robot}.echo.{os.getpid()}", t.urls, connect_timeout=3.0, username=t.username,
                              password=t.password, tls=t.tls) as c, c.messages(*filters) as stream:
            while count is None or seen < count:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    m = await stream.get(timeout=left)
                except TimeoutError:
                    return
                seen += 1
                print(json.dumps(_render(topics, m.topic, m.payload, m.retain), default=str), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


# -- logs ------------------------------------------------------------------------------------------
@app.command()
def logs(
    part: Annotated[str | None, typer.Argument(help="only this part (default: every part)")] = None,
    config: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds", min=0.1)] = None,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Follow what the parts log (``monitoring.log_level`` and above, rate limited) and their events."""
    t = resolve(config, robot, broker_url, identity, credentials)

    async def go() -> None:
        got: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        async with _view(t, telemetry=False) as view:
            def put(ev: Any) -> None:
                if part is None or ev.part == part:
                    with contextlib.suppress(asyncio.QueueFull):
                        got.put_nowait(ev)
            view.listeners.append(put)
            end = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return
                try:
                    ev = await asyncio.wait_for(got.get(), left)
                except TimeoutError:
                    return
                if as_json:
                    print(json.dumps(ev.to_json()), flush=True)
                else:
                    stamp = time.strftime("%H:%M:%S", time.localtime(ev.at))
                    print(f"{stamp} {ev.level.upper():7} [{ev.part}] {ev.kind}: {ev.text}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


# -- monitor ---------------------------------------------------------------------------------------
@app.command()
def monitor(
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
    robot: RobotOpt = None,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines for scripts instead of the terminal view")]
    = False,
    interval: Annotated[float, typer.Option(help="seconds between snapshots (--json)", min=0.05, max=3600)] = 1.0,
    timeout: Annotated[float | None, typer.Option(help="stop after this many seconds", min=0.1)] = None,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """The robot live: parts, resources and who owns them, sessions, the upstream link, events, telemetry.

    Keys in the terminal view: / filter, s stop the selected resource, q quit."""
    t = resolve(config or config_opt, robot, broker_url, identity, credentials)
    if as_json:
        with contextlib.suppress(KeyboardInterrupt):
            _run(_json_lines(t, interval, timeout))
        return
    if not sys.stdout.isatty():
        err_console.print("monitor needs a terminal; use --json in scripts", style="red")
        raise typer.Exit(EXIT_CONFIG)
    from orchestrator.monitor import MonitorApp

    try:
        MonitorApp(t, timeout=timeout).run()
    except ConfigError as exc:
        err_console.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None


async def _json_lines(t: WatchTarget, interval: float, timeout: float | None) -> None:
    """One ``{"snapshot": ...}`` line every ``interval``, one ``{"event": ...}`` line per event as it comes."""
    async with _view(t) as view:
        events: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        def put(ev: Any) -> None:
            with contextlib.suppress(asyncio.QueueFull):
                events.put_nowait(ev)

        view.listeners.append(put)
        await view.settle()
        end = None if timeout is None else time.monotonic() + timeout
        next_snap = time.monotonic()
        while end is None or time.monotonic() < end:
            now = time.monotonic()
            if now >= next_snap:
                print(json.dumps({"snapshot": view.to_json()}, default=str), flush=True)
                next_snap = now + interval
            wait = next_snap - time.monotonic()
            if end is not None:
                wait = min(wait, end - time.monotonic())
            try:
                ev = await asyncio.wait_for(events.get(), max(0.0, wait))
                print(json.dumps({"event": ev.to_json()}), flush=True)
            except TimeoutError:
                pass
