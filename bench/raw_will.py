"""The disconnection benchmark's bare paho client with a Will: no framework.

    python -m bench.raw_will HOST PORT KEEPALIVE WILL_TOPIC   (username and password on standard input)

Reads two lines (username, password) from its standard input, connects with a Will (QoS 1) on WILL_TOPIC
and the given keep-alive (TCP_NODELAY, paho's network thread), prints ``ready``; prints
``disconnected <unix time>`` the first time paho says its connection is lost (its own keep-alive
check), then waits to be killed.  Never reconnects, so the broker sees one connection go silent.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from bench.rawpaho import raw_client

LIFETIME_S = 600.0  # bounded: whoever started it kills it long before


def main(argv: list[str]) -> int:
    host, port, keepalive, topic = argv[0], int(argv[1]), int(argv[2]), argv[3]
    username = sys.stdin.readline().strip()
    password = sys.stdin.readline().strip()
    connected = threading.Event()
    lost = threading.Event()

    def on_disconnect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if connected.is_set() and not lost.is_set():
            lost.set()
            print(f"disconnected {time.time():.6f}", flush=True)

    c = raw_client(f"bench-raw-will-{time.monotonic_ns()}", window=False)
    c.username_pw_set(username, password)
    c.will_set(topic, b"gone", qos=1)
    c.on_connect = lambda client, userdata, flags, rc, props: connected.set() if not rc.is_failure else None
    c.on_disconnect = on_disconnect
    c.reconnect_delay_set(LIFETIME_S, LIFETIME_S)  # no reconnect within its life
    c.connect(host, port, keepalive)
    c.loop_start()
    if not connected.wait(20):
        print("no CONNACK", flush=True)
        return 1
    print("ready", flush=True)
    time.sleep(LIFETIME_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
