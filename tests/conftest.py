"""Shared fixtures: the test brokers live in tests/brokers.py."""

from brokers import broker, broker_kind, embedded_broker, mosquitto_broker

__all__ = ["broker", "broker_kind", "embedded_broker", "mosquitto_broker"]
