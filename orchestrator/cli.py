"""The ``orchestrator`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from orchestrator.cli_target import (
    EXIT_CONFIG,
    BrokerOpt,
    ConfigOpt,
    CredentialsOpt,
    IdentityOpt,
    LegacyConfigArg,
    RobotOpt,
    access,
    client_urls,
    config_path,
    err_console,
    load,
    parse_urls,
)
from orchestrator.config.loader import LoadedConfig
from orchestrator.config.models import RobotConfig
from orchestrator.errors import ConfigError, OrchestratorError

__all__ = ["EXIT_CONFIG", "BrokerOpt", "CredentialsOpt", "IdentityOpt", "RobotOpt", "app", "client_urls",
           "err_console", "main", "parse_urls"]

if TYPE_CHECKING:
    from orchestrator.security.credentials import CredentialStore

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run a robot made of several parts over a local MQTT broker.")
console = Console(width=None if sys.stdout.isatty() else 120)


def _version(value: bool) -> None:
    if value:
        from orchestrator import __version__

        typer.echo(f"orchestrator {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Run a robot made of several parts over a local MQTT broker."""


def _setup_logging(verbose: bool, who: str = "cli") -> None:
    from orchestrator.logs import setup_logging

    setup_logging(who, verbose)


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


Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]
_load = load


def _access(loaded: LoadedConfig, identity: str | None, credentials: Path | None) -> Any:
    return access(loaded.config, loaded.path, identity, credentials)


@app.command()
def validate(
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Validate a configuration: exit 0 if it is valid, 2 with every problem if not."""
    config = config_path(config, config_opt)
    loaded = _load(config)
    topo = loaded.topology
    console.print(f"[green]ok[/]: robot {loaded.config.robot!r}, {len(topo.parts)} parts, "
                  f"primary {topo.primary!r}, shutdown bound {topo.shutdown_bound():.2f} s")


@app.command()
def schema(
    core: Annotated[bool, typer.Option("--core", help="without the installed models' attributes")] = False,
) -> None:
    """Print the JSON Schema of the robot configuration (for editors), with every installed model's
    attributes: a resource's ``attributes`` are checked against the schema of its ``model``."""
    if core:
        print(json.dumps(RobotConfig.model_json_schema(), indent=2))
        return
    from orchestrator.resources import default_registry
    from orchestrator.resources.describe import config_schema

    print(json.dumps(config_schema(default_registry()), indent=2))


@app.command()
def broker(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to bind (0: any free port)", min=0, max=65535)] = 18830,
    verbose: Verbose = False,
) -> None:
    """Run the embedded broker alone (until Ctrl-C)."""
    _setup_logging(verbose, "broker")
    from orchestrator.broker import run_broker

    with contextlib.suppress(KeyboardInterrupt):
        _run(run_broker(host, port))


@app.command()
def part(
    name: Annotated[str, typer.Option("--name", help="which part of the config to run")],
    broker_url: BrokerOpt = None,
    credentials: CredentialsOpt = None,
    verbose: Verbose = False,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
    health_file: Annotated[Path | None, typer.Option(envvar="ORCHESTRATOR_HEALTH_FILE",
                                                     help="keep this part's health line in this file, for a "
                                                          "container health check (docs/deploy.md)")] = None,
) -> None:
    """Run one part (a process of its own)."""
    config = config_path(config, config_opt)
    from orchestrator.runtime.main import part_main

    raise typer.Exit(part_main(str(config), name, broker_url, verbose, str(credentials) if credentials else None,
                               str(health_file) if health_file else None))


@app.command()
def up(
    timeline_json: Annotated[Path | None, typer.Option(help="also write the shutdown timeline here")] = None,
    credentials: CredentialsOpt = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535,
                                             help="the embedded broker's port instead of the file's (0: any free "
                                                  "port); parts are told the port it got")] = None,
    verbose: Verbose = False,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Start the robot: the embedded broker, then every part; Ctrl-C stops it bottom-up."""
    config = config_path(config, config_opt)
    _setup_logging(verbose, "up")
    loaded = _load(config, effective=True, credentials=credentials)
    if port is not None:
        emb = loaded.config.broker.embedded
        if emb is None:
            err_console.print("--port overrides the embedded broker's port; this configuration uses an external "
                              "broker (broker.urls)", style="red", highlight=False, markup=False)
            raise typer.Exit(EXIT_CONFIG)
        import dataclasses

        broker_cfg = loaded.config.broker.model_copy(update={"embedded": emb.model_copy(update={"port": port})})
        loaded = dataclasses.replace(loaded, config=loaded.config.model_copy(update={"broker": broker_cfg}))
    if loaded.origin != "file":
        console.print(f"configuration: the fleet's signed configuration ({loaded.origin}), cached beside {config}")
    from orchestrator.launcher.up import run_up

    code = _run(run_up(loaded, timeline_json=timeline_json, console=console, credentials=credentials))
    raise typer.Exit(code)


@app.command()
def web(
    host: Annotated[str | None, typer.Option(help="address to serve on (default: web.host; a container: "
                                             "0.0.0.0)")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="port to serve on (default: web.port)")] = None,
    websocket_port: Annotated[int | None, typer.Option(min=1, max=65535, help="the broker's WebSocket port as the "
                                                       "browser reaches it, on the page's own host (default: "
                                                       "broker.embedded.websocket_port; web.websocket_url, when "
                                                       "set, is used instead)")] = None,
    plain_http: Annotated[bool, typer.Option("--plain-http", help="serve plain HTTP although the robot has TLS "
                                             "(behind a TLS proxy; the compose file's web service)")] = False,
    credentials: CredentialsOpt = None,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Serve the robot's web control panel alone (what `up` serves with a web: section; the compose file's
    `web` service), until Ctrl-C or SIGTERM.  Holds no client secret: the page logs in with a client
    credential; a robot with TLS serves it over HTTPS with the broker's certificate and key."""
    config = config_path(config, config_opt)
    loaded = _load(config, credentials=credentials)
    cfg = loaded.config
    if cfg.web is None or not cfg.web.enabled:
        err_console.print(f"{config}: no enabled web: section (docs/web.md)", style="red", highlight=False,
                          markup=False)
        raise typer.Exit(EXIT_CONFIG)
    import signal

    from orchestrator.web.server import panel_certificate, panel_server

    try:  # a robot with TLS: HTTPS with the broker's certificate, never plain HTTP unless --plain-http
        certificate = None if plain_http else panel_certificate(cfg, loaded.path, credentials)
    except ConfigError as exc:
        err_console.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None
    emb = cfg.broker.embedded
    ws_port = websocket_port or (emb.websocket_port if emb is not None and emb.websocket_port else None)
    if ws_port is None and cfg.web.websocket_url is None:
        err_console.print("the page needs the broker's WebSocket port: give --websocket-port", style="red",
                          highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG)
    # blocked before the server's thread starts (it inherits the mask): the main thread alone takes them
    stop = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        server = panel_server(cfg, websocket_port=ws_port, host=host, port=port, certificate=certificate,
                              plain_http=plain_http)
    except OSError as exc:
        where = f"{host or cfg.web.host}:{cfg.web.port if port is None else port}"
        err_console.print(f"web panel: cannot listen on {where} ({exc.strerror or exc})", style="red",
                          highlight=False, markup=False)
        raise typer.Exit(1) from None
    server.start()
    shown = "127.0.0.1" if (host or cfg.web.host) in ("0.0.0.0", "::") else (host or cfg.web.host)
    console.print(f"web control panel of {cfg.robot} on {server.scheme}://{shown}:{server.port}/ (broker WebSocket "
                  f"{cfg.web.websocket_url or f'port {ws_port} of the page host'})", highlight=False)
    signal.sigwait(stop)
    server.close()


@app.command()
def credentials(
    directory: Annotated[Path | None, typer.Option("--dir", envvar="ORCHESTRATOR_CREDENTIALS",
                                                    help="where (default: the config's security.credentials)")] = None,
    rotate: Annotated[bool, typer.Option(help="replace every secret (then restart the robot and its broker)")] = False,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Create the robot's credentials: a secret per part and client, the session key, the password and ACL
    files (owner-only).  Existing secrets are kept unless --rotate."""
    config = config_path(config, config_opt)
    from orchestrator.security.access import store_for
    from orchestrator.security.acl import mosquitto_acl, rights
    from orchestrator.security.credentials import identities_of

    loaded = _load(config)
    cfg = loaded.config
    store = store_for(cfg, loaded.path, directory)
    acl = mosquitto_acl(rights(cfg, loaded.topology), header=f"robot {cfg.robot}, from {loaded.path}")
    from orchestrator.launcher.bridge import UPSTREAM_SECRET, upstream_username

    extra = [UPSTREAM_SECRET] if cfg.upstream is not None else []
    made = store.ensure(identities_of(cfg), rotate=rotate, acl=acl, extra=extra)
    secrets_made = [m for m in made if m.endswith((".secret", ".key"))]
    console.print(f"credentials of robot {cfg.robot} in {store.directory}: "
                  f"{len(secrets_made)} secret(s) created, password and ACL files written", highlight=False)
    if UPSTREAM_SECRET in made:
        console.print(f"the robot's password on its upstream broker is in {store.path(UPSTREAM_SECRET)}: register "
                      f"user {upstream_username(cfg)!r} with it there (or replace the file with the one you were "
                      "given)", highlight=False)


@app.command("broker-config")
def broker_config(
    out: Annotated[Path | None, typer.Option(help="directory for mosquitto.conf (default: broker_config/<robot>)")]
    = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="mosquitto's listener port")] = 1883,
    tls_port: Annotated[int | None, typer.Option(min=1, max=65535, help="a TLS listener too (ca.crt, broker.crt "
                                                 "and broker.key of the credentials directory)")] = None,
    websocket_port: Annotated[int | None, typer.Option(min=1, max=65535, help="an MQTT-over-WebSocket listener "
                                                       "for the web panel (default: with web: enabled, the "
                                                       "port of web.websocket_url, else of "
                                                       "broker.embedded.websocket_port)")] = None,
    mount: Annotated[str | None, typer.Option(help="the credentials directory as mosquitto sees it (e.g. in a "
                                                   "container); default: its path here")] = None,
    credentials: CredentialsOpt = None,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Write a mosquitto configuration for this robot: identities, topic rights, and the bridge to its
    upstream broker (the bridge block holds a secret: it goes into the credentials directory)."""
    config = config_path(config, config_opt)
    from orchestrator.broker.mosquitto_conf import MosquittoFiles, main_conf, websocket_tls
    from orchestrator.broker.mosquitto_conf import websocket_port as web_port
    from orchestrator.security.access import store_for

    loaded = _load(config)
    cfg = loaded.config
    store = store_for(cfg, loaded.path, credentials)
    seen = mount or str(store.directory)
    with_tls = tls_port is not None
    ws_tls = websocket_tls(cfg)
    if ws_tls and not with_tls:
        err_console.print("web.websocket_url is wss://: give --tls-port too (its listener and the WebSocket one use "
                          "the broker's certificate)", style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG)
    files = MosquittoFiles(password_file=f"{seen}/passwd", acl_file=f"{seen}/acl", port=port,
                           include_dir=f"{seen}/mosquitto.d" if cfg.upstream is not None else None,
                           tls_port=tls_port, cafile=f"{seen}/ca.crt" if with_tls else None,
                           certfile=f"{seen}/broker.crt" if with_tls else None,
                           keyfile=f"{seen}/broker.key" if with_tls else None,
                           websockets_port=websocket_port or web_port(cfg), websockets_tls=ws_tls)
    target = out or Path("broker_config") / cfg.robot
    target.mkdir(parents=True, exist_ok=True)
    (target / "mosquitto.conf").write_text(main_conf(cfg, files))
    console.print(f"wrote {target / 'mosquitto.conf'}", highlight=False)
    if cfg.upstream is not None:
        _write_bridge_conf(cfg, store)


def _write_bridge_conf(cfg: RobotConfig, store: CredentialStore) -> None:
    """The mosquitto bridge block of a robot with an upstream, into its credentials (it holds a password)."""
    from orchestrator.broker.mosquitto_conf import bridge_conf
    from orchestrator.launcher.bridge import UPSTREAM_SECRET
    from orchestrator.security.credentials import _write_private

    try:
        password = None if cfg.security.insecure else store._read(UPSTREAM_SECRET, "upstream password")
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/] (write the robot's password on its upstream broker there)",
                          highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None
    d = store.directory / "mosquitto.d"
    d.mkdir(mode=0o700, exist_ok=True)
    _write_private(d / "bridge.conf", bridge_conf(cfg, password))
    console.print(f"wrote {d / 'bridge.conf'} (owner-only: it holds the upstream password)", highlight=False)


@app.command()
def compose(
    out: Annotated[Path, typer.Option("--output", "-o", help="the compose file to write")] = Path("docker-compose.yml"),
    image: Annotated[str | None, typer.Option(help="the parts' image (default: $ORCHESTRATOR_IMAGE, else "
                                              "orchestrator:latest, when compose runs)")] = None,
    mosquitto_image: Annotated[str | None, typer.Option(help="the broker's image (default: "
                                                        "$ORCHESTRATOR_MOSQUITTO_IMAGE, else eclipse-mosquitto:2)")]
    = None,
    health_interval: Annotated[float | None, typer.Option(min=1.0, help="seconds between two health checks of a "
                                                          "part container (default: 2, more for a robot of more "
                                                          "than 16 parts: the engine's checks cost CPU)")] = None,
    chown_secrets: Annotated[bool, typer.Option(help="give each secret file to the uid of the container that reads "
                                                "it (compose mounts file secrets with the host's owner; root only)")]
    = False,
    credentials: CredentialsOpt = None,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Write the docker-compose file of this robot (one service per part, mosquitto, secrets, health checks,
    bottom-up stop order) and the broker's mosquitto.conf beside it (broker_config/<robot>/)."""
    config = config_path(config, config_opt)
    from orchestrator.launcher.compose import ComposeOptions, compose_header, generate, secret_owners
    from orchestrator.security.access import store_for

    loaded = _load(config)
    opts = ComposeOptions(out_dir=out.parent)
    if image:
        opts = dataclasses.replace(opts, image=image)
    if mosquitto_image:
        opts = dataclasses.replace(opts, mosquitto_image=mosquitto_image)
    if health_interval:
        opts = dataclasses.replace(opts, health_interval_s=health_interval)
    try:
        gen = generate(loaded, opts)
    except ConfigError as exc:
        err_console.print(str(exc), style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None
    gen.mosquitto_conf_path.parent.mkdir(parents=True, exist_ok=True)
    gen.mosquitto_conf_path.write_text(gen.mosquitto_conf)
    out.write_text(gen.compose_text(compose_header(loaded.config.robot, _display(config))))
    console.print(f"wrote {out} and {gen.mosquitto_conf_path}", highlight=False)
    store = store_for(loaded.config, loaded.path, credentials)
    if loaded.config.upstream is not None and not loaded.config.security.insecure:
        _write_bridge_conf(loaded.config, store)
    if chown_secrets and not loaded.config.security.insecure:
        try:
            for name, uid in secret_owners(loaded).items():
                os.chown(store.path(name), uid, uid)
        except OSError as exc:
            err_console.print(f"cannot give the secrets to the containers' users: {exc} (run as root, after "
                              "`orchestrator credentials -c CONFIG`)", style="red", highlight=False, markup=False)
            raise typer.Exit(1) from None
        console.print(f"secrets in {store.directory} now belong to the containers' users", highlight=False)


def _display(path: Path) -> str:
    """A path as a user typed it, relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@app.command()
def certs(
    host: Annotated[list[str] | None, typer.Option("--host", help="a name or address the broker is reached "
                                                   "by (repeat); default: the config's broker hosts, "
                                                   "localhost, 127.0.0.1")] = None,
    credentials: CredentialsOpt = None,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Make a development CA and a broker certificate in the robot's credentials directory (for TLS)."""
    config = config_path(config, config_opt)
    from urllib.parse import urlsplit

    from orchestrator.security.access import store_for
    from orchestrator.security.tls import make_dev_certs

    loaded = _load(config)
    cfg = loaded.config
    hosts = list(host or [])
    if not hosts:
        hosts = ["localhost", "127.0.0.1"]
        if cfg.broker.embedded is not None and cfg.broker.embedded.host not in ("0.0.0.0", "::"):
            hosts.append(cfg.broker.embedded.host)
        hosts += [h for u in cfg.broker.urls if (h := urlsplit(u).hostname)]
    hosts = list(dict.fromkeys(hosts))
    store = store_for(cfg, loaded.path, credentials)
    made = make_dev_certs(store.directory, hosts, robot=cfg.robot)
    console.print(f"wrote {', '.join(p.name for p in made)} in {store.directory} (broker certificate for "
                  f"{', '.join(hosts)})", highlight=False)


fleet = typer.Typer(help="Configurations signed by the fleet, for robots that take theirs from the upstream.",
                    no_args_is_help=True)
app.add_typer(fleet, name="fleet")


@fleet.command("key")
def fleet_key(directory: Annotated[Path, typer.Argument(help="where to write fleet.key and fleet.pub")]) -> None:
    """A new fleet key pair: keep fleet.key off the robots; put fleet.pub in each robot's credentials."""
    from orchestrator.security.signed import new_fleet_key

    priv, pub = new_fleet_key(directory)
    console.print(f"wrote {priv} (private, owner-only) and {pub} (public: copy it into each robot's credentials)",
                  highlight=False)


@fleet.command("sign")
def fleet_sign(
    key: Annotated[Path, typer.Option(help="the fleet's private key (fleet.key)")],
    serial: Annotated[int, typer.Option(min=0, help="higher than every earlier configuration of this robot")],
    out: Annotated[Path, typer.Option(help="the signed configuration (JSON), to publish")],
    valid_days: Annotated[float | None, typer.Option(min=0.001, help="the robots stop using it after this")] = None,
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Sign a robot configuration (validated first) for its robot."""
    config = config_path(config, config_opt)
    import time as _time

    from orchestrator.security.signed import sign

    loaded = _load(config)
    text = config.read_text(encoding="utf-8")
    not_after = _time.time() + valid_days * 86400 if valid_days else None
    signed = sign(text, loaded.config.robot, serial, key.read_bytes(), not_after=not_after)
    out.write_bytes(signed.to_json())
    console.print(f"signed the configuration of {loaded.config.robot} (serial {serial}) into {out}", highlight=False)


@fleet.command("publish")
def fleet_publish(
    signed_file: Annotated[Path, typer.Argument(help="a configuration signed by `fleet sign`")],
    broker_url: Annotated[str, typer.Option("--broker", help="the upstream broker, mqtt://HOST:PORT")],
    username: Annotated[str | None, typer.Option(help="your identity on the upstream broker")] = None,
    password_file: Annotated[Path | None, typer.Option(help="a file holding its password")] = None,
) -> None:
    """Publish a signed configuration, retained, where its robot's bridge brings it in."""
    from orchestrator.protocol.topics import Topics
    from orchestrator.security.signed import SignedConfig
    from orchestrator.transport.client import MqttClient

    data = signed_file.read_bytes()
    signed = SignedConfig.from_json(data)
    password = password_file.read_text().strip() if password_file else None
    urls = parse_urls(broker_url)

    async def go() -> None:
        async with MqttClient(f"fleet.{os.getpid()}", urls, connect_timeout=5.0, username=username,
                              password=password) as c:
            await c.publish(Topics(signed.robot).upstream_config(), data, qos=1, retain=True, timeout=5.0)

    _run(go())
    console.print(f"published the configuration of {signed.robot} (serial {signed.serial})", highlight=False)


@app.command()
def acl(
    config: LegacyConfigArg = None,
    config_opt: ConfigOpt = None,
) -> None:
    """Print the broker's topic rights for this robot as a mosquitto acl_file (the embedded broker enforces
    the same rules)."""
    config = config_path(config, config_opt)
    from orchestrator.security.acl import mosquitto_acl, rights

    loaded = _load(config)
    print(mosquitto_acl(rights(loaded.config, loaded.topology),
                        header=f"robot {loaded.config.robot}, from {loaded.path}"), end="")


@app.command()
def health(
    config: Annotated[Path | None, typer.Argument(help="robot configuration (YAML); or --config, "
                                                  "$ORCHESTRATOR_CONFIG")] = None,
    config_opt: Annotated[Path | None, typer.Option("--config", "-c", envvar="ORCHESTRATOR_CONFIG",
                                                    help="the same, as an option")] = None,
    part_name: Annotated[str | None, typer.Option("--part", "--name", envvar="ORCHESTRATOR_PART",
                                                  help="which part; or $ORCHESTRATOR_PART")] = None,
    broker_url: Annotated[str | None, typer.Option("--broker", envvar="ORCHESTRATOR_BROKER",
                                                   help="broker URL(s) as for `part --broker`; default: from "
                                                        "the config")] = None,
    timeout: Annotated[float, typer.Option(min=0.2, max=60, help="seconds to decide within")] = 3.0,
    identity: Annotated[str | None, typer.Option("--identity", "-i", help="check as this client identity "
                                                 "(retained state only) instead of as the part")] = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Exit 0 when PART is running and connected to its broker, 1 (with one line saying why) when not,
    2 on wrong arguments.  Read-only; for container health checks."""
    from orchestrator.launcher.health import check_health
    from orchestrator.protocol.topics import ClientId, PartId
    from orchestrator.security.access import Access

    def refuse(why: str) -> typer.Exit:
        print(f"unhealthy: {why}"[:300].replace("\n", " "), file=sys.stderr)  # one line, never wrapped
        return typer.Exit(EXIT_CONFIG)

    path = config or config_opt
    if path is None or not part_name:
        raise refuse("give the configuration (CONFIG or --config) and --part")
    try:
        from orchestrator.security.signed import load_effective

        loaded = load_effective(path, credentials)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else str(exc)
        raise refuse(f"invalid configuration {path}: {first}") from None
    cfg = loaded.config
    if part_name not in loaded.topology.parts:
        raise refuse(f"{path}: no part named {part_name[:64]!r}")
    try:
        urls = parse_urls(broker_url) if broker_url else cfg.broker.client_urls()
        ident = ClientId(cfg.robot, identity or "") if identity is not None else PartId(cfg.robot, part_name)
        if identity is not None and not cfg.security.insecure and identity not in {c.name for c in cfg.clients}:
            raise refuse(f"{path}: no client identity {identity[:64]!r}")
        access = Access.of(cfg, loaded.path, ident, credentials)
    except (ConfigError, ValueError, typer.BadParameter) as exc:
        raise refuse(str(exc)) from None
    result = asyncio.run(check_health(loaded, part_name, urls, access, timeout))
    print(result.line())
    raise typer.Exit(0 if result.ok else 1)


from orchestrator import cli_client, cli_plugins, cli_watch  # noqa: E402,F401  (their commands register themselves)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
