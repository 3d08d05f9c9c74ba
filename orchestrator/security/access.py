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

__all__ = ["Access", "access_without_config", "is_tls_url_list", "session_key"]

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


def access_without_config(identity: Identity, credentials: str | Path | None, *, tls_urls: bool) -> Access:
    """The credential of ``identity`` with no configuration file: from the credentials directory
    ``credentials`` (or ``$ORCHESTRATOR_CREDENTIALS``), its ``client.<name>.secret``; anonymous without one
    (a robot with ``security.insecure``).  ``tls_urls`` (an ``mqtts://`` broker URL): the broker is verified
    with ``ca.crt`` of that directory, which must then be there.  One rule for the SDK's
    ``RobotClient.at`` and the CLI's ``--robot/--broker``."""
    import os

    from orchestrator.security.credentials import ENV

    chosen = credentials or os.environ.get(ENV)
    tls = None
    if tls_urls:
        ca = Path(chosen or ".") / "ca.crt"
        if not chosen or not ca.is_file():
            raise CredentialsMissing(f"{ca}: TLS needs the CA that signed the broker's certificate: ca.crt in the "
                                     "credentials directory", path=str(ca))
        tls = TlsSettings(str(ca))
    if not chosen:
        return Access(identity, tls=tls)
    return Access(identity, identity.username, CredentialStore(Path(chosen)).password(identity), tls)


def is_tls_url_list(urls: str) -> bool:
    """Whether a comma-separated broker URL list reaches the broker over TLS."""
    return any(u.strip().startswith(("mqtts://", "ssl://")) for u in urls.split(","))


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
