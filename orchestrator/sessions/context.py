"""Who is calling, in which session: set by the RPC server around each call.

A resource that drives others (a base driving its motors, a plugin's own calls) runs inside the
caller's context, so the resources it drives are owned by the caller's session too, locally and on
other parts (the session rides along on remote calls as ``on_behalf``).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class CallContext:
    caller: str  # sender identity of the original caller: client/<c> or part/<p>
    session: str | None  # full session id, or None: a call outside any session


current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("orchestrator_call", default=None)
