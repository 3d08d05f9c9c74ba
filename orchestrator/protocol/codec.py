"""The one codec: msgpack-encoded envelopes validated with pydantic.

Every message on the wire is an :class:`Envelope`: protocol version, sender identity, the sender's
birth counter (rises with every connection, so a late Will of an old connection can be told from a
live birth), a per-birth sequence number (gaps and duplicates are visible) and the body.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.errors import ProtocolError
from orchestrator.protocol.topics import PROTOCOL_VERSION

B = TypeVar("B", bound=BaseModel)

SEQ_MODULUS = 2**32


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: int = PROTOCOL_VERSION
    src: str
    birth: int = 0
    seq: int = 0
    ts: float = 0.0
    body: dict[str, Any] = {}

    def parse(self, model: type[B]) -> B:
        try:
            return model.model_validate(self.body)
        except ValidationError as exc:
            raise ProtocolError(f"bad {model.__name__} from {self.src}: {exc.errors()[:3]}") from exc


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="python")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if hasattr(obj, "value") and isinstance(obj.value, str | int):  # enums
        return obj.value
    raise TypeError(f"cannot encode {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable payload ({len(data)} bytes): {exc}") from exc


def encode(src: str, body: BaseModel | dict[str, Any], *, birth: int = 0, seq: int = 0) -> bytes:
    b = body.model_dump(mode="python") if isinstance(body, BaseModel) else body
    return pack({"v": PROTOCOL_VERSION, "src": src, "birth": birth, "seq": seq, "ts": time.time(), "body": b})


def decode(data: bytes) -> Envelope:
    raw = unpack(data)
    if not isinstance(raw, dict):
        raise ProtocolError(f"envelope must be a map, got {type(raw).__name__}")
    try:
        env = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(f"bad envelope: {exc.errors()[:3]}") from exc
    if env.v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {env.v} from {env.src}, this side speaks {PROTOCOL_VERSION}")
    return env


def decode_body(data: bytes) -> tuple[str, dict[str, Any]]:
    """The hot path of calls: (sender, body) with only the envelope's shape checked.

    The body is then checked field by field by the caller (see ``rpc``); anything unusual goes
    through :func:`decode` and the pydantic models, which give the precise error.
    """
    raw = unpack(data)
    if (
        isinstance(raw, dict)
        and raw.get("v") == PROTOCOL_VERSION
        and isinstance(src := raw.get("src"), str)
        and isinstance(body := raw.get("body"), dict)
    ):
        return src, body
    env = decode(data)  # raises the precise ProtocolError
    return env.src, env.body


class Sequencer:
    """Numbers outgoing messages of one sender: ``next()`` wraps at 2**32."""

    def __init__(self) -> None:
        self._seq = 0

    def next(self) -> int:
        s = self._seq
        self._seq = (self._seq + 1) % SEQ_MODULUS
        return s

    def reset(self) -> None:
        self._seq = 0


class SeqTracker:
    """Per-sender receive-side check: counts gaps and duplicates; a new birth restarts the count."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self.gaps = 0
        self.duplicates = 0

    def observe(self, env: Envelope) -> str:
        """Returns ``"ok"``, ``"gap"``, ``"duplicate"`` or ``"stale"`` (older birth)."""
        last = self._last.get(env.src)
        if last is None or env.birth > last[0]:
            self._last[env.src] = (env.birth, env.seq)
            return "ok"
        birth, seq = last
        if env.birth < birth:
            return "stale"
        expected = (seq + 1) % SEQ_MODULUS
        if env.seq == expected:
            self._last[env.src] = (birth, env.seq)
            return "ok"
        if (env.seq - seq) % SEQ_MODULUS > SEQ_MODULUS // 2 or env.seq == seq:
            self.duplicates += 1
            return "duplicate"
        self.gaps += 1
        self._last[env.src] = (birth, env.seq)
        return "gap"
