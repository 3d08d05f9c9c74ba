"""One exception tree for the whole framework.

Every error has a stable ``code``.  Errors that cross the wire are sent as ``{"code", "message",
"details"}`` and rebuilt on the other side as the same class (:func:`from_wire`), so a caller of a
remote resource catches exactly what it would catch from a local one.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "ConnectionLost",
    "DeadlineExceeded",
    "InternalError",
    "InvalidArgument",
    "OrchestratorError",
    "PartOffline",
    "PortInUse",
    "ProtocolError",
    "ResourceBusy",
    "SessionExpired",
    "Unavailable",
    "UnknownMethod",
    "UnknownModel",
    "UnknownResource",
    "from_wire",
]

_BY_CODE: dict[str, type[OrchestratorError]] = {}


class OrchestratorError(Exception):
    """Base of every error raised by the framework."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details: dict[str, Any] = details

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _BY_CODE.setdefault(cls.code, cls)

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchestratorError):
    """The robot configuration is invalid; ``problems`` lists each one with file and path."""

    code = "config_invalid"

    def __init__(self, message: str, problems: list[str] | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.problems = problems or [message]

    def __str__(self) -> str:
        return "\n".join(self.problems)


class UnknownModel(ConfigError):
    code = "unknown_model"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message, None, **details)


class ProtocolError(OrchestratorError):
    """A message could not be decoded or does not follow the protocol."""

    code = "protocol_error"


class ConnectionLost(OrchestratorError):
    """The broker connection dropped while an operation depended on it."""

    code = "connection_lost"


class BrokerUnavailable(OrchestratorError):
    code = "broker_unavailable"


class PortInUse(OrchestratorError):
    code = "port_in_use"


class UnknownResource(OrchestratorError):
    code = "unknown_resource"


class UnknownMethod(OrchestratorError):
    code = "unknown_method"


class InvalidArgument(OrchestratorError):
    code = "invalid_argument"


class DeadlineExceeded(OrchestratorError):
    code = "deadline_exceeded"


class PartOffline(OrchestratorError):
    code = "part_offline"


class SessionExpired(OrchestratorError):
    code = "session_expired"


class ResourceBusy(OrchestratorError):
    """An actuating call outside any session on a resource a live session owns: refused, so that the
    resource still stops when its owner goes away.  Call it in a session, or stop it first."""

    code = "resource_busy"


class Unavailable(OrchestratorError):
    """The part cannot take the call now (overloaded); trying again later may succeed."""

    code = "unavailable"


class InternalError(OrchestratorError):
    """A plugin raised something that is not an :class:`OrchestratorError`."""

    code = "internal"


_BY_CODE["error"] = OrchestratorError


def _bounded(v: Any, depth: int = 0) -> Any:
    if isinstance(v, str):
        return v[:500]
    if v is None or isinstance(v, int | float | bool):
        return v
    if isinstance(v, list | tuple) and depth == 0:
        return [_bounded(x, 1) for x in v[:20]]
    return str(v)[:500]


def from_wire(data: dict[str, Any]) -> OrchestratorError:
    """Rebuild an error sent by :meth:`OrchestratorError.to_wire`; unknown codes become the base."""
    code = str(data.get("code", "error"))[:64]
    cls = _BY_CODE.get(code, OrchestratorError)
    raw = data.get("details")
    # what another process says about an error is bounded before it is believed or printed
    details = {str(k)[:64]: _bounded(v) for k, v in list(raw.items())[:20]} if isinstance(raw, dict) else {}
    message = str(data.get("message", code))[:2000]
    if issubclass(cls, ConfigError) and cls is ConfigError:
        err: OrchestratorError = ConfigError(message, None, **details)
    elif issubclass(cls, UnknownModel):
        err = UnknownModel(message, **details)
    else:
        err = cls(message, **details)
    return err
