"""The embedded MQTT broker (amqtt 0.12.1 with its liveness and security defects fixed).

Public names: :class:`EmbeddedBroker`, :func:`run_broker`, and the MQTT topic rules used to
write ACLs (:func:`topic_matches`, :func:`filter_covers`).  See docs/brokers.md.
"""

from orchestrator.protocol.matching import filter_covers, topic_matches, valid_filter, valid_topic

from .embedded import DEFAULT_PORT, EmbeddedBroker, run_broker

__all__ = [
    "DEFAULT_PORT",
    "EmbeddedBroker",
    "filter_covers",
    "run_broker",
    "topic_matches",
    "valid_filter",
    "valid_topic",
]
