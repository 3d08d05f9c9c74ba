"""Session identifiers and heartbeat authentication.

A session id is ``<random>.<window ms>.<tag>`` where the tag is an HMAC, under the robot's session
key, of the owner's identity, the random part and the window.  Every part holds the key, so the
part hosting an actuator can check a session id offline (no message from the primary): a session id
presented by any identity other than its owner fails the check exactly like an unknown or expired
one.  The heartbeat secret is derived from the id under the same key and given only to the owner;
heartbeats carry a rising counter and an HMAC of it, so they can be neither forged nor replayed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

log = logging.getLogger("orchestrator.sessions")

_TAG_LEN = 24


@dataclass(frozen=True)
class SessionKey:
    key: bytes

    @staticmethod
    def generate() -> str:
        return secrets.token_urlsafe(32)

    def _mac(self, *parts: str) -> str:
        return hmac.new(self.key, "|".join(parts).encode(), hashlib.sha256).hexdigest()[:_TAG_LEN]

    def issue(self, owner: str, window_s: float) -> str:
        rand = secrets.token_urlsafe(12)
        window_ms = str(max(1, round(window_s * 1000)))
        return f"{rand}.{window_ms}.{self._mac('session', owner, rand, window_ms)}"

    def check(self, owner: str, session_id: str) -> float | None:
        """The session's window in seconds if ``session_id`` was issued to ``owner``, else None."""
        try:
            rand, window_ms, tag = session_id.split(".")
            window = int(window_ms) / 1000.0
        except ValueError:
            return None
        if not hmac.compare_digest(tag, self._mac("session", owner, rand, window_ms)):
            return None
        return window

    def heartbeat_secret(self, session_id: str) -> str:
        return self._mac("heartbeat", session_id)


def heartbeat_tag(secret: str, session_id: str, n: int) -> str:
    return hmac.new(secret.encode(), f"{session_id}|{n}".encode(), hashlib.sha256).hexdigest()[:_TAG_LEN]


def public_id(session_id: str) -> str:
    """The part of a session id that names it on the wire (events, ended lists): never the tag.

    Knowing it gives nothing: a call in a session is accepted only from the session's owner, whose
    topics only the owner may publish on, and heartbeats need the secret."""
    return session_id.split(".")[0][:32]


def short(session_id: str) -> str:
    """What logs and listings show of a session id (never the tag)."""
    return session_id.split(".")[0][:8]
