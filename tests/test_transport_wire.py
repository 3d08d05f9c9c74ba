"""QoS 0 PUBLISH packets read and written past paho (orchestrator/transport/wire.py), without a broker.

The behaviour on real brokers is in tests/test_transport.py (every payload size, retained, QoS 1 in
between); these pin the packet format and the two edges a broker rarely shows: a packet the kernel
takes only in part, and bytes that are not a QoS 0 publish."""

from __future__ import annotations

import socket

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, _ConnectionState

from orchestrator.transport.wire import encode_qos0_publish, parse_qos0_publishes, write_qos0

pytestmark = pytest.mark.timeout(10)


def test_what_is_encoded_is_parsed_back_across_the_remaining_length_boundaries() -> None:
    sizes = [0, 1, 122, 123, 16_380, 16_381, 2_097_000, 7]
    packets = [(f"a/b/{n}", bytes([n % 256]) * n, n % 2 == 1) for n in sizes]
    wire = b"".join(encode_qos0_publish(t, p, r) for t, p, r in packets)
    got, used = parse_qos0_publishes(bytearray(wire), 100)
    assert got == packets
    assert used == len(wire)
    # paho reads the same bytes the same way
    assert wire[:1] == b"\x30" and encode_qos0_publish("t", b"x", True)[:1] == b"\x31"


def test_parsing_stops_at_what_is_not_a_complete_qos0_publish_and_leaves_it() -> None:
    one = encode_qos0_publish("ok", b"1")
    qos1 = bytes([0x32]) + one[1:]  # the same packet at QoS 1: paho's to handle (it has a packet id)
    suback = b"\x90\x03\x00\x01\x00"
    bad_topic = b"\x30\x05\x00\x02\xff\xfe!"
    for tail in (qos1, suback, bad_topic, one[:-1], b"\x30\xff\xff\xff\xff\x01"):
        got, used = parse_qos0_publishes(bytearray(one + tail), 100)
        assert (got, used) == ([("ok", b"1", False)], len(one)), tail
    assert parse_qos0_publishes(bytearray(one * 5), 3) == ([("ok", b"1", False)] * 3, 3 * len(one))


def test_a_qos0_publish_the_kernel_takes_only_in_part_is_finished_before_anything_sent_after_it() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="w", protocol=paho.MQTTv311)
    client._sock = a
    client._state = _ConnectionState.MQTT_CS_CONNECTED
    first, second = b"\x01" * 300_000, b"\x02" * 1000
    try:
        assert write_qos0(client, "t/first", first, False)
        assert client._out_packet, "the kernel took all of 300 KB: the test proves nothing"
        assert not write_qos0(client, "t/second", second, False)  # would overtake the rest of the first
        client.publish("t/second", second, qos=0)  # paho queues it behind
        received = bytearray()
        b.setblocking(False)
        for _ in range(10_000):  # bounded: drain both ends until paho has written everything
            client.loop_write()
            try:
                received += b.recv(1 << 20)
            except BlockingIOError:
                pass
            if not client._out_packet and len(received) >= len(first) + len(second):
                break
        got, used = parse_qos0_publishes(received, 10)
        assert got == [("t/first", first, False), ("t/second", second, False)]
        assert used == len(received)
    finally:
        client._sock = None
        a.close()
        b.close()


def test_nothing_is_written_past_paho_when_it_is_not_connected_or_the_topic_is_one_it_refuses() -> None:
    a, b = socket.socketpair()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="w", protocol=paho.MQTTv311)
    client._sock = a
    try:
        assert not write_qos0(client, "t", b"x", False)  # not connected
        client._state = _ConnectionState.MQTT_CS_CONNECTED
        for topic in ("", "a/+", "a/#", "a\0b"):
            assert not write_qos0(client, topic, b"x", False)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(10)
    finally:
        client._sock = None
        a.close()
        b.close()
