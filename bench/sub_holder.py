"""Holds subscriptions for the broker benchmark: many bare paho connections that subscribe and stay idle.

    python -m bench.sub_holder HOST PORT SPEC_JSON

``SPEC_JSON`` is a file holding ``[[client_id, [filter, ...]], ...]``: one connection per entry, each
subscribing its filters (QoS 1) in one SUBSCRIBE.  Prints ``ready <connections> <subscriptions>`` once
every SUBACK is in (all granted), then waits until its standard input closes, disconnects every
connection and prints ``received <n>``: the messages its connections got (0 when the benchmark's
traffic matches none of the held filters, as intended).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho

from bench.rawpaho import raw_client

READY_TIMEOUT_S = 60.0
KEEPALIVE_S = 60


def main(argv: list[str]) -> int:
    host, port, spec_path = argv[0], int(argv[1]), argv[2]
    with open(spec_path) as f:
        spec: list[tuple[str, list[str]]] = json.load(f)
    lock = threading.Lock()
    acked = 0
    refused = 0
    received = 0
    all_acked = threading.Event()

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        nonlocal acked, refused
        with lock:
            acked += 1
            refused += sum(1 for c in codes if int(getattr(c, "value", c)) >= 0x80)
            if acked == len(spec):
                all_acked.set()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        nonlocal received
        with lock:
            received += 1

    clients: list[paho.Client] = []
    try:
        for client_id, filters in spec:
            c = raw_client(client_id, window=False)
            c.on_subscribe = on_subscribe
            c.on_message = on_message
            c.user_data_set([(f, 1) for f in filters])
            c.on_connect = lambda client, userdata, flags, rc, props: client.subscribe(userdata)
            c.connect(host, port, KEEPALIVE_S)
            c.loop_start()
            clients.append(c)
        deadline = time.monotonic() + READY_TIMEOUT_S
        if not all_acked.wait(max(0.0, deadline - time.monotonic())):
            print(f"sub_holder: {acked} of {len(spec)} SUBACKs within {READY_TIMEOUT_S} s", file=sys.stderr)
            return 1
        if refused:
            print(f"sub_holder: {refused} subscriptions refused", file=sys.stderr)
            return 1
        print(f"ready {len(clients)} {sum(len(f) for _, f in spec)}", flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or kills us)
    finally:
        for c in clients:
            c.disconnect()
        for c in clients:
            c.loop_stop()
    print(f"received {received}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
