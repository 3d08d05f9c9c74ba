"""The bare paho-mqtt clients of the baselines, configured in one place.

paho's own network thread (the caller runs ``loop_start``), MQTT 3.1.1, TCP_NODELAY on the socket
(paho never sets it), and, for clients that publish, the SDK's in-flight window (1000) so both
sides are held to the same flow control.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Self

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


class Subscribed:
    """A bare paho client that subscribes ``filters`` on every connect; ``with`` connects, starts paho's
    network thread and waits (bounded) for the SUBACK.  Subclasses override :meth:`on_message`."""

    def __init__(self, where: tuple[str, int], client_id: str, filters: list[tuple[str, int]], *,
                 keepalive: int = 30, window: bool = True, start_timeout_s: float = 20.0) -> None:
        self.where = where
        self._filters = filters
        self._keepalive = keepalive
        self._start_timeout_s = start_timeout_s
        self._subscribed = threading.Event()
        c = raw_client(client_id, window=window)
        c.on_connect = lambda client, userdata, flags, rc, props: client.subscribe(self._filters)
        c.on_subscribe = lambda client, userdata, mid, codes, props: self._subscribed.set()
        c.on_message = self.on_message
        self._c = c

    def __enter__(self) -> Self:
        self._c.connect(self.where[0], self.where[1], self._keepalive)
        self._c.loop_start()
        if not self._subscribed.wait(self._start_timeout_s):
            self.__exit__()
            raise RuntimeError(f"{type(self).__name__}: no SUBACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """Runs on paho's thread: must never raise."""
