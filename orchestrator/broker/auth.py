"""Username/password checks for the embedded broker that never block its event loop.

amqtt 0.12.1's file authentication hashes with argon2 on the event loop: about 114 ms per login,
during which the broker serves nobody.  Here the passwords given in configuration are kept only
as salted SHA-256 digests and compared in constant time: a login costs microseconds.  Unknown
users are compared against a dummy digest so timing does not tell which usernames exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Protocol

__all__ = ["PasswordChecker", "PasswordTable"]


class PasswordChecker(Protocol):
    """What the broker asks of a credential source (:class:`PasswordTable`, or the password file of
    ``orchestrator.security.passwords.PasswordFile``)."""

    def check(self, username: str | None, password: str | bytes | None) -> bool: ...


class PasswordTable:
    """username -> salted digest of its password; ``check`` is constant-time per attempt."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._salt = secrets.token_bytes(16)
        self._digests = {user: self._digest(password) for user, password in users.items()}
        self._dummy = self._digest(secrets.token_hex(16))

    def _digest(self, password: str) -> bytes:
        return hashlib.sha256(self._salt + password.encode("utf-8")).digest()

    def __contains__(self, username: object) -> bool:
        return username in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, username: str | None, password: str | bytes | None) -> bool:
        """True only for a known user with the right password."""
        if isinstance(password, bytes):
            password = password.decode("utf-8", errors="replace")
        expected = self._digests.get(username or "", self._dummy) if username is not None else self._dummy
        given = self._digest(password or "")
        ok = hmac.compare_digest(expected, given)
        return ok and username is not None and username in self._digests
