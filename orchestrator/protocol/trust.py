"""Believing a message: it decodes, and its sender is the identity its topic is reserved to.

One sequence for every reader of the robot's topics (parts, the RPC client, ``RobotView``): decode the
envelope, check its sender against the topic's owner (the broker's topic rights make sure nobody else
can publish there), optionally parse the body, and count every refusal by reason.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from orchestrator.errors import ProtocolError
from orchestrator.protocol.codec import Envelope, decode
from orchestrator.protocol.refusals import Refusals
from orchestrator.protocol.topics import Topics

__all__ = ["authentic_envelope", "trusted"]

M = TypeVar("M", bound=BaseModel)


def authentic_envelope(topics: Topics, refusals: Refusals, topic: str, payload: bytes, *,
                       message: Any = None) -> Envelope | None:
    """The envelope of ``payload`` on ``topic`` if it decodes and comes from the topic's owner; else the
    refusal is counted (reason ``malformed``/the codec's, or ``forged_sender``) and None returned."""
    try:
        env = decode(payload)
    except ProtocolError as exc:
        refusals.refuse(str(exc.details.get("reason", "malformed")), topic, message=message)
        return None
    if not topics.authentic(topic, env.src):
        refusals.refuse("forged_sender", topic, f"claims {env.src[:80]}", message=message)
        return None
    return env


def trusted(topics: Topics, refusals: Refusals, topic: str, payload: bytes, model: type[M], *,
            message: Any = None) -> tuple[Envelope, M] | None:
    """:func:`authentic_envelope`, then its body parsed as ``model`` (refused as ``bad_<Model>`` if not)."""
    env = authentic_envelope(topics, refusals, topic, payload, message=message)
    if env is None:
        return None
    try:
        return env, env.parse(model)
    except ProtocolError:
        refusals.refuse(f"bad_{model.__name__}", topic, message=message)
        return None
