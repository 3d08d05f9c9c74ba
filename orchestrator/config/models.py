"""Robot configuration: pydantic models.  Load them with :func:`orchestrator.config.load_config`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.protocol.topics import NAME_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Field(pattern=NAME_PATTERN, min_length=1, max_length=64)


SCHEMES = ("mqtt", "tcp", "mqtts", "ssl")


def check_broker_url(url: str) -> str:
    """``mqtt://HOST:PORT`` (or ``mqtts://`` for TLS); the port, when given, within 1..65535."""
    shown = url if len(url) <= 200 else url[:200] + "..."
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(f"{shown!r} is not a broker URL: expected mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{shown!r}: {exc}") from None
    if port == 0:
        raise ValueError(f"{shown!r}: port 0 is not a port a client can connect to")
    return url


class EmbeddedBroker(_Strict):
    """The in-process amqtt broker run by ``orchestrator up``."""

    host: str = Field(default="127.0.0.1", max_length=253)
    port: int = Field(default=18830, ge=0, le=65535, description="0 picks a free port")
    tls_port: int | None = Field(default=None, ge=0, le=65535, description="a TLS listener too (broker.crt and "
                                 "broker.key from the credentials directory); with broker.tls every part and "
                                 "client uses it")
    websocket_port: int | None = Field(default=None, ge=0, le=65535, description="MQTT over WebSocket (the web "
                                       "panel): the same identities and topic rights; with tls_port it is "
                                       "WebSocket over TLS (wss://, the broker's certificate) only")


class BrokerTls(_Strict):
    """Every part and client verifies the broker's certificate."""

    ca_file: str = Field(default="ca.crt", max_length=4096, description="the CA that signed the broker's "
                         "certificate, relative to the credentials directory (`orchestrator certs` makes a "
                         "development one)")


class BrokerConfig(_Strict):
    """Either an embedded broker (default) or a list of external broker URLs for fail-over."""

    embedded: EmbeddedBroker | None = None
    urls: list[str] = Field(default_factory=list, description="mqtt://host:port or mqtts://host:port, tried in "
                            "order")
    keepalive_s: int = Field(default=2, ge=1, le=600, description="MQTT keep-alive of every part")
    subscribe_qos: Literal[0, 1] = Field(
        default=1, description="the highest QoS of the subscriptions of parts and clients: 0 on a NATS cluster, "
        "where each QoS 1 subscription is a replicated JetStream consumer that cannot be made while a node is "
        "down (docs/brokers.md); the robot detects loss itself (heartbeats, call deadlines)")
    tls: BrokerTls | None = Field(default=None, description="connect with TLS and verify the broker")

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        return [check_broker_url(url) for url in urls]

    @model_validator(mode="after")
    def _one_kind(self) -> BrokerConfig:
        if self.embedded is not None and self.urls:
            raise ValueError("give either 'embedded' or 'urls', not both")
        if self.embedded is None and not self.urls:
            object.__setattr__(self, "embedded", EmbeddedBroker())
        secure = {urlsplit(u).scheme in ("mqtts", "ssl") for u in self.urls}
        if len(secure) > 1:
            raise ValueError("mix of mqtt:// and mqtts:// URLs: the parts use one or the other")
        if secure == {True} and self.tls is None:
            raise ValueError("mqtts:// URLs need 'tls' (the CA the parts verify the broker with)")
        if secure == {False} and self.tls is not None:
            raise ValueError("'tls' with mqtt:// URLs: write them mqtts://HOST:PORT")
        if self.embedded is not None and self.tls is not None and self.embedded.tls_port is None:
            raise ValueError("'tls' with the embedded broker needs embedded.tls_port")
        return self

    def client_urls(self) -> list[tuple[str, int]]:
        """(host, port) pairs a part connects to, in fail-over order (the TLS listener with ``tls``)."""
        if self.embedded is not None:
            host = self.embedded.host if self.embedded.host not in ("0.0.0.0", "::") else "127.0.0.1"
            port = self.embedded.tls_port if self.tls is not None and self.embedded.tls_port else self.embedded.port
            return [(host, port)]
        out = []
        for url in self.urls:
            p = urlsplit(url)
            out.append((p.hostname or "127.0.0.1", p.port or (8883 if p.scheme in ("mqtts", "ssl") else 1883)))
        return out


class RestartPolicy(StrEnum):
    NEVER = "never"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"


class Restart(_Strict):
    """How ``orchestrator up`` restarts a part process that exits on its own."""

    policy: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = Field(default=3, ge=0, le=1000, description="restarts allowed inside window_s")
    window_s: float = Field(default=60.0, gt=0, le=86400)
    backoff_s: float = Field(default=0.2, ge=0, le=60)


class Telemetry(_Strict):
    """Publish a sensor's readings on ``part/<p>/telemetry/<resource>`` for any MQTT client to watch."""

    period_s: float = Field(default=1.0, ge=0.01, le=3600, description="seconds between readings")
    on_change: bool = Field(default=False, description="publish only readings that differ from the last")


class ResourceConfig(_Strict):
    name: str = Name
    model: str = Field(description="model triplet namespace:family:name, provided by a plugin package")
    attributes: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(
        default_factory=list, description="resource names, or PART/RESOURCE for a resource on another part"
    )
    telemetry: Telemetry | None = Field(default=None, description="sensors only: publish readings periodically")

    @field_validator("model")
    @classmethod
    def _triplet(cls, v: str) -> str:
        bits = v.split(":")
        if len(bits) != 3 or not all(bits):
            raise ValueError(f"{v!r} is not a model triplet: expected namespace:family:name")
        return v


class PartConfig(_Strict):
    name: str = Name
    parent: str | None = Field(default=None, description="absent for the primary")
    heartbeat_s: float = Field(default=0.2, ge=0.01, le=60, description="seconds between heartbeats")
    heartbeat_misses: int = Field(default=3, ge=1, le=100, description="missed beats before offline")
    stop_deadline_s: float = Field(
        default=3.0, gt=0, le=300, description="time this part's subtree gets to stop before it is forced"
    )
    link_timeout_s: float | None = Field(
        default=None, ge=0.05, le=600,
        description="stop this part's actuators (and reconnect) when the broker has not echoed its heartbeats "
        "for this long: a link that looks up but carries nothing; default max(1, heartbeat_s x heartbeat_misses)",
    )
    restart: Restart = Field(default_factory=Restart)
    watchdog_s: float | None = Field(
        default=1.0, ge=0.05, le=60,
        description="emergency-stop actuators when this part's event loop stalls this long (null: off)",
    )
    resources: list[ResourceConfig] = Field(default_factory=list)


class SessionsConfig(_Strict):
    """Client sessions: whatever a session sets moving stops when the session expires."""

    default_management: bool = Field(
        default=True,
        description="stop what an expired session last drove; false: only resources associated by hand "
        "(session management API) are stopped on expiry",
    )
    heartbeat_window_s: float = Field(default=2.0, ge=0.03, le=60, description="a session expires after this "
                                      "long without a heartbeat; clients heartbeat at a fifth of it")


class ClientRole(StrEnum):
    OPERATOR = "operator"  # calls, sessions, shutdown and reload requests
    VIEWER = "viewer"  # reads the robot's public topics; publishes nothing


LAUNCHER_CLIENT = "up"  # the identity of `orchestrator up` (reserved)


class ClientConfig(_Strict):
    """A client identity (the CLI, the SDK, a panel): its own broker credential and topic rights."""

    name: str = Name
    role: ClientRole = ClientRole.OPERATOR
    remote: bool = Field(default=False, description="reaches the robot through the upstream broker (bridged)")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v == LAUNCHER_CLIENT:
            raise ValueError(f"client name {v!r} is reserved for `orchestrator up`")
        return v


class SecurityConfig(_Strict):
    """Every part and client authenticates with its own identity; topic rights come from the topology."""

    credentials: str = Field(
        default=".orchestrator/{robot}/credentials",
        description="directory of secrets (owner-only), relative to the config file; `{robot}` is replaced. "
        "Created by `orchestrator credentials -c CONFIG`; $ORCHESTRATOR_CREDENTIALS overrides it",
    )
    insecure: bool = Field(
        default=False,
        description="development only: anonymous broker access, no topic rights, a session key derived from the "
        "robot name. Anyone on the network can then drive the robot",
    )


class UpstreamConfig(_Strict):
    """The robot's upstream ("cloud") broker, through which remote clients reach it.  The local broker
    is bridged to it (mosquitto: its native bridge, see `orchestrator broker-config`; the embedded
    broker: a bridge of ours in `up`)."""

    url: str = Field(description="mqtt://HOST:PORT or mqtts://HOST:PORT of the upstream broker")
    keepalive_s: int = Field(default=2, ge=1, le=600, description="the bridge's keep-alive: a lost link is "
                             "noticed within about 1.5 x this")
    username: str | None = Field(default=None, max_length=200, description="the robot's identity on the "
                                 "upstream (default: the robot's name); its password is upstream.secret in "
                                 "the credentials directory")
    signed_config: bool = Field(default=False, description="take the robot's configuration from the upstream: a "
                                "retained message signed with the fleet's key (its public half: fleet.pub in the "
                                "credentials directory), cached next to this file for restarts without the "
                                "upstream; see docs/offline.md")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return check_broker_url(url)


class MetricsEndpoint(_Strict):
    host: str = Field(default="127.0.0.1", max_length=253)
    port: int = Field(default=9102, ge=0, le=65535, description="0 picks a free port")


class MonitoringConfig(_Strict):
    """What the robot publishes for people and tools watching it (see docs/operating.md)."""

    json_mirror: bool = Field(default=True, description="a JSON copy of states, status, resources, telemetry and "
                              "events under .../json/..., retained where the original is")
    home_assistant: bool = Field(default=False, description="Home Assistant MQTT discovery for sensors and the "
                                 "robot's availability")
    home_assistant_prefix: str = Field(default="homeassistant", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    metrics: MetricsEndpoint | None = Field(default=None, description="Prometheus metrics served by the primary")
    log_level: str | None = Field(default="WARNING", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
                                  description="part logs at this level and above go to part/<p>/log (rate "
                                  "limited); null: none")


class WebConfig(_Strict):
    """The robot's own control panel (docs/web.md), served by ``orchestrator up``: a static page whose
    browser talks MQTT over WebSocket to the robot's broker, logged in as one of the robot's clients."""

    enabled: bool = Field(default=True, description="serve the panel (false keeps the section, turned off)")
    host: str = Field(default="127.0.0.1", max_length=253, description="0.0.0.0 serves it on the local network")
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    websocket_url: str | None = Field(default=None, max_length=2000, description="where the browser reaches the "
                                      "broker's WebSocket listener (ws://HOST:PORT/ or wss://...); default: the "
                                      "page's own host and broker.embedded.websocket_port")
    client: str | None = Field(default=None, pattern=NAME_PATTERN, description="the client name the login form "
                               "suggests (default: the robot's first operator)")

    @field_validator("websocket_url")
    @classmethod
    def _check_ws(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise ValueError(f"{url[:200]!r} is not a WebSocket URL: expected ws://HOST:PORT/ or wss://HOST:PORT/")
        return url


class RobotConfig(_Strict):
    robot: str = Name
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    clients: list[ClientConfig] = Field(
        default_factory=lambda: [ClientConfig(name="operator")],
        description="client identities (the CLI and SDK use the first operator by default)",
    )
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    upstream: UpstreamConfig | None = Field(default=None, description="the upstream (cloud) broker, if any")
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    web: WebConfig | None = Field(default=None, description="the local web control panel (`up`, compose)")
    shutdown_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="upper bound on the whole bottom-up shutdown"
    )
    parts: list[PartConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _web_reaches_the_broker(self) -> RobotConfig:
        web = self.web
        if web is None or not web.enabled:
            return self
        emb = self.broker.embedded
        if web.websocket_url is None and (emb is None or emb.websocket_port is None):
            raise ValueError("web: the browser speaks MQTT over WebSocket: give broker.embedded.websocket_port, "
                             "or web.websocket_url (an external broker's WebSocket listener)")
        if web.client is not None and web.client not in {c.name for c in self.clients}:
            raise ValueError(f"web.client {web.client!r} is not one of the robot's clients")
        scheme = urlsplit(web.websocket_url).scheme if web.websocket_url else None
        if self.panel_tls() and scheme == "ws":
            raise ValueError("web.websocket_url is ws:// on a robot with TLS: its page is served over HTTPS and "
                             "talks to the broker over wss:// only (write wss://HOST:PORT/)")
        if scheme == "wss" and emb is not None and emb.tls_port is None:
            raise ValueError("web.websocket_url is wss:// with the embedded broker: its WebSocket listener has TLS "
                             "only with broker.embedded.tls_port (and the broker's certificate, `orchestrator certs`)")
        return self

    def panel_tls(self) -> bool:
        """Whether the robot has TLS, so its web panel is served over HTTPS and talks to the broker over
        ``wss://``: ``broker.tls``, or an embedded broker with a TLS listener (``broker.embedded.tls_port``).
        Either way the page's server and the embedded broker's WebSocket listener use the broker's
        certificate and key from the credentials directory (docs/web.md)."""
        emb = self.broker.embedded
        return self.broker.tls is not None or (emb is not None and emb.tls_port is not None)

    def link_timeout(self, name: str) -> float:
        p = self.part(name)
        return p.link_timeout_s if p.link_timeout_s is not None else max(1.0, p.heartbeat_s * p.heartbeat_misses)

    def part(self, name: str) -> PartConfig:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def primary(self) -> PartConfig:
        return next(p for p in self.parts if p.parent is None)

    def client(self, name: str) -> ClientConfig:
        for c in self.clients:
            if c.name == name:
                return c
        raise KeyError(name)

    def default_client(self) -> str | None:
        """The identity the CLI and the SDK use unless told otherwise: the first operator."""
        return next((c.name for c in self.clients if c.role == ClientRole.OPERATOR), None)

