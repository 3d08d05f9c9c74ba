"""The one codec: msgpack-encoded envelopes validated with pydantic.

Every message on the wire is an :class:`Envelope`: protocol version, sender identity, the sender's
birth counter (rises with every connection, so a late Will of an old connection can be told from a
live birth), a per-birth sequence number (gaps and duplicates are visible) and the body.
"""

from __future__ import annotations

import math
import time
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator.errors import ProtocolError
from orchestrator.protocol.topics import PROTOCOL_VERSION

B = TypeVar("B", bound=BaseModel)

SEQ_MODULUS = 2**32

# Limits on anything decoded from the wire, checked before and while parsing (a hostile payload costs
# a refusal, never memory, recursion or a traceback).  Generous for the protocol's own messages.
MAX_PAYLOAD = 256 * 1024  # bytes; the embedded broker's default message limit
MAX_DEPTH = 32  # nesting of maps and lists
MAX_ITEMS = 20_000  # maps entries + list items in one message
MAX_STR = 64 * 1024  # one string or binary


def validation_summary(exc: ValidationError, limit: int = 3) -> str:
    """What failed, never the input itself: ``loc: message`` for the first few errors."""
    bits = []
    for e in exc.errors(include_input=False, include_url=False)[:limit]:
        loc = ".".join(str(x) for x in e.get("loc", ()))[:80]
        bits.append(f"{loc or '(body)'}: {str(e.get('msg', ''))[:120]}")
    more = exc.error_count() - limit
    return "; ".join(bits) + (f" (+{more} more)" if more > 0 else "")


def _leaf_error(v: Any, what: str) -> ProtocolError | None:
    """The error of one value that is not a map or a list (None when it is acceptable)."""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ProtocolError(f"{what} contains a non-finite number", reason="non_finite")
    elif isinstance(v, str | bytes | bytearray) and len(v) > MAX_STR:
        return ProtocolError(f"{what} contains a string of {len(v)} characters (at most {MAX_STR})",
                             reason="too_large")
    return None


def check_value(value: Any, what: str = "message") -> None:
    """Refuse non-finite numbers, strings longer than MAX_STR, nesting deeper than MAX_DEPTH and more than
    MAX_ITEMS items: what :func:`unpack` refuses, so what passes here can be read on the other side.

    Iterative: a hostile depth never reaches Python's recursion limit.  Every message that arrives comes
    through here (50 parts' heartbeats, every call): the plain values inside a map or a list that pass
    (ints, short strings, finite floats) are passed where they are met; maps, lists and anything else
    wait on the stack, and a refused plain value is refused by :func:`_leaf_error` when popped."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    push = stack.append
    items = 0
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list | tuple):
            if depth >= MAX_DEPTH:
                raise ProtocolError(f"{what} is nested deeper than {MAX_DEPTH} levels", reason="too_deep")
            items += len(v)
            if items > MAX_ITEMS:
                raise ProtocolError(f"{what} has more than {MAX_ITEMS} items", reason="too_large")
            inner = depth + 1
            for x in (v.values() if isinstance(v, dict) else v):
                xt = type(x)
                if xt is int or xt is bool or x is None:
                    continue
                if (xt is str and len(x) <= MAX_STR) or (xt is float and x - x == 0.0):  # inf and nan: x - x is nan
                    continue
                push((x, inner))  # anything else is judged when popped (_leaf_error says why it is refused)
            if isinstance(v, dict):
                for k in v:
                    if type(k) is not str or len(k) > MAX_STR:
                        push((k, inner))
        else:
            err = _leaf_error(v, what)
            if err is not None:
                raise err


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

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
            raise ProtocolError(f"bad {model.__name__} from {self.src[:80]}: {validation_summary(exc)}",
                                reason="bad_body") from None


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
    """Decode a payload within the limits above; anything else is a :class:`ProtocolError`."""
    if len(data) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD}", reason="too_large")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, max_str_len=MAX_STR, max_bin_len=MAX_STR,
                                max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types; its text never echoes the input
        raise ProtocolError(f"undecodable payload ({len(data)} bytes): {type(exc).__name__}",
                            reason="undecodable") from None
    check_value(value, "payload")
    return value


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
        raise ProtocolError(f"bad envelope: {validation_summary(exc)}", reason="bad_envelope") from None
    if env.v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {env.v} from {env.src[:80]}, this side speaks {PROTOCOL_VERSION}",
                            reason="version")
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


def decode_light(data: bytes) -> tuple[str, int, dict[str, Any]]:
    """(sender, birth, body) with the envelope's shape checked without pydantic: the path of the messages
    that arrive many times a second (heartbeats).  Anything unusual goes through :func:`decode`, which
    gives the precise error."""
    raw = unpack(data)
    if (
        isinstance(raw, dict)
        and raw.get("v") == PROTOCOL_VERSION
        and isinstance(src := raw.get("src"), str)
        and len(src) <= 200
        and isinstance(birth := raw.get("birth", 0), int)
        and not isinstance(birth, bool)
        and 0 <= birth <= 2**63
        and isinstance(body := raw.get("body", {}), dict)
    ):
        return src, birth, body
    env = decode(data)  # raises the precise ProtocolError
    return env.src, env.birth, env.body


def encode_checked(src: str, body: BaseModel | dict[str, Any], *, birth: int = 0, seq: int = 0) -> bytes:
    """:func:`encode`, refusing what a receiver would refuse (non-finite numbers, too deep, too large)."""
    b = body.model_dump(mode="python") if isinstance(body, BaseModel) else body
    check_value(b, "outgoing message")
    data = encode(src, b, birth=birth, seq=seq)
    if len(data) > MAX_PAYLOAD:
        raise ProtocolError(f"outgoing message of {len(data)} bytes exceeds {MAX_PAYLOAD}", reason="too_large")
    return data


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
