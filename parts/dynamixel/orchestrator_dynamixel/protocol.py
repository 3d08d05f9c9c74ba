"""Dynamixel Protocol 2.0 framing, written from the ROBOTIS e-manual (used by the simulator).

A packet is ``FF FF FD 00 | id | length (2, little-endian) | instruction | params | CRC (2)``.
``length`` counts the instruction, the parameters (after byte stuffing) and the CRC.  A status
packet is the same with instruction 0x55 and an error byte before its parameters.

Byte stuffing: wherever ``FF FF FD`` appears from the instruction field to the last parameter,
an extra ``FD`` is inserted (``FF FF FD`` -> ``FF FF FD FD``), so a header can never appear
inside a packet.  The length and the CRC cover the stuffed bytes.

CRC: CRC-16 with the polynomial x^16 + x^15 + x^2 + 1 (0x8005), initial value 0, not reflected,
over every byte from the header to the last parameter; sent low byte first.  :data:`CRC_TABLE`
is computed from the polynomial and equals the 256-entry table printed in the e-manual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

HEADER: Final = b"\xff\xff\xfd\x00"
BROADCAST_ID: Final = 0xFE
MAX_ID: Final = 0xFC
MAX_LENGTH: Final = 1024  # the SDK's buffer size; longer lengths are taken for noise

PING: Final = 0x01
READ: Final = 0x02
WRITE: Final = 0x03
REG_WRITE: Final = 0x04
ACTION: Final = 0x05
FACTORY_RESET: Final = 0x06
REBOOT: Final = 0x08
CLEAR: Final = 0x10
STATUS: Final = 0x55
SYNC_READ: Final = 0x82
SYNC_WRITE: Final = 0x83
BULK_READ: Final = 0x92
BULK_WRITE: Final = 0x93
INSTRUCTIONS: Final[dict[int, str]] = {
    PING: "PING", READ: "READ", WRITE: "WRITE", REG_WRITE: "REG_WRITE", ACTION: "ACTION",
    FACTORY_RESET: "FACTORY_RESET", REBOOT: "REBOOT", CLEAR: "CLEAR", STATUS: "STATUS",
    SYNC_READ: "SYNC_READ", SYNC_WRITE: "SYNC_WRITE", BULK_READ: "BULK_READ", BULK_WRITE: "BULK_WRITE",
}


def _crc_table(poly: int = 0x8005) -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray, crc: int = 0) -> int:
    """The e-manual's ``update_crc(crc_accum=0, data, size)``."""
    for b in data:
        crc = ((crc << 8) ^ CRC_TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes | bytearray) -> bytes:
    """Insert an ``FD`` after every ``FF FF FD`` of ``body`` (instruction to last parameter)."""
    out = bytearray()
    for i, b in enumerate(body):
        out.append(b)
        if b == 0xFD and i >= 2 and body[i - 1] == 0xFF and body[i - 2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes | bytearray) -> bytes:
    """Remove the ``FD`` that :func:`stuff` inserted (``FF FF FD FD`` -> ``FF FF FD``)."""
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        b = body[i]
        out.append(b)
        if b == 0xFD and i >= 2 and body[i - 1] == 0xFF and body[i - 2] == 0xFF and i + 1 < n \
                and body[i + 1] == 0xFD:
            i += 2
        else:
            i += 1
    return bytes(out)


def encode(dxl_id: int, instruction: int, params: bytes | bytearray = b"") -> bytes:
    """A complete packet (header, stuffing, length, CRC) for an instruction."""
    body = stuff(bytes([instruction]) + bytes(params))
    length = len(body) + 2
    head = HEADER + bytes([dxl_id, length & 0xFF, length >> 8])
    packet = head + body
    crc = crc16(packet)
    return packet + bytes([crc & 0xFF, crc >> 8])


def encode_status(dxl_id: int, error: int, params: bytes | bytearray = b"") -> bytes:
    """A status packet: instruction 0x55, the error byte, then the parameters."""
    return encode(dxl_id, STATUS, bytes([error]) + bytes(params))


@dataclass(frozen=True)
class Packet:
    """One received packet, unstuffed.  For a status packet ``params`` starts with the error byte."""

    id: int
    instruction: int
    params: bytes
    crc_ok: bool = True

    @property
    def name(self) -> str:
        return INSTRUCTIONS.get(self.instruction, f"0x{self.instruction:02X}")


def decode(raw: bytes) -> Packet:
    """Decode exactly one complete packet; raises ``ValueError`` if it is not one."""
    parser = Parser()
    packets = parser.feed(raw)
    if len(packets) != 1 or parser.pending:
        raise ValueError(f"not exactly one packet: {raw.hex(' ')}")
    return packets[0]


@dataclass
class Parser:
    """Splits a byte stream into packets, resynchronising on the header after noise.

    A packet whose CRC does not match is still returned (``crc_ok=False``, params as received)
    so a device can answer it with a CRC error.  A partial packet older than ``stale_s`` is
    dropped byte by byte: noise that looked like a header cannot block the stream.
    """

    stale_s: float = 0.25
    buffer: bytearray = field(default_factory=bytearray)
    _since: float = 0.0

    @property
    def pending(self) -> int:
        return len(self.buffer)

    def feed(self, data: bytes, now: float | None = None) -> list[Packet]:
        now = time.monotonic() if now is None else now
        if data and not self.buffer:
            self._since = now
        self.buffer += data
        out: list[Packet] = []
        while True:
            start = self.buffer.find(HEADER)
            if start < 0:
                # keep a possible beginning of a header (up to 3 bytes), drop the rest
                keep = 0
                for k in (3, 2, 1):
                    if self.buffer.endswith(HEADER[:k]):
                        keep = k
                        break
                del self.buffer[: len(self.buffer) - keep]
                break
            if start:
                del self.buffer[:start]
                self._since = now
            if len(self.buffer) < 7:
                break
            length = self.buffer[5] | (self.buffer[6] << 8)
            if length < 3 or length > MAX_LENGTH:
                del self.buffer[:1]  # not a real header: look further
                continue
            total = 7 + length
            if len(self.buffer) < total:
                if now - self._since > self.stale_s:
                    del self.buffer[:1]
                    self._since = now
                    continue
                break
            raw = bytes(self.buffer[:total])
            del self.buffer[:total]
            self._since = now
            crc = raw[-2] | (raw[-1] << 8)
            ok = crc16(raw[:-2]) == crc
            body = unstuff(raw[7:-2]) if ok else raw[7:-2]
            out.append(Packet(raw[4], body[0], body[1:], ok))
        return out
