"""A bounded, ordered send queue per connected client, drained by one named task.

amqtt 0.12.1 starts one task per message per subscriber and keeps them all: a slow QoS 1
subscriber grew the broker from 30 to 94 MB over 20,000 messages and logged about 10,000 PUBACK
timeout tracebacks.  Here each connection owns an :class:`Outbox`:

- at most ``max_queued`` messages wait; past that a QoS 0 message is dropped (counted in
  ``stats["dropped_qos0"]``, logged once per connection) and a QoS 1/2 message makes the broker
  disconnect the client as too slow (``on_overflow``) instead of growing without bound;
- at most ``max_inflight`` QoS 1/2 messages wait for their acknowledgement at a time;
- messages leave in the order they were offered;
- on close, QoS 1/2 messages not acknowledged are handed back so a persistent session
  (clean session 0) gets them again after it reconnects [MQTT-4.4.0-1].
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Outbox", "Outgoing"]

log = logging.getLogger("orchestrator.broker")


@dataclasses.dataclass(slots=True)
class Outgoing:
    """One PUBLISH to send to one client, at the QoS already resolved for it."""

    topic: str
    data: bytes
    qos: int
    retain: bool = False
    packet: bytes | None = None  # QoS 0: the PUBLISH already encoded (once, for every subscriber)


def encode_qos0_publish(topic: str, data: bytes, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH packet [MQTT-3.3]: fixed header, remaining length, topic, payload (no packet id)."""
    t = topic.encode("utf-8")
    remaining = 2 + len(t) + len(data)
    header = bytearray([0x30 | (1 if retain else 0)])
    while True:
        byte, remaining = remaining % 128, remaining // 128
        header.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return bytes(header) + len(t).to_bytes(2, "big") + t + data


class _Publisher(Protocol):
    def __call__(self, topic: str, data: bytes, qos: int, retain: bool) -> Awaitable[object]: ...


class Outbox:
    """Per-connection bounded queue; ``offer`` never blocks and never raises."""

    def __init__(
        self,
        client_id: str,
        publish: _Publisher,
        *,
        max_queued: int,
        max_inflight: int,
        stats: dict[str, int],
        on_overflow: Callable[[], None],
        write_raw: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.client_id = client_id
        self._publish = publish
        # writes an encoded packet now if nothing else is being written (ordering kept); False: use publish
        self._write_raw = write_raw
        self._max_queued = max_queued
        self._stats = stats
        self._on_overflow = on_overflow
        self._queue: deque[Outgoing] = deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        self._unacked: list[Outgoing] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._overflowed = False
        self._idle = False  # the sending task waits for a message: nothing of ours is being written
        self.dropped_qos0 = 0

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"broker.outbox[{self.client_id}]")

    def offer(self, message: Outgoing, *, bounded: bool = True) -> bool:
        """Queue ``message``; False if it was dropped.  ``bounded=False`` for retained replays."""
        if self._closed:
            return False
        if bounded and len(self._queue) >= self._max_queued:
            if message.qos == 0:
                self.dropped_qos0 += 1
                self._stats["dropped_qos0"] += 1
                if self.dropped_qos0 == 1:
                    log.warning(
                        "client %r is too slow: %d messages queued for it, dropping its QoS 0 messages",
                        self.client_id,
                        len(self._queue),
                    )
                return False
            if not self._overflowed:
                self._overflowed = True
                self._on_overflow()
            # Kept for the session: handed back on close if the session is persistent.
        elif (self._idle and not self._queue and not self._inflight and message.qos == 0
              and message.packet is not None and self._write_raw is not None and self._write_raw(message.packet)):
            return True  # nothing of ours queued or being sent: written now, in order, without waking the task
        self._queue.append(message)
        self._wakeup.set()
        return True

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                self._idle = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._idle = False
            message = self._queue[0]
            if message.qos == 0:
                self._queue.popleft()
                if message.packet is not None and self._write_raw is not None and self._write_raw(message.packet):
                    continue  # the fast path: no packet objects, no task, no lock (a heartbeat costs a write)
                try:
                    await self._publish(message.topic, message.data, 0, message.retain)
                except Exception as exc:  # the connection is going away; the client loop closes us
                    log.debug("QoS 0 send to %r failed: %r", self.client_id, exc)
                continue
            await self._slots.acquire()
            # Popped only once a slot is held, so a cancellation here loses nothing.
            self._queue.popleft()
            task = asyncio.create_task(self._send_acked(message), name=f"broker.outbox[{self.client_id}].qos")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            # Let it write its PUBLISH (or queue on the handler's FIFO write lock) before anything
            # offered after it: clients see messages in the order the broker accepted them.
            await asyncio.sleep(0)

    async def _send_acked(self, message: Outgoing) -> None:
        delivered = False
        try:
            await self._publish(message.topic, message.data, message.qos, message.retain)
            delivered = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PUBACK timeout or connection lost: redeliver on reconnect
            log.debug("QoS %d send to %r not acknowledged: %r", message.qos, self.client_id, exc)
        finally:
            self._slots.release()
            if not delivered:
                self._unacked.append(message)

    async def close(self, timeout: float = 2.0) -> list[Outgoing]:
        """Stop sending; return the QoS 1/2 messages not acknowledged, oldest first.  Idempotent."""
        if self._closed:
            return []
        self._closed = True
        tasks: list[asyncio.Task[None]] = list(self._inflight)
        if self._task is not None:
            tasks.append(self._task)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=timeout)
        if self.dropped_qos0 > 1:
            log.warning("client %r: %d QoS 0 messages dropped in all", self.client_id, self.dropped_qos0)
        left = [m for m in self._unacked if m.qos > 0] + [m for m in self._queue if m.qos > 0]
        self._unacked.clear()
        self._queue.clear()
        return left
