"""The bare paho-mqtt clients of the baselines, configured in one place.

paho's own network thread (the caller runs ``loop_start``), MQTT 3.1.1, TCP_NODELAY on the socket
(paho never sets it), and, for clients that publish, the SDK's in-flight window (1000) so both
sides are held to the same flow control.
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_client(client_id: str, *, window: bool = True) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    if window:
        c.max_inflight_messages_set(1000)  # the SDK's window too
    c.on_socket_open = nodelay
    return c
