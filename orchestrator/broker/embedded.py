"""The embedded MQTT broker: amqtt 0.12.1 in our event loop, with its defects fixed.

It exists so that ``orchestrator up`` works on a fresh machine with nothing else installed.  For
production (many clients, many subscriptions, bridges, TLS, per-part identities from files),
use mosquitto: see docs/brokers.md.

    async with EmbeddedBroker("127.0.0.1", 0) as broker:
        print(broker.url)          # mqtt://127.0.0.1:<bound port>
        ...
        print(broker.stats)        # {"keepalive_drops": 0, "dropped_qos0": 0, ...}
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..errors import BrokerUnavailable, PortInUse
from .amqtt_fixes import STAT_KEYS, BrokerSettings, FixedBroker, PreauthLogLimit, is_address_in_use
from .auth import PasswordChecker, PasswordTable

__all__ = ["DEFAULT_PORT", "EmbeddedBroker", "quiet_amqtt_logs", "run_broker"]

log = logging.getLogger("orchestrator.broker")

DEFAULT_PORT = 18830
Acl = Callable[[str | None, str, str], bool]


def quiet_amqtt_logs(level: int = logging.WARNING) -> None:
    """amqtt (and the `transitions` state machines it uses) log every packet at INFO/DEBUG.

    Raised to ``level`` unless someone already configured those loggers explicitly.
    """
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


_PREAUTH_LOG_LIMIT = PreauthLogLimit()  # one per process, however many brokers run in it


def _no_startup_traceback(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Broker startup failed")


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker; an async context manager whose close is idempotent.

    ``users`` (username -> password) or ``passwords`` (a password file, see
    ``orchestrator.security``) turns authentication on; neither admits anonymous clients.
    ``acl(username, action, topic)`` decides each ``"publish"`` (topic name), ``"subscribe"``
    (topic filter, possibly with wildcards) and ``"receive"`` (topic name of a message about to
    be delivered, including retained ones); ``None`` allows everything.  Build ACLs with
    :func:`orchestrator.broker.filter_covers` / :func:`~orchestrator.broker.topic_matches`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_payload: int = 256 * 1024,
        max_queued: int = 1000,
        users: dict[str, str] | None = None,
        passwords: PasswordChecker | None = None,
        acl: Acl | None = None,
        tls_port: int | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        websocket_port: int | None = None,
        websocket_tls: bool = False,
    ) -> None:
        if tls_port is not None and not (certfile and keyfile):
            raise ValueError("a TLS listener needs certfile and keyfile")
        if websocket_tls and not (websocket_port is not None and certfile and keyfile):
            raise ValueError("a WebSocket-over-TLS listener needs websocket_port, certfile and keyfile")
        if users is not None and passwords is not None:
            raise ValueError("give either users (plain passwords) or passwords (a password file), not both")
        if max_payload <= 0:
            raise ValueError(f"max_payload must be positive, got {max_payload}")
        if max_queued <= 0:
            raise ValueError(f"max_queued must be positive, got {max_queued}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.websocket_port = websocket_port
        self.websocket_tls = websocket_tls
        self._certfile, self._keyfile = certfile, keyfile
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._settings = BrokerSettings(
            max_payload=max_payload,
            max_queued=max_queued,
            passwords=PasswordTable(users) if users is not None else passwords,
            acl=acl,
        )
        self._broker: FixedBroker | None = None
        self._closed = False
        self._on_publish: Callable[[str | None, str, bytes], None] | None = None

    @property
    def on_publish(self) -> Callable[[str | None, str, bytes], None] | None:
        """Called with (username, topic, payload) for every publish the broker accepted; set before start."""
        return self._on_publish

    @on_publish.setter
    def on_publish(self, hook: Callable[[str | None, str, bytes], None] | None) -> None:
        self._on_publish = hook
        self._settings = dataclasses.replace(self._settings, on_publish=hook)

    def disconnect(self, username: str, client_ids: list[str], reason: str = "") -> int:
        """Close the connections among ``client_ids`` authenticated as ``username``; how many were closed."""
        return self._broker.disconnect(username, client_ids, reason) if self._broker is not None else 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._broker is not None else "new")
        return f"EmbeddedBroker({self.url}, {state})"

    async def start(self) -> EmbeddedBroker:
        """Bind and start serving; raises :class:`~orchestrator.errors.PortInUse` if the port is taken."""
        if self._closed:
            raise RuntimeError("this EmbeddedBroker was closed; create a new one")
        if self._broker is not None:
            return self
        quiet_amqtt_logs()
        bind_host = f"[{self.host}]" if ":" in self.host else self.host
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{bind_host}:{self.port}"}}
        if self.tls_port is not None:
            listeners["tls"] = {"type": "tcp", "bind": f"{bind_host}:{self.tls_port}", "ssl": True,
                                "certfile": self._certfile, "keyfile": self._keyfile}
        if self.websocket_port is not None:
            listeners["ws"] = {"type": "ws", "bind": f"{bind_host}:{self.websocket_port}"}
            if self.websocket_tls:  # wss:// (the web panel of a robot with TLS): never plain ws:// as well
                listeners["ws"].update(ssl=True, certfile=self._certfile, keyfile=self._keyfile)
        config: dict[str, Any] = {
            "listeners": listeners,
            "plugins": {},  # authentication and ACL are ours (FixedBroker), no amqtt plugin
        }
        broker = FixedBroker(config, self._settings, self.stats)
        amqtt_log = logging.getLogger("amqtt.broker")
        if _PREAUTH_LOG_LIMIT not in amqtt_log.filters:
            amqtt_log.addFilter(_PREAUTH_LOG_LIMIT)
        amqtt_log.addFilter(_no_startup_traceback)  # we raise PortInUse/BrokerUnavailable instead
        try:
            await broker.start()
        except Exception as exc:
            await self._discard(broker)
            if is_address_in_use(exc):
                raise PortInUse(
                    f"port {self.host}:{self.port} is already in use (another broker?) - stop it, "
                    "or choose another port",
                    host=self.host,
                    port=self.port,
                ) from exc
            raise BrokerUnavailable(
                f"cannot start the embedded broker on {self.host}:{self.port}: {exc}", host=self.host, port=self.port
            ) from exc
        finally:
            amqtt_log.removeFilter(_no_startup_traceback)
        self._broker = broker
        self.port = broker.bound_port("default")
        if self.tls_port is not None:
            self.tls_port = broker.bound_port("tls")
        if self.websocket_port is not None:
            self.websocket_port = broker.bound_port("ws")
        log.info("embedded broker listening on %s", self.url)
        return self

    @staticmethod
    async def _discard(broker: FixedBroker) -> None:
        try:
            await broker.close_all(timeout=2.0)
        except Exception:
            log.debug("cleanup after a failed start failed", exc_info=True)

    async def close(self) -> None:
        """Drop every client (their Wills are published), stop listening.  Idempotent, bounded."""
        if self._closed:
            return
        self._closed = True
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await asyncio.shield(broker.close_all())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("error while closing the embedded broker")
        log.info("embedded broker on %s closed", self.url)

    async def __aenter__(self) -> EmbeddedBroker:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def run_broker(
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    *,
    max_payload: int = 256 * 1024,
    max_queued: int = 1000,
    users: dict[str, str] | None = None,
    acl: Acl | None = None,
) -> None:
    """Serve until cancelled or until ``stop`` is set (``orchestrator broker``, ``python -m orchestrator.broker``)."""
    stop = stop or asyncio.Event()
    async with EmbeddedBroker(
        host, port, max_payload=max_payload, max_queued=max_queued, users=users, acl=acl
    ) as broker:
        log.warning("embedded MQTT broker serving on %s", broker.url)
        await stop.wait()
