"""``orchestrator compose``: the docker-compose file of any robot configuration.

One service per part, all of the project's image, plus mosquitto configured for the robot (its password
file and ACL, generated from the topology like ``orchestrator broker-config``).  What the file carries
and why (docs/deploy.md):

- ``depends_on`` follows the part tree: the primary waits for a *healthy* broker, every other part for
  its *healthy* parent.  Compose stops services in reverse ``depends_on`` order, so ``docker compose
  stop`` and ``down`` stop the leaves first: the bottom-up shutdown, by construction;
- each part's health check reads the health line the part keeps while it is running and its heartbeats
  come back through the broker (runtime/healthfile.py): a shell ``read``, where ``orchestrator health``
  (the same question asked on the wire, launcher/health.py) costs a Python process per check;
- the robot's session key, each part's own password, and the broker's password and ACL files are
  compose secrets (``/run/secrets``, read through ``$ORCHESTRATOR_CREDENTIALS``): a container gets
  only the secrets it needs, nothing secret is in the file or the image;
- ``stop_grace_period`` above each part's stop budget, so docker never SIGKILLs a part that is still
  stopping within its bounds; a bounded restart policy; json-file logs with rotation;
- non-root users (the images'), no capabilities, no new privileges, read-only root file systems;
- with an enabled ``web:`` section, mosquitto gets the WebSocket listener ``broker-config`` writes (published
  beside the MQTT port) and a ``web`` service of the parts' image serves the control panel
  (``orchestrator web``), its page pointed at that listener as the user's browser reaches it (docs/web.md).

The file is built as data and written with PyYAML: no text template to keep in step.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from orchestrator.broker.mosquitto_conf import MosquittoFiles, main_conf, websocket_port, websocket_tls
from orchestrator.config.loader import LoadedConfig
from orchestrator.config.models import RestartPolicy
from orchestrator.errors import ConfigError
from orchestrator.protocol.topics import PartId
from orchestrator.runtime.healthfile import shell_check
from orchestrator.security.credentials import ACL, PASSWD, SESSION_KEY
from orchestrator.security.tls import BROKER_CERT, BROKER_KEY, WEB_CERT, WEB_KEY
from orchestrator.web.server import health_check

__all__ = ["BRIDGE_CONF", "BROKER_SERVICE", "MOSQUITTO_UID", "PART_UID", "TLS_PORT", "WEB_PORT", "WEB_SERVICE",
           "WS_PORT", "ComposeOptions", "Generated", "compose_header", "generate", "secret_owners"]

BROKER_SERVICE = "broker"
# The users of the images (Dockerfile, docker/mosquitto.Dockerfile): who must be able to read a secret.
PART_UID = 10001
MOSQUITTO_UID = 1883
SECRETS_DIR = "/run/secrets"
CONFIG_DIR = "/config"
# Seconds of grace above a part's stop budget (process exit, the report's trip, a loaded machine).
GRACE_MARGIN_S = 2.0
# the health line each part keeps (a tmpfs: the container's file system is read-only), checked this often;
# the tmpfs is the part's user's, explicitly: a restarted container's tmpfs is not world-writable
HEALTH_DIR = "/run/orchestrator"
HEALTH_FILE = f"{HEALTH_DIR}/health"
HEALTH_INTERVAL_MIN_S = 2.0
# Every health check is a `docker exec`: the engine starts a process in the container (runc) whatever the
# command, about 45 ms of the engine's CPU each on dockerd 20.10 (measured: 50 idle part containers checked
# every 2 s kept 1.5 of 2 cores busy, a robot of 100 never came up healthy). The robot's checks together
# stay at about this rate (about a third of a core): a big robot's parts are checked less often each.
HEALTH_CHECKS_PER_S = 8.0
TLS_PORT = 8883
WEB_SERVICE = "web"
WS_PORT = 9001  # mosquitto's WebSocket listener inside its container (published as the browser reaches it)
WEB_PORT = 8080  # the panel's HTTP server inside its container
# `orchestrator broker-config` and `orchestrator compose` write the bridge block there (owner-only)
BRIDGE_CONF = "mosquitto.d/bridge.conf"
BRIDGE_SECRET = "bridge.conf"  # mounted at /run/secrets/bridge.conf: the only *.conf that include_dir finds


@dataclass(frozen=True)
class ComposeOptions:
    """What the generated file names, as paths relative to the compose file's directory (``out_dir``)."""

    out_dir: Path
    image: str = "${ORCHESTRATOR_IMAGE:-orchestrator:latest}"
    mosquitto_image: str = "${ORCHESTRATOR_MOSQUITTO_IMAGE:-eclipse-mosquitto:2}"
    # the broker's port published on the host (127.0.0.1 only), overridable when the file is used
    host_port: str = "${ORCHESTRATOR_BROKER_PORT:-18830}"
    tls_host_port: str = "${ORCHESTRATOR_BROKER_TLS_PORT:-18883}"  # with broker.tls, instead of host_port
    # with web: the ports the user's browser reaches (None: the variable, defaulting to the configuration's
    # web.port and the port of its WebSocket listener, docs/web.md), published on web.host
    web_host_port: str | None = None
    websocket_host_port: str | None = None
    bind: str = "127.0.0.1"
    max_restarts: int | None = None  # None: each part's restart.max_restarts
    log_max_size: str = "10m"
    log_max_files: int = 3
    health_interval_s: float | None = None  # None: health_interval_s(number of parts)


@dataclass(frozen=True)
class Generated:
    compose: dict[str, Any]
    mosquitto_conf: str
    mosquitto_conf_path: Path  # where it must be written (the compose file mounts it from there)

    def compose_text(self, header: str) -> str:
        head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
        return head + yaml.dump(self.compose, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=200)


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors and aliases (the services share their logging settings' dict)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def compose_header(robot: str, config: str) -> str:
    return (f"The docker compose file of robot {robot}, generated by `orchestrator compose -c {config}`.\n"
            "Do not edit: change the robot's configuration and generate it again (docs/deploy.md).\n"
            "`orchestrator credentials -c CONFIG` makes the secrets; $ORCHESTRATOR_CREDENTIALS (a host path) says\n"
            "where they are, $ORCHESTRATOR_BROKER_PORT the broker's port on 127.0.0.1, $ORCHESTRATOR_IMAGE and\n"
            "$ORCHESTRATOR_MOSQUITTO_IMAGE the images; with a web: section $ORCHESTRATOR_WEB_PORT is the panel's\n"
            "port and $ORCHESTRATOR_BROKER_WS_PORT the broker's WebSocket port, as the browser reaches them.")


def _rel(path: Path, start: Path) -> str:
    rel = os.path.relpath(path.resolve(), start.resolve())
    return rel if rel.startswith("..") or os.path.isabs(rel) else f"./{rel}"


def health_interval_s(parts: int) -> float:
    """Seconds between two health checks of a part container: 2 s, longer for a robot whose checks would
    cost the engine more than HEALTH_CHECKS_PER_S together (50 parts: 7 s, 100 parts: 13 s)."""
    return float(max(HEALTH_INTERVAL_MIN_S, math.ceil(parts / HEALTH_CHECKS_PER_S)))


def _seconds(value: float) -> str:
    return f"{math.ceil(value)}s"


def generate(loaded: LoadedConfig, options: ComposeOptions) -> Generated:
    cfg = loaded.config
    topo = loaded.topology
    tls = cfg.broker.tls
    if tls is not None and cfg.security.insecure:
        raise ConfigError(f"{loaded.path}: broker.tls with security.insecure: the compose file's TLS listener "
                          "needs the credentials directory (its certificates are secrets)", None)
    out = options.out_dir
    config_dir = _rel(loaded.path.parent, out)
    config_in = str(PurePosixPath(CONFIG_DIR) / loaded.path.name)
    store_dir = Path(cfg.security.credentials.replace("{robot}", cfg.robot)).expanduser()
    if not store_dir.is_absolute():
        store_dir = loaded.path.resolve().parent / store_dir
    creds = "${ORCHESTRATOR_CREDENTIALS:-" + _rel(store_dir, out) + "}"
    conf_path = out / "broker_config" / cfg.robot / "mosquitto.conf"
    # with broker.tls the parts reach the broker over TLS only (the certificate must name `broker`); the plain
    # listener stays inside the broker's container (its health check)
    broker_url = f"mqtts://{BROKER_SERVICE}:{TLS_PORT}" if tls is not None else f"mqtt://{BROKER_SERVICE}:1883"
    logging = {"driver": "json-file", "options": {"max-size": options.log_max_size,
                                                 "max-file": str(options.log_max_files)}}
    secure = not cfg.security.insecure
    interval = options.health_interval_s or health_interval_s(len(topo.parts))

    secrets: dict[str, dict[str, str]] = {}

    def secret(name: str) -> str:
        secrets[name] = {"file": f"{creds}/{name}"}
        return name

    broker: dict[str, Any] = {
        "image": options.mosquitto_image,
        "volumes": [f"{_rel(conf_path, out)}:/mosquitto/config/mosquitto.conf:ro"],
        "ports": [f"{options.bind}:{options.tls_host_port}:{TLS_PORT}" if tls is not None else
                  f"{options.bind}:{options.host_port}:1883"],
        # anonymous clients are refused: a CONNACK "not authorised" proves the broker answers MQTT
        "healthcheck": {
            "test": ["CMD-SHELL", "mosquitto_sub -h localhost -p 1883 -i healthcheck -t '$$SYS/broker/uptime' "
                                  "-C 1 -W 2 2>&1 | grep -q -e 'not authori' -e '^[0-9]'"],
            "interval": "2s", "timeout": "3s", "retries": 15,
        },
        "restart": "on-failure:3",
        "stop_grace_period": "5s",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "logging": logging,
    }
    if secure:
        broker["secrets"] = [secret(PASSWD), secret(ACL)]
    if tls is not None:
        broker["secrets"] += [secret(tls.ca_file), secret(BROKER_CERT), secret(BROKER_KEY)]
    if cfg.upstream is not None and secure:
        # the bridge block holds the robot's password on the upstream: a secret, pulled in by include_dir
        secrets[BRIDGE_SECRET] = {"file": f"{creds}/{BRIDGE_CONF}"}
        broker["secrets"].append(BRIDGE_SECRET)
    services: dict[str, Any] = {BROKER_SERVICE: broker}
    for name in topo.start_order():  # parents before children: the file reads top-down
        pc = cfg.part(name)
        parent = topo.parent(name)
        restarts = options.max_restarts if options.max_restarts is not None else pc.restart.max_restarts
        restart = "no" if pc.restart.policy == RestartPolicy.NEVER or restarts == 0 else \
            "always" if pc.restart.policy == RestartPolicy.ALWAYS else f"on-failure:{restarts}"
        svc: dict[str, Any] = {
            "image": options.image,
            "command": ["part", "-c", config_in, "--name", name, "--broker", broker_url],
            "environment": {
                "ORCHESTRATOR_LOG": "INFO",
                # the same values as the command: the image's own HEALTHCHECK reads them
                "ORCHESTRATOR_CONFIG": config_in,
                "ORCHESTRATOR_PART": name,
                "ORCHESTRATOR_BROKER": broker_url,
                "ORCHESTRATOR_CREDENTIALS": SECRETS_DIR,
                "ORCHESTRATOR_HEALTH_FILE": HEALTH_FILE,
            },
            "volumes": [f"{config_dir}:{CONFIG_DIR}:ro"],
            "depends_on": {parent or BROKER_SERVICE: {"condition": "service_healthy"}},
            # the part's own health line (runtime/healthfile.py): a shell `read`, not a Python process per check
            "healthcheck": {
                "test": ["CMD-SHELL", shell_check(HEALTH_FILE).replace("$", "$$")],
                "interval": _seconds(interval), "timeout": "5s", "retries": 2, "start_period": "60s",
            },
            "tmpfs": [f"{HEALTH_DIR}:size=64k,mode=0700,uid={PART_UID},gid={PART_UID}"],
            "restart": restart,
            "stop_signal": "SIGTERM",
            "stop_grace_period": _seconds(topo.stop_budget(name) + GRACE_MARGIN_S),
            "user": f"{PART_UID}:{PART_UID}",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "read_only": True,
            "logging": logging,
        }
        if secure:
            svc["secrets"] = [secret(SESSION_KEY), secret(PartId(cfg.robot, name).secret_file)]
        if tls is not None:
            svc["secrets"].append(secret(tls.ca_file))  # the parts verify the broker
        services[name] = svc
    web = cfg.web if cfg.web is not None and cfg.web.enabled else None
    ws_tls = websocket_tls(cfg)
    if web is not None:
        if ws_tls and tls is None:
            raise ConfigError(f"{loaded.path}: web.websocket_url is wss://: the compose file's WebSocket listener "
                              "needs broker.tls (the broker's certificate)", None)
        ws_default = websocket_port(cfg) or WS_PORT
        ws_host_port = options.websocket_host_port or "${ORCHESTRATOR_BROKER_WS_PORT:-" + f"{ws_default}" + "}"
        web_host_port = options.web_host_port or "${ORCHESTRATOR_WEB_PORT:-" + f"{web.port or WEB_PORT}" + "}"
        # the panel is for the user's browser: both ports on web.host (127.0.0.1 by default, 0.0.0.0: the network)
        on = "127.0.0.1" if web.host == "localhost" else f"[{web.host}]" if ":" in web.host else web.host
        broker["ports"].append(f"{on}:{ws_host_port}:{WS_PORT}")
        # the page is told the port the browser reaches the broker on, on the page's own host (or the URL)
        page = [] if web.websocket_url else ["--websocket-port", ws_host_port]
        # an embedded broker's TLS listener without broker.tls: the compose broker (mosquitto) has no TLS, nor the
        # page then; `orchestrator web` refuses that without saying so explicitly
        page += ["--plain-http"] if cfg.panel_tls() and tls is None else []
        web_svc: dict[str, Any] = {
            "image": options.image,
            "command": ["web", "-c", config_in, "--host", "0.0.0.0", "--port", str(WEB_PORT), *page],
            "volumes": [f"{config_dir}:{CONFIG_DIR}:ro"],
            "ports": [f"{on}:{web_host_port}:{WEB_PORT}"],
            "depends_on": {BROKER_SERVICE: {"condition": "service_healthy"}},
            "healthcheck": {
                # python3 -I -c: the standard library alone; over HTTPS on a robot with TLS
                "test": health_check(WEB_PORT, cfg.robot,
                                     cafile=f"{SECRETS_DIR}/{tls.ca_file}" if tls is not None else None),
                "interval": "5s", "timeout": "5s", "retries": 3, "start_period": "30s",
            },
            "restart": "on-failure:3",
            "stop_signal": "SIGTERM",
            "stop_grace_period": "5s",
            "user": f"{PART_UID}:{PART_UID}",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "read_only": True,
            "logging": logging,
        }
        if tls is not None:  # HTTPS with the panel's own certificate and key (`orchestrator certs`), not the broker's
            web_svc["secrets"] = [secret(tls.ca_file), secret(WEB_CERT), secret(WEB_KEY)]
            web_svc["environment"] = {"ORCHESTRATOR_CREDENTIALS": SECRETS_DIR}
        services[WEB_SERVICE] = web_svc
    compose: dict[str, Any] = {"name": cfg.robot, "services": services}
    if secrets:
        compose["secrets"] = secrets
    seen = SECRETS_DIR
    files = MosquittoFiles(password_file=f"{seen}/{PASSWD}", acl_file=f"{seen}/{ACL}", port=1883,
                           include_dir=seen if cfg.upstream is not None and secure else None)
    if tls is not None:
        files = dataclasses.replace(files, bind="127.0.0.1", tls_port=TLS_PORT, tls_bind="",
                                    cafile=f"{seen}/{tls.ca_file}", certfile=f"{seen}/{BROKER_CERT}",
                                    keyfile=f"{seen}/{BROKER_KEY}")
    if web is not None:
        # the listener `broker-config` writes, on every address of the container (its port is published)
        files = dataclasses.replace(files, websockets_port=WS_PORT, websockets_tls=ws_tls, websockets_bind="")
    conf = main_conf(cfg, files)
    if not secure:
        conf = conf.replace("allow_anonymous false", "allow_anonymous true  # security.insecure: true") \
            .replace(f"password_file {files.password_file}\n", "").replace(f"acl_file {files.acl_file}\n", "")
    return Generated(compose, conf, conf_path)


def secret_owners(loaded: LoadedConfig) -> dict[str, int]:
    """secret file name -> the uid of the container that reads it (compose bind-mounts file secrets with
    the host's owner and mode: 0600 files must belong to the container's user)."""
    owners = {PASSWD: MOSQUITTO_UID, ACL: MOSQUITTO_UID, SESSION_KEY: PART_UID}
    # ca.crt and broker.crt are public (0644: parts and broker read them); the broker's key is not
    if loaded.config.broker.tls is not None:
        owners[BROKER_KEY] = MOSQUITTO_UID
        if loaded.config.web is not None and loaded.config.web.enabled:
            owners[WEB_KEY] = PART_UID  # the `web` service's user
    if loaded.config.upstream is not None:
        owners[BRIDGE_CONF] = MOSQUITTO_UID
    for name in loaded.topology.parts:
        owners[PartId(loaded.config.robot, name).secret_file] = PART_UID
    return owners
