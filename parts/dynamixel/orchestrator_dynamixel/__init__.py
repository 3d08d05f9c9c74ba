"""ROBOTIS Dynamixel X-series servos over Protocol 2.0, and a simulator of them on a pty.

Model ``orc:dynamixel:servo`` (:class:`DynamixelServo`, attributes
:class:`DynamixelServoAttributes`); the simulator is :mod:`orchestrator_dynamixel.simulator`.
See parts/dynamixel/README.md.
"""

from __future__ import annotations

from orchestrator.resources.registry import Registry
from orchestrator_dynamixel.servo import DynamixelServo, DynamixelServoAttributes

__all__ = ["DynamixelServo", "DynamixelServoAttributes", "register"]


def register(registry: Registry) -> None:
    registry.register("orc:dynamixel:servo", DynamixelServo, DynamixelServoAttributes)
