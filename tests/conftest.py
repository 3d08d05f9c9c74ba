"""Shared fixtures: the test brokers live in tests/brokers.py, Docker's in tests/dockerlab.py."""

from brokers import broker, broker_kind, embedded_broker, mosquitto_broker
from dockerlab import compose, docker_lab, pytest_collection_modifyitems

__all__ = [
    "broker",
    "broker_kind",
    "compose",
    "docker_lab",
    "embedded_broker",
    "mosquitto_broker",
    "pytest_collection_modifyitems",
]
