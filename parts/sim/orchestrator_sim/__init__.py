"""Simulated resources for examples and tests.

Models: ``orc:sim:motor``, ``orc:sim:base`` (differential, drives two motors), ``orc:sim:servo``,
``orc:sim:gripper``, ``orc:sim:sensor``, ``orc:sim:faulty`` (misbehaves on request),
``orc:sim:lamp`` (uses the session API from inside a plugin).
"""

from __future__ import annotations

from orchestrator.resources.registry import Registry
from orchestrator_sim.base import SimBase, SimBaseAttributes, dependencies
from orchestrator_sim.faulty import Faulty, FaultyAttributes
from orchestrator_sim.lamp import LampAttributes, SimLamp
from orchestrator_sim.motor import SimMotor, SimMotorAttributes
from orchestrator_sim.sensor import SimSensor, SimSensorAttributes
from orchestrator_sim.servo_gripper import SimGripper, SimGripperAttributes, SimServo, SimServoAttributes

__all__ = ["Faulty", "SimBase", "SimGripper", "SimLamp", "SimMotor", "SimSensor", "SimServo", "register"]


def register(registry: Registry) -> None:
    registry.register("orc:sim:motor", SimMotor, SimMotorAttributes)
    registry.register("orc:sim:base", SimBase, SimBaseAttributes, dependencies=dependencies)
    registry.register("orc:sim:servo", SimServo, SimServoAttributes)
    registry.register("orc:sim:gripper", SimGripper, SimGripperAttributes)
    registry.register("orc:sim:sensor", SimSensor, SimSensorAttributes)
    registry.register("orc:sim:faulty", Faulty, FaultyAttributes)
    registry.register("orc:sim:lamp", SimLamp, LampAttributes)
