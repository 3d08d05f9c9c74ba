"""What one process needs to reach the robot's broker as one identity: username, password, session key."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config.models import RobotConfig
from orchestrator.protocol.topics import Identity
from orchestrator.security.credentials import CredentialsMissing, CredentialStore
from orchestrator.transport.client import TlsSettings

__all__ = ["Access", "session_key"]

log = logging.getLogger("orchestrator.security")


@dataclass(frozen=True)
class Access:
    identity: Identity
    username: str | None = None  # None: anonymous (insecure mode)
    password: str | None = None
    tls: TlsSettings | None = None  # verify the broker with this CA

    @classmethod
    def of(cls, config: RobotConfig, config_path: Path, identity: Identity,
           credentials: str | Path | None = None) -> Access:
        """The credential of ``identity`` from the robot's credentials directory (nothing in insecure mode)."""
        store = store_for(config, config_path, credentials)
        tls = None
        if config.broker.tls is not None:
            ca = Path(config.broker.tls.ca_file)
            ca = ca if ca.is_absolute() else store.directory / ca
            if not ca.is_file():
                raise CredentialsMissing(f"{ca}: no CA certificate to verify the broker with (make a development "
                                         "one with `orchestrator certs -c CONFIG`)", path=str(ca))
            tls = TlsSettings(str(ca))
        if config.security.insecure:
            return cls(identity, tls=tls)
        return cls(identity, identity.username, store.password(identity), tls)


def store_for(config: RobotConfig, config_path: Path, credentials: str | Path | None = None) -> CredentialStore:
    return CredentialStore.for_config(config_path, config.security.credentials, config.robot, credentials)


def session_key(config: RobotConfig, config_path: Path, credentials: str | Path | None = None) -> bytes:
    """The robot's session key: from the credentials directory; derived from the robot name (and said
    loudly) only in insecure mode."""
    if config.security.insecure:
        log.warning("robot %s runs INSECURE (security.insecure: true): anonymous broker access, no topic rights, "
                    "session ids that anyone can forge", config.robot)
        return hashlib.sha256(f"orchestrator-insecure:{config.robot}".encode()).digest()
    return store_for(config, config_path, credentials).session_key()
