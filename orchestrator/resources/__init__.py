"""Resources: typed identities, abstract bases, and the registry of plugin models."""

from orchestrator.resources.base import (
    Actuator,
    Base,
    Generic,
    Gripper,
    Motor,
    Resource,
    Sensor,
    Servo,
    actuating,
    is_actuating,
)
from orchestrator.resources.registry import Registration, Registry, default_registry
from orchestrator.resources.types import API, Model

__all__ = [
    "API",
    "Actuator",
    "Base",
    "Generic",
    "Gripper",
    "Model",
    "Motor",
    "Registration",
    "Registry",
    "Resource",
    "Sensor",
    "Servo",
    "actuating",
    "default_registry",
    "is_actuating",
]
