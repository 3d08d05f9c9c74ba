"""Errors of the Dynamixel plugin: subclasses of the framework's, so they cross the wire with its codes.

- :class:`BusTimeout` is a ``DeadlineExceeded``: no status packet came back in time (a lost
  packet, a servo that is off or unplugged), or the bus worker did not finish in time.
- :class:`ValueRefused` is an ``InvalidArgument``: the servo answered a write with a data range
  or data limit error.
- :class:`HardwareAlert`, :class:`StatusError`, :class:`CommError`, :class:`ServoNotFound` and
  :class:`NotPositionMode` are ``InternalError``s (the framework has no code of its own for a
  device fault); their message names the servo, the port and the alert or error, and
  ``details`` carries ``port``, ``id`` and, for an alert, ``alerts`` and
  ``hardware_error_status``.

A remote caller receives the framework class of the same code (``InternalError``,
``DeadlineExceeded``, ``InvalidArgument``) with the same message and details.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import DeadlineExceeded, InternalError, InvalidArgument

__all__ = [
    "BusTimeout",
    "CommError",
    "HardwareAlert",
    "NotPositionMode",
    "ServoNotFound",
    "StatusError",
    "ValueRefused",
]


class BusTimeout(DeadlineExceeded):
    """No status packet within the timeout, or the bus worker did not answer within its bound."""


class ValueRefused(InvalidArgument):
    """The servo refused a value it was written (data range or data limit error)."""


class HardwareAlert(InternalError):
    """The alert bit of a status packet: Hardware Error Status (70) names what happened."""

    def __init__(self, message: str, alerts: list[str] | None = None, **details: Any) -> None:
        super().__init__(message, alerts=list(alerts or []), **details)
        self.alerts = list(alerts or [])


class StatusError(InternalError):
    """A status packet reporting an error number (result fail, instruction, CRC, length, access)."""


class CommError(InternalError):
    """The exchange itself failed: a corrupt status packet, a port that cannot be written."""


class ServoNotFound(InternalError):
    """No servo answered a PING for the configured id (at start)."""


class NotPositionMode(InternalError):
    """The servo is not in position control mode, so Goal Position would not drive it."""
