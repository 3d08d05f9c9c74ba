"""The raw paho baseline's responder: a bare paho-mqtt 2.x client, no framework.

    python -m bench.raw_responder HOST PORT REQUEST_TOPIC REPLY_TOPIC REPLY_SIZE

Subscribes ``REQUEST_TOPIC`` at QoS 1 and answers every request on ``REPLY_TOPIC`` at QoS 1 with a
payload of ``REPLY_SIZE`` bytes whose first 8 bytes are the request's (the correlation id).  paho
runs its network thread (``loop_start``), TCP_NODELAY is set on the socket, QoS 1 in-flight window
as wide as the SDK's.  Prints ``ready`` once the subscription is acknowledged; exits when its
standard input closes.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import paho.mqtt.client as paho

from bench.rawpaho import raw_client

ID_BYTES = 8


def main(argv: list[str]) -> int:
    host, port, request_topic, reply_topic, size = argv[0], int(argv[1]), argv[2], argv[3], int(argv[4])
    pad = b"\0" * max(0, size - ID_BYTES)
    ready = threading.Event()
    c = raw_client(f"bench-raw-responder-{reply_topic[-12:]}")

    def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(request_topic, 1)

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        ready.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:  # an exception here would silently kill paho's thread
            client.publish(reply_topic, msg.payload[:ID_BYTES] + pad, qos=1)
        except Exception as exc:
            print(f"raw responder: {exc!r}", file=sys.stderr)

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect(host, port, 10)
    c.loop_start()
    try:
        if not ready.wait(10):
            print("raw responder: no SUBACK within 10 s", file=sys.stderr)
            return 1
        print("ready", flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or kills us)
    finally:
        c.disconnect()
        c.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
