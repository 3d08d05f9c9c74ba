"""A robot's configuration signed by its fleet, received from the upstream and cached for offline restarts.

The fleet signs a robot's configuration with its Ed25519 private key (``orchestrator fleet sign``) and
publishes it retained on ``orc/v1/<robot>/upstream/config`` of the upstream broker; the bridge brings
it in.  The primary checks the signature with the fleet's public key (``fleet.pub`` in the robot's
credentials directory), that it is for this robot, newer than the one it has (``serial`` rises: an old
configuration replayed is refused) and not expired (``not_after``), validates it like a file, caches it
next to the robot's configuration file (owner-only) and reloads the robot.  Every part, and ``up``,
start from that cache when it is valid, so a robot restarts without its upstream; nothing on the local
path asks the upstream for anything.  See docs/offline.md.  (``cryptography`` is imported only when a
signature is made or checked: a part without a signed configuration never loads it.)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.config.loader import LoadedConfig
from orchestrator.errors import OrchestratorError

__all__ = [
    "FLEET_PUBLIC_KEY",
    "SignatureInvalid",
    "SignedConfig",
    "cache_paths",
    "load_effective",
    "new_fleet_key",
    "read_cache",
    "sign",
    "verify",
    "write_cache",
]

log = logging.getLogger("orchestrator.security")

FLEET_PUBLIC_KEY = "fleet.pub"
MAX_SIGNED = 512 * 1024


class SignatureInvalid(OrchestratorError):
    """A signed configuration that must not be believed: bad signature, another robot, older, expired."""

    code = "signature_invalid"


class SignedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    robot: str = Field(max_length=64)
    serial: int = Field(ge=0, le=2**62)  # rises with every configuration the fleet issues
    issued_at: float = Field(ge=0, le=1e11)
    not_after: float | None = Field(default=None, ge=0, le=1e11)  # the cache is not used after this
    config: str = Field(max_length=MAX_SIGNED)  # the YAML text
    signature: str = Field(max_length=200)  # base64 Ed25519 signature of the canonical bytes

    def canonical(self) -> bytes:
        head = f"orchestrator-config\n{self.robot}\n{self.serial}\n{self.issued_at!r}\n{self.not_after!r}\n"
        return head.encode() + self.config.encode("utf-8")

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SignedConfig:
        if len(data) > MAX_SIGNED + 4096:
            raise SignatureInvalid(f"signed configuration of {len(data)} bytes is too large")
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise SignatureInvalid(f"not a signed configuration ({exc.error_count()} problem(s))") from None


def new_fleet_key(directory: Path) -> tuple[Path, Path]:
    """A new fleet key pair: ``fleet.key`` (keep it off the robots) and ``fleet.pub`` (give it to each robot)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    priv = directory / "fleet.key"
    pub = directory / FLEET_PUBLIC_KEY
    from orchestrator.security.credentials import _write_private

    _write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode())
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def sign(config_text: str, robot: str, serial: int, private_key_pem: bytes, *, not_after: float | None = None,
         issued_at: float | None = None) -> SignedConfig:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureInvalid("the fleet key must be an Ed25519 private key")
    unsigned = SignedConfig(robot=robot, serial=serial, issued_at=issued_at if issued_at is not None else time.time(),
                            not_after=not_after, config=config_text, signature="")
    sig = base64.b64encode(key.sign(unsigned.canonical())).decode()
    return unsigned.model_copy(update={"signature": sig})


def verify(signed: SignedConfig, public_key_pem: bytes, robot: str, *, now: float | None = None) -> None:
    """Raise :class:`SignatureInvalid` unless ``signed`` is the fleet's, for ``robot``, and not expired."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        raise SignatureInvalid("the fleet's public key cannot be read") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureInvalid("the fleet's public key must be an Ed25519 key")
    try:
        key.verify(base64.b64decode(signed.signature, validate=True), signed.canonical())
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(f"bad signature on the configuration of {signed.robot!r} (serial {signed.serial})") \
            from None
    if signed.robot != robot:
        raise SignatureInvalid(f"the signed configuration is for robot {signed.robot!r}, not {robot!r}")
    now = time.time() if now is None else now
    if signed.not_after is not None and now > signed.not_after:
        raise SignatureInvalid(f"the signed configuration (serial {signed.serial}) expired at {signed.not_after:.0f}")


def cache_paths(config_path: Path) -> tuple[Path, Path]:
    """Where a robot's cached signed configuration lives: next to its own file, so relative paths in it
    (the credentials directory, ...) mean the same: ``.<name>.upstream.yaml`` and ``.<name>.upstream.json``."""
    stem = config_path.name.rsplit(".", 1)[0]
    return config_path.with_name(f".{stem}.upstream.yaml"), config_path.with_name(f".{stem}.upstream.json")


def write_cache(config_path: Path, signed: SignedConfig) -> Path:
    from orchestrator.security.credentials import _write_private

    yaml_path, sig_path = cache_paths(config_path)
    _write_private(yaml_path, signed.config)
    _write_private(sig_path, signed.to_json().decode())  # the proof, checked again at every start
    return yaml_path


def read_cache(config_path: Path, public_key_pem: bytes, robot: str) -> SignedConfig | None:
    """The cached signed configuration if it is there, intact and valid now; None otherwise (logged)."""
    yaml_path, sig_path = cache_paths(config_path)
    if not sig_path.exists():
        return None
    try:
        signed = SignedConfig.from_json(sig_path.read_bytes())
        verify(signed, public_key_pem, robot)
        if yaml_path.read_text(encoding="utf-8") != signed.config:
            raise SignatureInvalid(f"{yaml_path} differs from the configuration that was signed")
    except (OSError, SignatureInvalid) as exc:
        log.warning("cached upstream configuration not used: %s", exc)
        return None
    return signed


def load_effective(path: str | Path, credentials: str | Path | None = None) -> LoadedConfig:
    """The configuration a robot runs: its file, or, when that file says ``upstream.signed_config``, the
    fleet's signed configuration cached next to it (if intact, valid and unexpired).  The result keeps the
    file's path, so relative paths and reloads mean the same either way; ``origin`` says which it is."""
    from orchestrator.config.loader import load_config
    from orchestrator.errors import ConfigError
    from orchestrator.security.access import store_for
    from orchestrator.security.credentials import CredentialsMissing

    boot = load_config(path)
    up = boot.config.upstream
    if up is None or not up.signed_config:
        return boot
    store = store_for(boot.config, boot.path, credentials)
    try:
        public = store.path(FLEET_PUBLIC_KEY).read_bytes()
    except OSError:
        raise CredentialsMissing(f"{store.path(FLEET_PUBLIC_KEY)}: no fleet public key (the robot takes its "
                                 "configuration from the upstream: put the fleet's fleet.pub there)") from None
    signed = read_cache(boot.path, public, boot.config.robot)
    if signed is None:
        return boot
    cached_path = cache_paths(boot.path)[0]
    try:
        cached = load_config(cached_path)
    except ConfigError as exc:
        log.error("cached upstream configuration is invalid here (%s); running the local file", exc)
        return boot
    return dataclasses.replace(cached, path=boot.path, origin=f"upstream serial {signed.serial}")
