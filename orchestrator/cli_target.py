"""Which robot a client command talks to, and as whom: one resolver for every client command.

``status``, ``resources``, ``call``, ``sessions``, ``shutdown``, ``reload``, ``echo``, ``logs`` and
``monitor`` all take the robot the same way (docs/operating.md, "The CLI without a config"):

- ``-c CONFIG`` (or ``$ORCHESTRATOR_CONFIG``): the robot's name, broker and the identity's secret
  come from the file;
- ``--robot NAME --broker URL``: nothing else is needed, no file and no plugin; the identity's
  secret comes from ``--credentials`` / ``$ORCHESTRATOR_CREDENTIALS`` (anonymous without one, for a
  robot with ``security.insecure``);
- a file that no longer validates never locks anyone out: the command says so on one line and
  reads only what it needs (robot name, broker, security, clients) from it, leniently.  Only
  ``reload`` (which would make the robot read that file) refuses it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from orchestrator.config.loader import LoadedConfig, load_config
from orchestrator.config.models import RobotConfig
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.client import RobotClient
    from orchestrator.protocol.topics import Identity
    from orchestrator.transport.client import MqttClient

__all__ = ["Target", "config_path", "resolve"]

EXIT_CONFIG = 2
# not a terminal (a pipe, a log file, CI): never wrap error lines at 80 columns
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 10_000, soft_wrap=not sys.stderr.isatty())

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", envvar="ORCHESTRATOR_CONFIG",
                                                help="robot configuration (YAML); or $ORCHESTRATOR_CONFIG")]
LegacyConfigArg = Annotated[Path | None, typer.Argument(help="deprecated: the configuration as an argument "
                                                        "(use -c CONFIG)", show_default=False)]
RobotOpt = Annotated[str | None, typer.Option("--robot", help="the robot's name (with --broker: no config needed)")]
BrokerOpt = Annotated[str | None, typer.Option("--broker", help="broker URL(s), comma separated; "
                                                "default: from the config")]
IdentityOpt = Annotated[str | None, typer.Option("--identity", "-i", help="client identity to act as "
                                                   "(default: the config's first operator, else 'operator')")]
CredentialsOpt = Annotated[Path | None, typer.Option("--credentials", envvar="ORCHESTRATOR_CREDENTIALS",
                                                      help="credentials directory (default: from the config)")]


def fail(text: str) -> typer.Exit:
    """Print one line (never markup, never wrapped in a pipe) and return the configuration exit."""
    err_console.print(text, style="red", highlight=False, markup=False)
    return typer.Exit(EXIT_CONFIG)


def config_path(positional: Path | None, option: Path | None) -> Path:
    """The configuration of a command: ``-c CONFIG`` (or $ORCHESTRATOR_CONFIG); the older positional
    CONFIG is still taken, as a deprecated alias."""
    if positional is not None and option is not None and positional != option \
            and os.environ.get("ORCHESTRATOR_CONFIG") != str(option):
        raise fail(f"two configurations given ({positional} and -c {option}): give one, with -c")
    path = positional or option
    if path is None:
        raise fail("give the robot configuration with -c CONFIG (or $ORCHESTRATOR_CONFIG)")
    return path


def parse_urls(text: str) -> list[tuple[str, int]]:
    from orchestrator.runtime.main import parse_urls as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def client_urls(cfg: RobotConfig, broker_url: str | None) -> list[tuple[str, int]]:
    """Where a client command connects: ``--broker`` if given, else the configuration's broker.  An
    embedded broker configured with ``port: 0`` (any free port) has no port a client can know from the
    file: a clear error asking for ``--broker``, not a traceback from the MQTT library."""
    if broker_url:
        return parse_urls(broker_url)
    urls = cfg.broker.client_urls()
    if any(port == 0 for _, port in urls):
        raise fail("the configuration's broker port is 0 (any free port): the port the broker got is not in the "
                   "file; pass it with --broker mqtt://HOST:PORT")
    return urls


def load(path: Path, *, effective: bool = False, credentials: Path | None = None) -> LoadedConfig:
    """The configuration file (``effective``: or the fleet's signed configuration cached beside it); every
    problem printed and the configuration exit code if it is invalid."""
    try:
        if effective:
            from orchestrator.security.signed import load_effective

            return load_effective(path, credentials)
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[bold red]invalid configuration[/] ({len(exc.problems)} problem(s)):")
        for p in exc.problems:
            err_console.print(f"  {p}", highlight=False, markup=False)
        raise typer.Exit(EXIT_CONFIG) from None


def access(cfg: RobotConfig, path: Path, identity: str | None, credentials: Path | None) -> Any:
    """The broker credential of a client identity of the robot, its password from the credentials dir."""
    from orchestrator.protocol.topics import ClientId
    from orchestrator.security.access import Access

    name = identity or cfg.default_client()
    if name is None:
        raise fail(f"{path}: the robot has no operator client identity (see 'clients')")
    if not cfg.security.insecure and name not in {c.name for c in cfg.clients}:
        raise fail(f"{path}: no client identity {name!r} (clients: {', '.join(c.name for c in cfg.clients)})")
    try:
        return Access.of(cfg, path, ClientId(cfg.robot, name), credentials)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def _why_unreadable(exc: BaseException) -> str:
    """One short line: where the YAML breaks and how, the OS error, else the kind of error (never the input)."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return f"line {exc.problem_mark.line + 1}: {str(exc.problem or 'invalid YAML')[:200]}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def lenient(path: Path) -> RobotConfig:
    """What a client needs from a file that does not validate as a whole: the robot's name and its broker,
    security and clients sections, each validated on its own (the parts, their models and plugins are
    not looked at).  A ConfigError if even that cannot be read."""
    from pydantic import ValidationError

    from orchestrator.config.loader import MAX_CONFIG_BYTES, load_yaml
    from orchestrator.config.models import BrokerConfig, ClientConfig, SecurityConfig
    from orchestrator.protocol.topics import valid_level

    try:
        with path.open("rb") as f:
            _, data = load_yaml(f.read(MAX_CONFIG_BYTES).decode("utf-8", "replace"))
    except Exception as exc:  # unreadable, not YAML: nothing to fall back on
        raise ConfigError(f"{path}: unreadable ({_why_unreadable(exc)})", source=str(path)) from None
    if not isinstance(data, dict) or not isinstance(data.get("robot"), str) or not valid_level(data["robot"]):
        raise ConfigError(f"{path}: no readable robot name", source=str(path))
    try:
        broker = BrokerConfig.model_validate(data.get("broker") or {})
        security = SecurityConfig.model_validate(data.get("security") or {})
        raw_clients = data.get("clients")
        clients = ([ClientConfig.model_validate(c) for c in raw_clients] if isinstance(raw_clients, list)
                   else [ClientConfig(name="operator")])
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"{path}: its broker, security or clients section is invalid too "
                          f"({'.'.join(map(str, first['loc']))}: {first['msg'][:100]})", source=str(path)) from None
    return RobotConfig.model_construct(robot=data["robot"], broker=broker, security=security, clients=clients,
                                       parts=[])


@dataclass(frozen=True)
class Target:
    """A robot on a broker, and the client identity a command acts as there."""

    robot: str
    urls: list[tuple[str, int]]
    identity: str
    username: str | None = None
    password: str | None = None
    tls: Any = None
    primary: str | None = None  # known from a valid config; else read from the robot's retained status
    loaded: LoadedConfig | None = None  # a valid configuration, if one was given

    @property
    def id(self) -> Identity:
        from orchestrator.protocol.topics import ClientId

        return ClientId(self.robot, self.identity)

    def client(self, *, sessions: bool = False, connect_timeout: float = 3.0) -> RobotClient:
        """The SDK's client of this robot (no config file, no plugin needed)."""
        from orchestrator.client import RobotClient

        return RobotClient(self.robot, self.urls, name=self.identity, username=self.username,
                           password=self.password, tls=self.tls, primary=self.primary, sessions=sessions,
                           connect_timeout=connect_timeout, fail_fast=True)

    def mqtt(self, kind: str = "cli", *, connect_timeout: float = 3.0) -> MqttClient:
        """A bare MQTT connection as this identity; a refused connection fails at once."""
        from orchestrator.transport.client import MqttClient, private_client_id

        return MqttClient(private_client_id(f"{self.robot}.{kind}.{self.identity}"), self.urls,
                          connect_timeout=connect_timeout, fail_fast=True, username=self.username,
                          password=self.password, tls=self.tls)


def resolve(config: Path | None, robot: str | None, broker_url: str | None, identity: str | None,
            credentials: Path | None, *, strict: bool = False) -> Target:
    """Where the robot is and who we are: from the config file, or from ``--robot`` and ``--broker`` alone.

    A config that does not validate: with ``strict``, every problem and exit 2; otherwise one line saying
    so, then what is needed is read from it leniently (``--robot``/``--broker`` still win)."""
    if config is not None:
        if strict:
            loaded = load(config)
        else:
            try:
                loaded = load_config(config)
            except ConfigError as exc:
                first = (exc.problems[0] if exc.problems else str(exc))[:300]
                invalid = f"{config}: invalid configuration ({len(exc.problems) or 1} problem(s); first: {first})"
                try:
                    cfg = lenient(config)
                except ConfigError as again:
                    if robot is None or broker_url is None:
                        raise fail(f"{again}: pass --robot NAME --broker URL (and --credentials)") from None
                    err_console.print(f"{invalid}; using --robot and --broker", style="yellow", highlight=False,
                                      markup=False)
                    return _from_flags(robot, broker_url, identity, credentials)
                err_console.print(f"{invalid}; using only its robot name, broker and credentials (see "
                                  f"`orchestrator validate -c {config}`)", style="yellow", highlight=False,
                                  markup=False)
                if robot is not None and robot != cfg.robot:
                    return _from_flags(robot, broker_url or "", identity, credentials)
                acc = access(cfg, config, identity, credentials)
                return Target(cfg.robot, client_urls(cfg, broker_url), acc.identity.name, acc.username,
                              acc.password, acc.tls)
        cfg = loaded.config
        if robot is not None and robot != cfg.robot:
            raise fail(f"--robot {robot[:80]!r} but {config} describes robot {cfg.robot!r}: give one of them")
        acc = access(cfg, loaded.path, identity, credentials)
        return Target(cfg.robot, client_urls(cfg, broker_url), acc.identity.name, acc.username, acc.password,
                      acc.tls, loaded.topology.primary, loaded)
    if robot is None or broker_url is None:
        raise fail("give the robot configuration (-c CONFIG), or --robot NAME and --broker URL")
    return _from_flags(robot, broker_url, identity, credentials)


def _from_flags(robot: str, broker_url: str, identity: str | None, credentials: Path | None) -> Target:
    from orchestrator.protocol.topics import ClientId, valid_level
    from orchestrator.security.access import access_without_config, is_tls_url_list
    from orchestrator.security.credentials import CredentialsMissing

    if not valid_level(robot):
        raise fail(f"--robot {robot[:80]!r}: not a robot name")
    if not broker_url:
        raise fail("--robot names another robot than the configuration: give its --broker too")
    urls = parse_urls(broker_url)
    name = identity or "operator"
    if not valid_level(name):
        raise fail(f"--identity {name[:80]!r}: not an identity name")
    try:
        acc = access_without_config(ClientId(robot, name), credentials, tls_urls=is_tls_url_list(broker_url))
    except CredentialsMissing as exc:
        raise fail(str(exc)) from None  # it names the missing file: the secret or ca.crt
    return Target(robot, urls, name, acc.username, acc.password, acc.tls)
