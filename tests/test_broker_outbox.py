"""The embedded broker's per-connection send queue (orchestrator/broker/outbox.py), without a socket.

Fast unit tests beside the behaviour suite (tests/test_broker_conformance.py), which runs the same
ordering against real brokers."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.broker.outbox import Outbox, Outgoing, encode_qos0_publish

pytestmark = pytest.mark.timeout(10)


class Wire:
    """What the outbox wrote, in order.  Like amqtt's handler: one write at a time (a lock); a raw
    write is refused while another packet is being written; a QoS 1 write lasts until ``release``."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.release = asyncio.Event()
        self.lock = asyncio.Lock()
        self.raw_ok = True
        self._wrote = asyncio.Event()

    async def until(self, count: int) -> None:
        while len(self.written) < count:
            self._wrote.clear()
            await self._wrote.wait()

    def write_raw(self, packet: bytes) -> bool:
        if not self.raw_ok or self.lock.locked():
            return False
        self.written.append(packet)
        self._wrote.set()
        return True

    async def publish(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        async with self.lock:
            if qos:
                await self.release.wait()
            self.written.append(data)
            self._wrote.set()


def outbox(wire: Wire) -> Outbox:
    return Outbox("c", wire.publish, max_queued=10, max_inflight=4, stats={"dropped_qos0": 0},
                  on_overflow=lambda: None, write_raw=wire.write_raw)


def qos0(n: int) -> Outgoing:
    data = b"%d" % n
    return Outgoing("t", data, 0, packet=encode_qos0_publish("t", data))


async def test_a_qos0_message_offered_to_an_idle_outbox_is_written_before_offer_returns() -> None:
    wire = Wire()
    box = outbox(wire)
    box.start()
    await asyncio.sleep(0)  # the sending task now waits for a message
    assert box.offer(qos0(1))
    assert wire.written == [qos0(1).packet]
    assert len(box) == 0
    await box.close()


async def test_a_qos0_message_does_not_overtake_a_qos1_message_still_being_sent() -> None:
    wire = Wire()
    box = outbox(wire)
    box.start()
    await asyncio.sleep(0)
    box.offer(Outgoing("t", b"q1", 1))
    for _ in range(3):
        await asyncio.sleep(0)  # the QoS 1 packet is being written
    box.offer(qos0(2))
    assert wire.written == []  # not written past it
    wire.release.set()
    await wire.until(2)
    assert wire.written == [b"q1", b"2"]
    await box.close()


async def test_a_qos0_message_the_socket_cannot_take_now_is_queued_and_sent_by_the_task() -> None:
    wire = Wire()
    wire.raw_ok = False  # another packet being written, or the socket's buffer full
    box = outbox(wire)
    box.start()
    await asyncio.sleep(0)
    box.offer(qos0(3))
    assert wire.written == []
    await wire.until(1)
    assert wire.written == [b"3"]  # through amqtt's publish path
    await box.close()
