"""Password hashes in mosquitto's own format, so one password file serves both brokers.

mosquitto 2.0 writes ``user:$7$<iterations>$<salt b64>$<hash b64>`` (PBKDF2-HMAC-SHA512, 12-byte
salt, 64-byte hash) and also reads ``$6$<salt>$<hash>`` (one SHA-512 round of password + salt).
:func:`hash_password` writes the first, :class:`PasswordFile` checks both; the embedded broker
uses it, so a credential made by ``orchestrator credentials`` or by ``mosquitto_passwd`` works
everywhere.  PBKDF2 at mosquitto's default 101 iterations costs about 0.1 ms per login (amqtt's
argon2 cost 114 ms and blocked its event loop).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["PasswordFile", "hash_password", "verify_hash"]

ITERATIONS = 101
SALT_BYTES = 12
MAX_USERS = 100_000
MAX_LINE = 4096


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_hash(encoded: str, password: str) -> bool:
    """True if ``password`` matches a mosquitto ``$7$`` or ``$6$`` hash; False for anything else."""
    try:
        bits = encoded.split("$")
        if len(bits) == 5 and bits[1] == "7":
            iterations = int(bits[2])
            if not 1 <= iterations <= 1_000_000:
                return False
            salt, expected = base64.b64decode(bits[3], validate=True), base64.b64decode(bits[4], validate=True)
            got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, len(expected))
            return hmac.compare_digest(got, expected)
        if len(bits) == 4 and bits[1] == "6":
            salt, expected = base64.b64decode(bits[2], validate=True), base64.b64decode(bits[3], validate=True)
            got = hashlib.sha512(password.encode("utf-8") + salt).digest()
            return hmac.compare_digest(got, expected)
    except (ValueError, TypeError):
        return False
    return False


def render(entries: Iterable[tuple[str, str]]) -> str:
    """A password file from (username, hash) pairs."""
    return "".join(f"{user}:{encoded}\n" for user, encoded in entries)


class PasswordFile:
    """username -> mosquitto hash; ``check`` runs in constant time whether the user exists or not."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)
        self._dummy = hash_password(secrets.token_hex(16))

    @classmethod
    def parse(cls, text: str, source: str = "<password file>") -> PasswordFile:
        hashes: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, encoded = line.partition(":")
            if not sep or not user or not encoded.startswith("$") or len(line) > MAX_LINE:
                raise ValueError(f"{source}:{number}: expected 'username:$7$...' (a mosquitto password line)")
            hashes[user] = encoded
            if len(hashes) > MAX_USERS:
                raise ValueError(f"{source}: more than {MAX_USERS} users")
        return cls(hashes)

    @classmethod
    def load(cls, path: Path) -> PasswordFile:
        with path.open("r", encoding="utf-8") as f:
            text = f.read(MAX_USERS * 256)
        return cls.parse(text, str(path))

    def __contains__(self, username: object) -> bool:
        return username in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, username: str | None, password: str | bytes | None) -> bool:
        if isinstance(password, bytes):
            password = password.decode("utf-8", errors="replace")
        encoded = self._hashes.get(username or "", self._dummy) if username is not None else self._dummy
        ok = verify_hash(encoded, password or "")
        return ok and username is not None and username in self._hashes
