"""QoS 0 PUBLISH packets on the wire, without paho's per-message path (MQTT 3.1.1 only).

Nearly everything a part sends and hears is a QoS 0 PUBLISH: heartbeats, calls, replies, states.
paho's path for one costs a message object, a packet id, a queue entry, locks and a callback lookup
each way; this module encodes and parses them directly, and leaves every other packet to paho:

- :class:`BufferedPaho` reads paho's socket through a buffer of ours (one ``recv`` for all the kernel
  has; paho asks one byte at a time for a packet's header) and hands out the QoS 0 publishes complete
  at the head of that buffer (:meth:`BufferedPaho.take_qos0_publishes`); paho reads the rest from the
  buffer as before;
- :func:`write_qos0` sends one straight to the socket when nothing of paho's waits to be written (so
  the order holds), and hands what the kernel did not take to paho's queue, which writes it first.

Used by :mod:`orchestrator.transport.client` in its event-loop mode only (paho's threaded mode, the
sessions' heartbeat connection, is left alone), and by the embedded broker (``encode_qos0_publish``).
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as paho

READ_CHUNK = 65536  # what one recv asks the kernel for

_PUBLISH = 0x30


def encode_qos0_publish(topic: str | bytes, data: bytes, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH packet [MQTT-3.3]: fixed header, remaining length, topic, payload (no packet id)."""
    t = topic.encode("utf-8") if isinstance(topic, str) else topic
    remaining = 2 + len(t) + len(data)
    header = bytearray([_PUBLISH | (1 if retain else 0)])
    while True:
        byte, remaining = remaining % 128, remaining // 128
        header.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return b"".join((header, len(t).to_bytes(2, "big"), t, data))


def parse_qos0_publishes(buf: bytearray | bytes, limit: int) -> tuple[list[tuple[str, bytes, bool]], int]:
    """The QoS 0 PUBLISH packets complete at the head of ``buf`` (at most ``limit``), as (topic, payload,
    retain), and how many bytes they took.  Stops at anything else: another packet type or QoS, an
    incomplete packet, a remaining length longer than MQTT allows, a topic that is not UTF-8."""
    out: list[tuple[str, bytes, bool]] = []
    i, n = 0, len(buf)
    while i < n and len(out) < limit:
        first = buf[i]
        if first & 0xF6 != _PUBLISH:  # PUBLISH at QoS 0, any DUP and RETAIN flag
            break
        length, mult, j = 0, 1, i + 1
        while j < n and j - i <= 4:
            byte = buf[j]
            j += 1
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                break
        else:
            break  # the remaining length is incomplete, or longer than 4 bytes (paho refuses that)
        end = j + length
        if end > n or length < 2:
            break
        topic_end = j + 2 + ((buf[j] << 8) | buf[j + 1])
        if topic_end > end:
            break
        try:
            topic = bytes(buf[j + 2:topic_end]).decode("utf-8")
        except UnicodeDecodeError:
            break
        out.append((topic, bytes(buf[topic_end:end]), bool(first & 1)))
        i = end
    return out, i


class BufferedPaho(paho.Client):
    """paho reading its socket through a buffer of ours (the event-loop mode only).

    Nothing wakes a selector for bytes already in the buffer: the client drains it (``buffered``). The
    buffer is dropped with the socket (a new connection never reads the old one's bytes), and so is
    what :meth:`fill` met (an error, the end of the stream) before paho read it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rbuf = bytearray()
        self._held: BaseException | None = None
        self._ended = False
        super().__init__(*args, **kwargs)

    @property
    def buffered(self) -> int:
        return len(self._rbuf)

    @property
    def held(self) -> bool:
        """:meth:`fill` met the end of the stream or an error that paho has not read yet."""
        return self._held is not None or self._ended

    @property
    def in_packet(self) -> bool:
        """paho has read part of a packet and waits for the rest."""
        return bool(self._in_packet["command"])

    def fill(self) -> bool:
        """Ask the kernel once for what it has, into the buffer; False when nothing came (no data yet, or
        the end of the stream or an error, which paho's next read then meets exactly as it would have)."""
        if self._held is not None or self._ended:
            return False
        try:
            data = super()._sock_recv(READ_CHUNK)
        except BlockingIOError:
            return False
        except Exception as exc:  # OSError, ConnectionError: paho's read gets it and reports the loss
            self._held = exc
            return False
        if not data:
            self._ended = True
            return False
        self._rbuf += data
        return True

    def take_qos0_publishes(self, limit: int) -> list[tuple[str, bytes, bool]]:
        """:func:`parse_qos0_publishes` on the head of the buffer, consumed; none while paho is in the middle
        of a packet (its rest comes first) or speaks another protocol than MQTT 3.1.1."""
        if self._in_packet["command"] or self._protocol != paho.MQTTv311:
            return []
        out, used = parse_qos0_publishes(self._rbuf, limit)
        if used:
            del self._rbuf[:used]
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()  # paho's clock for its keep-alive
        return out

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        if not buf:
            if self._held is not None:
                exc, self._held = self._held, None
                raise exc
            if self._ended:
                return b""
            data = super()._sock_recv(READ_CHUNK)  # BlockingIOError, OSError and b"" (end) as paho expects
            if len(data) <= bufsize:
                return data
            buf += data
        out = bytes(buf[:bufsize])
        del buf[:bufsize]
        return out

    def _sock_close(self) -> None:
        self._rbuf = bytearray()  # replaced, not cleared: a read under way keeps the old one
        self._held = None
        self._ended = False
        super()._sock_close()


def write_qos0(client: paho.Client, topic: str, payload: bytes, retain: bool) -> bool:
    """Send a QoS 0 PUBLISH on ``client``'s socket now, past paho's publish path; False (nothing sent) when
    paho must do it: not connected, TLS, something of paho's still waiting to be written (the order), a
    topic paho would refuse.  What the kernel does not take at once goes to the head of paho's queue,
    which writes it before anything else; the caller makes sure that queue gets written."""
    if client._out_packet or not client.is_connected():
        return False
    sock = client._sock
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return False
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        return False
    t = topic.encode("utf-8")
    if len(t) > 65535:
        return False
    packet = encode_qos0_publish(t, payload, retain)
    try:
        sent = sock.send(packet)
    except BlockingIOError:
        sent = 0
    except OSError:
        return False  # paho's publish meets the same error and reports the loss
    with client._msgtime_mutex:
        client._last_msg_out = time.monotonic()  # paho's clock for its keep-alive
    if sent < len(packet):
        client._out_packet.append({"command": _PUBLISH, "mid": 0, "qos": 0, "pos": sent,
                                   "to_process": len(packet) - sent, "packet": packet,
                                   "info": paho.MQTTMessageInfo(0)})
    return True
