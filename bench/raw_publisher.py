"""The broker benchmark's publisher: a bare paho-mqtt 2.x client, no framework.

    python -m bench.raw_publisher HOST PORT TOPIC COUNT QOS SIZE

Connects (TCP_NODELAY, paho's network thread, in-flight window 1000 as the SDK's), prints ``ready``;
on a ``go`` line on its standard input publishes COUNT messages of SIZE bytes on TOPIC at QOS as
fast as paho takes them, waits until every one is written (QoS 0) or acknowledged (QoS 1), at most
120 s, prints ``sent <seconds>``; exits when its standard input closes.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho

from bench.rawpaho import raw_client

SEND_TIMEOUT_S = 120.0


def main(argv: list[str]) -> int:
    host, port, topic, count, qos, size = argv[0], int(argv[1]), argv[2], int(argv[3]), int(argv[4]), int(argv[5])
    connected = threading.Event()
    done = threading.Event()
    lock = threading.Lock()
    acked = 0

    def on_publish(client: paho.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked >= count:
                done.set()

    c = raw_client(f"bench-raw-pub-{time.monotonic_ns()}")
    c.on_connect = lambda client, userdata, flags, rc, props: connected.set()
    c.on_publish = on_publish
    c.connect(host, port, 60)
    c.loop_start()
    try:
        if not connected.wait(10):
            print("raw publisher: no CONNACK within 10 s", file=sys.stderr)
            return 1
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 0
        payload = b"\0" * size
        t0 = time.perf_counter()
        for _ in range(count):
            c.publish(topic, payload, qos=qos)
        if not done.wait(SEND_TIMEOUT_S):
            print(f"raw publisher: {acked} of {count} published within {SEND_TIMEOUT_S} s", file=sys.stderr)
            return 1
        print(f"sent {time.perf_counter() - t0:.6f}", flush=True)
        sys.stdin.read()
    finally:
        c.disconnect()
        c.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
