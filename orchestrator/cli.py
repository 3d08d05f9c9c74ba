"""The ``orchestrator`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.config.loader import LoadedConfig, load_config
from orchestrator.config.models import RobotConfig
from orchestrator.errors import ConfigError, OrchestratorError, ProtocolError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run a robot made of several parts over a local MQTT broker.")
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True)

EXIT_CONFIG = 2


def _setup_logging(verbose: bool) -> None:
    from orchestrator.runtime.main import setup_logging

    setup_logging(verbose)


T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T], *, show_code: bool = False) -> T:
    """Run a command's coroutine; an OrchestratorError (no broker, a refused call...) is printed and
    the command exits with code 1 instead of a traceback."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:  # includes missing credentials: fixed on disk, not by retrying
        err_console.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None
    except OrchestratorError as exc:
        text = f"{exc.code}: {exc}" if show_code else str(exc)
        err_console.print(text, style="red", highlight=False, markup=False)
        raise typer.Exit(1) from None


def _load(path: Path) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[bold red]invalid configuration[/] ({len(exc.problems)} problem(s)):")
        for p in exc.problems:
            err_console.print(f"  {p}", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None


def parse_urls(text: str) -> list[tuple[str, int]]:
    from orchestrator.runtime.main import parse_urls as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


ConfigArg = Annotated[Path, typer.Argument(help="robot configuration (YAML)")]
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="broker URL(s), comma separated; "
                                                "default: from the config")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
IdentityOpt = Annotated[str | None, typer.Option("--identity", "-i", help="client identity to act as "
                                                   "(default: the config's first operator)")]
CredentialsOpt = Annotated[Path | None, typer.Option("--credentials", envvar="ORCHESTRATOR_CREDENTIALS",
                                                      help="credentials directory (default: from the config)")]


def _access(loaded: LoadedConfig, identity: str | None, credentials: Path | None) -> Any:
    """The CLI's broker credential: a client identity of the robot, its password from the credentials dir."""
    from orchestrator.protocol.topics import ClientId
    from orchestrator.security.access import Access

    cfg = loaded.config
    name = identity or cfg.default_client()
    if name is None:
        err_console.print(f"[red]{loaded.path}: the robot has no operator client identity (see 'clients')[/]")
        raise typer.Exit(EXIT_CONFIG)
    if not cfg.security.insecure and name not in {c.name for c in cfg.clients}:
        err_console.print(f"[red]{loaded.path}: no client identity {name!r} "
                          f"(clients: {', '.join(c.name for c in cfg.clients)})[/]", highlight=False)
        raise typer.Exit(EXIT_CONFIG)
    try:
        return Access.of(cfg, loaded.path, ClientId(cfg.robot, name), credentials)
    except ConfigError as exc:
        err_console.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None


@app.command()
def validate(config: ConfigArg) -> None:
    """Validate a configuration: exit 0 if it is valid, 2 with every problem if not."""
    loaded = _load(config)
    topo = loaded.topology
    console.print(f"[green]ok[/]: robot {loaded.config.robot!r}, {len(topo.parts)} parts, "
                  f"primary {topo.primary!r}, shutdown bound {topo.shutdown_bound():.2f} s")


@app.command()
def schema() -> None:
    """Print the JSON Schema of the robot configuration (for editors)."""
    print(json.dumps(RobotConfig.model_json_schema(), indent=2))


@app.command()
def broker(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind (0: any free port)", min=0, max=65535)] = 18830,
    verbose: Verbose = False,
) -> None:
    """Run the embedded broker alone (until Ctrl-C)."""
    _setup_logging(verbose)
    from orchestrator.broker import run_broker

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_broker(host, port))


@app.command()
def part(
    config: ConfigArg,
    name: Annotated[str, typer.Option("--name", help="which part of the config to run")],
    broker_url: BrokerOpt = None,
    credentials: CredentialsOpt = None,
    verbose: Verbose = False,
) -> None:
    """Run one part (a process of its own)."""
    from orchestrator.runtime.main import part_main

    raise typer.Exit(part_main(str(config), name, broker_url, verbose, str(credentials) if credentials else None))


@app.command()
def up(
    config: ConfigArg,
    timeline_json: Annotated[Path | None, typer.Option(help="also write the shutdown timeline here")] = None,
    credentials: CredentialsOpt = None,
    verbose: Verbose = False,
) -> None:
    """Start the robot: the embedded broker, then every part; Ctrl-C stops it bottom-up."""
    _setup_logging(verbose)
    loaded = _load(config)
    from orchestrator.launcher.up import run_up

    code = _run(run_up(loaded, timeline_json=timeline_json, console=console, credentials=credentials))
    raise typer.Exit(code)


@app.command()
def credentials(
    config: ConfigArg,
    directory: Annotated[Path | None, typer.Option("--dir", envvar="ORCHESTRATOR_CREDENTIALS",
                                                    help="where (default: the config's security.credentials)")] = None,
    rotate: Annotated[bool, typer.Option(help="replace every secret (then restart the robot and its broker)")] = False,
) -> None:
    """Create the robot's credentials: a secret per part and client, the session key, the password and ACL
    files (owner-only).  Existing secrets are kept unless --rotate."""
    from orchestrator.security.access import store_for
    from orchestrator.security.acl import mosquitto_acl, rights
    from orchestrator.security.credentials import identities_of

    loaded = _load(config)
    cfg = loaded.config
    store = store_for(cfg, loaded.path, directory)
    acl = mosquitto_acl(rights(cfg, loaded.topology), header=f"robot {cfg.robot}, from {loaded.path}")
    made = store.ensure(identities_of(cfg), rotate=rotate, acl=acl)
    secrets_made = [m for m in made if m.endswith((".secret", ".key"))]
    console.print(f"credentials of robot {cfg.robot} in {store.directory}: "
                  f"{len(secrets_made)} secret(s) created, password and ACL files written", highlight=False)


@app.command()
def acl(config: ConfigArg) -> None:
    """Print the broker's topic rights for this robot as a mosquitto acl_file (the embedded broker enforces
    the same rules)."""
    from orchestrator.security.acl import mosquitto_acl, rights

    loaded = _load(config)
    print(mosquitto_acl(rights(loaded.config, loaded.topology),
                        header=f"robot {loaded.config.robot}, from {loaded.path}"), end="")


async def _read_retained(urls: list[tuple[str, int]], cfg: RobotConfig, access: Any, filters: list[str],
                         settle_s: float = 0.3) -> dict[str, bytes]:
    from orchestrator.transport.client import MqttClient

    got: dict[str, bytes] = {}
    async with MqttClient(f"{cfg.robot}.cli.{os.getpid()}", urls, connect_timeout=3.0,
                          username=access.username, password=access.password) as c:
        async with c.messages(*filters) as stream:
            while True:
                try:
                    m = await stream.get(timeout=settle_s)
                except TimeoutError:
                    break
                got[m.topic] = m.payload
    return got


def _authentic(topics: Any, topic: str, raw: bytes) -> Any:
    """The envelope of a retained message, if it decodes and comes from the identity its topic is reserved to."""
    from orchestrator.protocol.codec import decode

    env = decode(raw)
    if not topics.authentic(topic, env.src):
        raise ProtocolError(f"published by {env.src[:80]!r}, not by its owner")
    return env


@app.command()
def status(
    config: ConfigArg,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Print every part's state from the retained topics."""
    from orchestrator.protocol.messages import PartState, RobotStatus
    from orchestrator.protocol.topics import Topics

    loaded = _load(config)
    cfg = loaded.config
    t = Topics(cfg.robot, loaded.topology.primary)
    urls = parse_urls(broker_url) if broker_url else cfg.broker.client_urls()
    got = _run(_read_retained(urls, cfg, _access(loaded, identity, credentials), [t.all_part_states(),
                                                                                  t.robot_status()]))
    parts: dict[str, Any] = {}
    for name in loaded.topology.start_order():
        raw = got.get(t.part_state(name))
        if raw is None:
            parts[name] = {"state": "unknown", "online": False}
            continue
        try:
            env = _authentic(t, t.part_state(name), raw)
            st = env.parse(PartState)
        except ProtocolError as exc:  # a malformed or planted retained message: an error row, not a traceback
            parts[name] = {"state": "invalid", "online": False, "reason": f"unreadable state: {exc.message[:200]}"}
            continue
        parts[name] = {"state": st.state.value, "online": st.state.value not in ("offline", "stopped"),
                       "birth": env.birth, "pid": st.pid, "parent": st.parent, "reason": st.reason}
    robot_state = None
    if t.robot_status() in got:
        try:
            robot_state = _authentic(t, t.robot_status(), got[t.robot_status()]).parse(RobotStatus).state
        except ProtocolError:
            robot_state = "invalid (unreadable robot status)"
    if as_json:
        print(json.dumps({"robot": cfg.robot, "state": robot_state, "parts": parts}, indent=2))
        return
    table = Table(title=Text(f"robot {cfg.robot}: {robot_state or 'unknown'}"))
    for col in ("part", "parent", "state", "pid", "reason"):
        table.add_column(col)
    for name, p in parts.items():
        colour = "green" if p["state"] == "running" else "red" if p["state"] in ("offline", "unknown", "invalid") \
            else "yellow"
        table.add_row(name, str(p.get("parent") or "-"), Text(p["state"], style=colour), str(p.get("pid") or "-"),
                      Text(str(p.get("reason") or "")))
    console.print(table)


@app.command()
def shutdown(
    config: ConfigArg,
    broker_url: BrokerOpt = None,
    reason: Annotated[str, typer.Option(help="recorded in the timeline")] = "orchestrator shutdown",
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Ask the robot's primary to shut the robot down bottom-up (over MQTT)."""
    from orchestrator.protocol.messages import ShutdownRequest

    _send_request(config, broker_url, "shutdown", ShutdownRequest(reason=reason), identity, credentials)
    console.print("shutdown requested")


def _send_request(config: Path, broker_url: str | None, kind: str, body: Any, identity: str | None,
                  credentials: Path | None) -> None:
    """Publish a client request (``shutdown``, ``reload``) to the primary as the CLI's client identity."""
    from orchestrator.protocol.codec import encode
    from orchestrator.protocol.topics import Topics
    from orchestrator.transport.client import MqttClient

    loaded = _load(config)  # also refuses to ask for a reload of an invalid file
    cfg = loaded.config
    urls = parse_urls(broker_url) if broker_url else cfg.broker.client_urls()
    access = _access(loaded, identity, credentials)
    me = access.identity
    topics = Topics(cfg.robot)
    topic = topics.client_shutdown(me.name) if kind == "shutdown" else topics.client_reload(me.name)

    async def go() -> None:
        async with MqttClient(f"{cfg.robot}.cli.{os.getpid()}", urls, connect_timeout=3.0,
                              username=access.username, password=access.password) as c:
            await c.publish(topic, encode(me.sender, body), qos=1, timeout=3.0)

    _run(go())


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", envvar="ORCHESTRATOR_CONFIG",
                                         help="robot configuration (YAML); or $ORCHESTRATOR_CONFIG")]


@app.command()
def reload(
    config: ConfigArg,
    broker_url: BrokerOpt = None,
    reason: Annotated[str, typer.Option(help="recorded in the parts' logs")] = "orchestrator reload",
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Ask the robot to re-read its configuration: changed resources and their dependents are rebuilt."""
    from orchestrator.protocol.messages import ReloadRequest

    _send_request(config, broker_url, "reload", ReloadRequest(reason=reason), identity, credentials)
    console.print("reload requested")


@app.command()
def resources(
    config: ConfigOpt,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """List what every part hosts (from the retained topics)."""
    from orchestrator.client import RobotClient

    loaded = _load(config)
    urls = parse_urls(broker_url) if broker_url else None
    access = _access(loaded, identity, credentials)

    async def go() -> dict[str, list[dict[str, Any]]]:
        async with RobotClient.from_config(loaded, urls=urls, connect_timeout=3.0, sessions=False,
                                           identity=access.identity.name, credentials=credentials) as client:
            return await client.resources()

    listing = _run(go())
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    table = Table(title=f"resources of {loaded.config.robot}")
    for col in ("part", "resource", "model", "status", "reason"):
        table.add_column(col)
    for part_name in loaded.topology.start_order():
        for r in listing.get(part_name, []):
            colour = "green" if r["status"] == "ready" else "red"
            table.add_row(part_name, Text(r["name"]), Text(r["model"]), Text(r["status"], style=colour),
                          Text(r.get("reason") or ""))
    console.print(table)


@app.command()
def call(
    target: Annotated[str, typer.Argument(help="PART/RESOURCE")],
    method: Annotated[str, typer.Argument(help="method name, e.g. set_power")],
    config: ConfigOpt,
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
    from orchestrator.client import RobotClient
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
    loaded = _load(config)
    urls = parse_urls(broker_url) if broker_url else None
    access = _access(loaded, identity, credentials)

    async def go() -> Any:
        async with RobotClient.from_config(loaded, urls=urls, connect_timeout=3.0, sessions=hold is not None,
                                           identity=access.identity.name, credentials=credentials) as client:
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
    config: ConfigOpt,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    identity: IdentityOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """List open sessions: owner, age, last heartbeat, the resources each owns on each part."""
    from orchestrator.client import RobotClient

    loaded = _load(config)
    urls = parse_urls(broker_url) if broker_url else None
    access = _access(loaded, identity, credentials)

    async def go() -> list[dict[str, Any]]:
        async with RobotClient.from_config(loaded, urls=urls, connect_timeout=3.0, sessions=False,
                                           identity=access.identity.name, credentials=credentials) as client:
            await asyncio.sleep(0.2)  # let the retained part states arrive: they say which parts run
            return await client.sessions.list()

    rows = _run(go())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"sessions of {loaded.config.robot}")
    for col in ("session", "owner", "part", "age s", "last heartbeat s ago", "window s", "owns"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (r["session"], r["part"])):
        table.add_row(r["session"], r["owner"], r["part"], f"{r['age_s']:.1f}",
                      "-" if r["last_heartbeat_s_ago"] is None else f"{r['last_heartbeat_s_ago']:.2f}",
                      f"{r['window_s']:g}", ", ".join(r["resources"]) or "-")
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
