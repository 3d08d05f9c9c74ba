"""Transport: the asyncio face on paho-mqtt (the only code that touches paho)."""

from orchestrator.transport.client import Message, MqttClient, Will, next_birth

__all__ = ["Message", "MqttClient", "Will", "next_birth"]
