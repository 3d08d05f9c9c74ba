"""Sessions: ownership of actuators, expiry where the actuator lives, the management API.

From a client: ``RobotClient.sessions`` (:class:`orchestrator.client.sessions.ClientSessions`).
From inside a part or plugin: :class:`SessionGuard` (a resource with ``attach_sessions(guard)`` gets
its part's guard) and :func:`current_call` (who is calling, in which session).
"""

from orchestrator.protocol.messages import SessionEvent
from orchestrator.sessions.context import CallContext, current
from orchestrator.sessions.guard import SessionGuard


def current_call() -> CallContext | None:
    """The call being served (caller identity and session), or None outside any call."""
    return current.get()


__all__ = ["CallContext", "SessionEvent", "SessionGuard", "current_call"]
