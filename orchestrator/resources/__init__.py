"""Resources: typed identities, abstract bases, and the registry of plugin models."""

from orchestrator.resources.base import Actuator, Motor, Resource, Sensor, actuating, is_actuating
from orchestrator.resources.registry import Registration, Registry, default_registry
from orchestrator.resources.types import API, Model

__all__ = [
    "API",
    "Actuator",
    "Model",
    "Motor",
    "Registration",
    "Registry",
    "Resource",
    "Sensor",
    "actuating",
    "default_registry",
    "is_actuating",
]
